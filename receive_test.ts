// The read path: payloads larger than the read buffer (read into buffers of their
// own, unmasked as they arrive), pipelined frames around them, and text decoding.
import { assert, assertEquals } from "@std/assert";
import { encodeFrame, Opcode } from "./frame.ts";
import { encoder, RawClient, withServer } from "./test_util.ts";

const pattern = (size: number, seed = 0) => new Uint8Array(size).map((_, i) => (i * 31 + seed) & 255);

// Splits `bytes` into chunks of pseudo-random sizes from 1 to `max`, the same for a seed.
function chunks(bytes: Uint8Array, max: number, seed: number): Uint8Array[] {
  const pieces: Uint8Array[] = [];
  for (let offset = 0; offset < bytes.length;) {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    const size = 1 + (seed % max);
    pieces.push(bytes.subarray(offset, offset + size));
    offset += size;
  }
  return pieces;
}

// Read buffer edges (1 KiB, 4 KiB, 64 KiB) and frame length encodings (125/126, 65535/65536).
const SIZES = [0, 1, 125, 126, 1009, 1010, 1011, 1024, 4096, 4097, 65535, 65536, 65537, 200_000, 1 << 20];

Deno.test("messages of every size around the read buffer's edges arrive intact, in one write or in pieces", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const handler = await server.handler(0);
    const expected: (string | Uint8Array)[] = [];
    for (const [index, size] of SIZES.entries()) {
      const binary = pattern(size, index);
      const text = "é".repeat(size >> 1) + "x".repeat(size & 1); // 2 bytes a character
      expected.push(binary, text);
      await client.write(encodeFrame(Opcode.Binary, binary, { mask: true }));
      for (const piece of chunks(encodeFrame(Opcode.Text, text, { mask: true }), 70_000, index + 1)) {
        await client.write(piece);
      }
    }
    const messages = await handler.received(expected.length);
    for (const [index, message] of messages.entries()) {
      assertEquals(message, expected[index], `message ${index} (${SIZES[index >> 1]} bytes)`);
      if (message instanceof Uint8Array) {
        // The application owns what it gets: no view into a shared or larger buffer.
        assertEquals([message.byteOffset, message.buffer.byteLength], [0, message.length], `message ${index}`);
      }
    }
    client.close();
  }));

Deno.test("a large frame in one-byte-to-3-byte pieces, mask key split too, is unmasked right", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const payload = pattern(5000, 7);
    for (const piece of chunks(encodeFrame(Opcode.Binary, payload, { mask: true }), 3, 42)) await client.write(piece);
    assertEquals((await (await server.handler(0)).received(1))[0], payload);
    client.close();
  }));

Deno.test("frames pipelined around a large frame, a ping among them, keep their order", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const big = pattern(300_000, 3);
    const frames = [
      encodeFrame(Opcode.Text, "before", { mask: true }),
      encodeFrame(Opcode.Binary, big, { mask: true }),
      encodeFrame(Opcode.Ping, "p", { mask: true }),
      encodeFrame(Opcode.Text, "after", { mask: true }),
      encodeFrame(Opcode.Binary, big.subarray(0, 70_000), { mask: true, fin: false }),
      encodeFrame(Opcode.Continuation, big.subarray(70_000), { mask: true }),
    ];
    const all = new Uint8Array(frames.reduce((sum, frame) => sum + frame.length, 0));
    frames.reduce((offset, frame) => (all.set(frame, offset), offset + frame.length), 0);
    await client.write(all);
    assertEquals(await (await server.handler(0)).received(4), ["before", big, "after", big]);
    const pong = await client.readFrame();
    assertEquals([pong?.opcode, pong?.payload], [Opcode.Pong, encoder.encode("p")]);
    client.close();
  }));

Deno.test("large frames declared at once on many connections, over the allocation reserve, all arrive", () =>
  withServer(async (server) => {
    // 7 x 12 MiB declared before any payload: more than the 64 MiB reserve for payloads
    // allocated ahead of their bytes, so later ones grow with what arrives instead.
    const size = 12 * 1024 * 1024;
    const clients = await Promise.all(Array.from({ length: 7 }, () => RawClient.open(server.port)));
    const frames = clients.map((_, index) => encodeFrame(Opcode.Binary, pattern(size, index), { mask: true }));
    for (const [index, client] of clients.entries()) await client.write(frames[index].subarray(0, 20));
    for (const [index, client] of clients.entries()) {
      for (const piece of chunks(frames[index].subarray(20), 1 << 20, index)) await client.write(piece);
    }
    for (const index of clients.keys()) {
      const handler = await server.handler(index);
      const [message] = await handler.received(1);
      if (!(message instanceof Uint8Array)) throw new Error(`connection ${index}: not binary`);
      assertEquals(message.length, size, `connection ${index}`);
      assert(message.every((byte, i) => byte === ((i * 31 + index) & 255)), `payload of connection ${index}`);
    }
    clients.forEach((client) => client.close());
  }));

Deno.test("a reset in the middle of a large frame ends the connection once", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const handler = await server.handler(0);
    await client.write(encodeFrame(Opcode.Binary, pattern(1 << 20), { mask: true }).subarray(0, 300_000));
    await handler.connected.promise;
    client.close();
    await handler.disconnected.promise;
    assertEquals([handler.disconnects, server.users.size, handler.closeCode], [1, 0, 1006]);
  }));

// RFC 6455 5.6, 8.1: text is UTF-8, delivered as sent: a leading BOM and a genuine
// U+FFFD are characters like any other; invalid bytes are 1007.
Deno.test("RFC 6455 8.1: a BOM and a genuine U+FFFD arrive as sent, whole, long or fragmented", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const short = "\uFEFFstarts with a BOM \uFFFD and has a replacement character";
    const long = "\uFEFF" + "\uFFFDκόσμε".repeat(50_000);
    await client.send(Opcode.Text, short);
    await client.send(Opcode.Text, long);
    const bytes = encoder.encode(long);
    for (let offset = 0; offset < bytes.length; offset += 10_001) {
      const last = offset + 10_001 >= bytes.length;
      await client.send(
        offset === 0 ? Opcode.Text : Opcode.Continuation,
        bytes.subarray(offset, offset + 10_001),
        last,
      );
    }
    const messages = await (await server.handler(0)).received(3);
    assertEquals(messages[0], short);
    assert(messages[1] === long, "long text differs");
    assert(messages[2] === long, "fragmented text differs");
    client.close();
  }));

const INVALID_TEXT: [string, Uint8Array[]][] = [
  ["invalid byte at the end of a 1 MiB frame", [
    encoder.encode("a".repeat(1 << 20) + "\uFFFD"),
    new Uint8Array([0xff]),
  ]],
  ["overlong encoding after a genuine U+FFFD", [encoder.encode("ok \uFFFD "), new Uint8Array([0xc0, 0xaf])]],
  ["lone surrogate (CESU-8) in a large frame", [
    encoder.encode("x".repeat(70_000)),
    new Uint8Array([0xed, 0xa0, 0x80]),
  ]],
];

Deno.test("RFC 6455 8.1: invalid UTF-8 is 1007, also next to genuine U+FFFD, whole or fragmented", async (t) => {
  for (const [name, parts] of INVALID_TEXT) {
    for (const fragmented of [false, true]) {
      await t.step(`${name}${fragmented ? ", fragmented" : ""}`, () =>
        withServer(async (server) => {
          const client = await RawClient.open(server.port);
          if (fragmented) {
            // A genuine U+FFFD in an early fragment, the invalid bytes in a later one.
            await client.send(Opcode.Text, encoder.encode("\uFFFD"), false);
            for (const part of parts) await client.send(Opcode.Continuation, part, false);
            await client.send(Opcode.Continuation, encoder.encode("end"));
          } else {
            const joined = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
            parts.reduce((offset, part) => (joined.set(part, offset), offset + part.length), 0);
            await client.send(Opcode.Text, joined);
          }
          assertEquals((await client.readUntilClose()).code, 1007);
          assertEquals((await server.handler(0)).messages, []);
          client.close();
        }));
    }
  }
});
