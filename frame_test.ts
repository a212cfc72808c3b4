import { assert, assertEquals, assertThrows } from "@std/assert";
import fc from "fast-check";
import { FrameError } from "./errors.ts";
import {
  applyMask,
  decodeClosePayload,
  decodeHeader,
  decodeText,
  encodeClosePayload,
  encodeFrame,
  encodeHeader,
  Frame,
  isValidCloseCode,
  Opcode,
} from "./frame.ts";
import { TIMEOUT, within } from "./test_util.ts";

const hex = (text: string) => new Uint8Array(text.split(" ").map((byte) => parseInt(byte, 16)));
const utf8 = (text: string) => new TextEncoder().encode(text);
const MASK_KEY = hex("37 fa 21 3d");

function assertFrameError(run: () => unknown, closeCode: number, code: string): void {
  const error = assertThrows(run, FrameError);
  assertEquals([error.closeCode, error.code], [closeCode, code], error.message);
}

// RFC 6455 5.7, byte for byte.
const RFC_EXAMPLES: { name: string; bytes: Uint8Array; opcode: Opcode; fin: boolean; payload: Uint8Array }[] = [
  {
    name: "single-frame unmasked text",
    bytes: hex("81 05 48 65 6c 6c 6f"),
    opcode: Opcode.Text,
    fin: true,
    payload: utf8("Hello"),
  },
  {
    name: "single-frame masked text",
    bytes: hex("81 85 37 fa 21 3d 7f 9f 4d 51 58"),
    opcode: Opcode.Text,
    fin: true,
    payload: utf8("Hello"),
  },
  { name: "first fragment", bytes: hex("01 03 48 65 6c"), opcode: Opcode.Text, fin: false, payload: utf8("Hel") },
  { name: "last fragment", bytes: hex("80 02 6c 6f"), opcode: Opcode.Continuation, fin: true, payload: utf8("lo") },
  { name: "unmasked ping", bytes: hex("89 05 48 65 6c 6c 6f"), opcode: Opcode.Ping, fin: true, payload: utf8("Hello") },
  {
    name: "masked pong",
    bytes: hex("8a 85 37 fa 21 3d 7f 9f 4d 51 58"),
    opcode: Opcode.Pong,
    fin: true,
    payload: utf8("Hello"),
  },
];

Deno.test("RFC 6455 5.7: the examples decode and encode byte for byte", async (t) => {
  for (const example of RFC_EXAMPLES) {
    await t.step(example.name, () => {
      const frame = new Frame(example.bytes);
      assertEquals([frame.opcode, frame.fin, frame.payload], [example.opcode, example.fin, example.payload]);
      assertEquals(frame.length(), example.bytes.length);
      const masked = (example.bytes[1] & 0x80) !== 0;
      assertEquals(frame.masked, masked);
      const encoded = encodeFrame(example.opcode, example.payload, {
        fin: example.fin,
        maskKey: masked ? MASK_KEY : undefined,
      });
      assertEquals(encoded, example.bytes);
    });
  }
  await t.step("256 bytes binary uses the 16-bit length", () => {
    const frame = encodeFrame(Opcode.Binary, new Uint8Array(256));
    assertEquals(frame.subarray(0, 4), hex("82 7e 01 00"));
    assertEquals(new Frame(frame).payload.length, 256);
  });
  await t.step("64 KiB binary uses the 64-bit length", () => {
    const frame = encodeFrame(Opcode.Binary, new Uint8Array(65536));
    assertEquals(frame.subarray(0, 10), hex("82 7f 00 00 00 00 00 01 00 00"));
    assertEquals(new Frame(frame).payload.length, 65536);
  });
});

Deno.test("RFC 6455 5.2: every length boundary picks the shortest encoding and round-trips", () => {
  for (const length of [0, 1, 125, 126, 127, 65535, 65536]) {
    for (const mask of [false, true]) {
      const payload = new Uint8Array(length).map((_, i) => i * 7);
      const bytes = encodeFrame(Opcode.Binary, payload, { mask });
      const headerLength = (length < 126 ? 2 : length < 65536 ? 4 : 10) + (mask ? 4 : 0);
      assertEquals(bytes.length, headerLength + length, `length ${length} mask ${mask}`);
      const frame = new Frame(bytes);
      assertEquals(frame.payload, payload);
      assertEquals(frame.length(), bytes.length);
    }
  }
});

Deno.test("RFC 6455 5.2: a declared 64-bit length over 4 GiB is never allocated", () => {
  const header = hex("82 7f 00 00 00 01 00 00 00 01"); // 2^32 + 1 bytes declared
  assertEquals(Frame.decode(header), null);
  assertFrameError(() => Frame.decode(header, { maxPayload: 16 * 1024 * 1024 }), 1009, "WS_ERR_PAYLOAD_TOO_BIG");
  // 2^62 bytes is past what a JavaScript number counts exactly: over any limit.
  assertFrameError(() => Frame.decode(hex("82 7f 40 00 00 00 00 00 00 00")), 1009, "WS_ERR_PAYLOAD_TOO_BIG");
});

Deno.test("RFC 6455 5.2: a 64-bit length with its top bit set is a protocol error", () => {
  assertFrameError(() => Frame.decode(hex("82 7f 80 00 00 00 00 00 00 00")), 1002, "WS_ERR_INVALID_LENGTH");
});

Deno.test("RFC 6455 5.2, 5.5: malformed headers throw FrameError with the right codes", async (t) => {
  const cases: [string, Uint8Array, number, string][] = [
    ["RSV1", hex("c1 00"), 1002, "WS_ERR_UNEXPECTED_RSV"],
    ["RSV2", hex("a1 00"), 1002, "WS_ERR_UNEXPECTED_RSV"],
    ["RSV3", hex("91 00"), 1002, "WS_ERR_UNEXPECTED_RSV"],
    ["control frame of 126 bytes", hex("89 7e 00 7e"), 1002, "WS_ERR_CONTROL_FRAME_TOO_LONG"],
    ["close frame with 127 length code", hex("88 7f"), 1002, "WS_ERR_CONTROL_FRAME_TOO_LONG"],
    ["fragmented ping", hex("09 00"), 1002, "WS_ERR_FRAGMENTED_CONTROL_FRAME"],
    ["fragmented close", hex("08 00"), 1002, "WS_ERR_FRAGMENTED_CONTROL_FRAME"],
  ];
  for (const opcode of [3, 4, 5, 6, 7, 11, 12, 13, 14, 15]) {
    cases.push([`reserved opcode ${opcode}`, new Uint8Array([0x80 | opcode, 0]), 1002, "WS_ERR_INVALID_OPCODE"]);
  }
  for (const [name, bytes, closeCode, code] of cases) {
    await t.step(name, () => {
      assertFrameError(() => Frame.decode(bytes), closeCode, code);
      assertFrameError(() => new Frame(bytes), closeCode, code);
    });
  }
});

Deno.test("RFC 6455 5.5: a control frame of exactly 125 bytes is accepted", () => {
  for (const opcode of [Opcode.Ping, Opcode.Pong, Opcode.Close]) {
    const payload = opcode === Opcode.Close ? encodeClosePayload(1000, "x".repeat(123)) : new Uint8Array(125).fill(7);
    const frame = Frame.decode(encodeFrame(opcode, payload, { mask: true }), { masked: true });
    assertEquals([frame?.opcode, frame?.payload], [opcode, payload]);
  }
});

Deno.test("RFC 6455 5.1: masking is required of clients and forbidden to servers", () => {
  const masked = Frame.buildMessage("hi", true);
  const unmasked = Frame.buildMessage("hi", false);
  assertFrameError(() => Frame.decode(unmasked, { masked: true }), 1002, "WS_ERR_EXPECTED_MASK");
  assertFrameError(() => Frame.decode(masked, { masked: false }), 1002, "WS_ERR_UNEXPECTED_MASK");
  assertEquals(Frame.decode(masked, { masked: true })?.message(), "hi");
  assertEquals(Frame.decode(unmasked, { masked: false })?.message(), "hi");
});

Deno.test("maxPayload: one byte over is 1009, exactly the limit is accepted", () => {
  const frame = encodeFrame(Opcode.Binary, new Uint8Array(1000));
  assertEquals(Frame.decode(frame, { maxPayload: 1000 })?.payload.length, 1000);
  assertFrameError(() => Frame.decode(frame, { maxPayload: 999 }), 1009, "WS_ERR_PAYLOAD_TOO_BIG");
});

Deno.test("maxPayload limits data frames only: a 125-byte ping passes a limit of 10", () => {
  assertEquals(Frame.decode(encodeFrame(Opcode.Ping, new Uint8Array(125)), { maxPayload: 10 })?.payload.length, 125);
  assertFrameError(
    () => Frame.decode(encodeFrame(Opcode.Continuation, new Uint8Array(11)), { maxPayload: 10 }),
    1009,
    "WS_ERR_PAYLOAD_TOO_BIG",
  );
});

Deno.test("incomplete frames: decode returns null for every prefix, the constructor throws", () => {
  for (const bytes of [Frame.buildMessage("Hello", true), encodeFrame(Opcode.Binary, new Uint8Array(300))]) {
    for (let cut = 0; cut < bytes.length; cut++) {
      assertEquals(Frame.decode(bytes.subarray(0, cut)), null, `prefix of ${cut} bytes`);
      assertFrameError(() => new Frame(bytes.subarray(0, cut)), 1002, "WS_ERR_INCOMPLETE_FRAME");
    }
  }
});

Deno.test("RFC 6455 5.2: decodeHeader waits for every byte of a 16-bit length, a 64-bit length and a mask key", () => {
  const headers = [
    hex("81 7e 00 7e"), // 126 bytes, 16-bit length
    hex("82 7f 00 00 00 00 00 01 00 00"), // 65536 bytes, 64-bit length
    hex("81 fe 00 7e 37 fa 21 3d"), // 126 bytes, 16-bit length, masked
    hex("82 ff 00 00 00 00 00 01 00 00 37 fa 21 3d"), // 65536 bytes, 64-bit length, masked
  ];
  for (const header of headers) {
    for (let cut = 0; cut < header.length; cut++) {
      assertEquals(decodeHeader(header.subarray(0, cut)), null, `prefix of ${cut} of ${header.length} bytes`);
    }
    assertEquals(decodeHeader(header)?.headerLength, header.length);
  }
  assertEquals(headers.map((header) => decodeHeader(header)?.payloadLength), [126, 65536, 126, 65536]);
});

Deno.test("fin: false clears FIN in encodeHeader and in a text over 16 Ki characters", () => {
  assertEquals(encodeHeader(Opcode.Binary, 5, { fin: false }), hex("02 05"));
  assertEquals(encodeHeader(Opcode.Binary, 5), hex("82 05"));
  const long = "x".repeat(16_385);
  const frame = encodeFrame(Opcode.Text, long, { fin: false });
  assertEquals(frame.subarray(0, 4), hex("01 7e 40 01"));
  assertEquals(encodeFrame(Opcode.Text, long).subarray(0, 4), hex("81 7e 40 01"));
});

Deno.test("RFC 6455 5.2: encodeHeader writes a length of 4 GiB and more in all 64 bits", () => {
  assertEquals(encodeHeader(Opcode.Binary, 2 ** 32 + 5), hex("82 7f 00 00 00 01 00 00 00 05"));
  assertEquals(encodeHeader(Opcode.Binary, 2 ** 40), hex("82 7f 00 00 01 00 00 00 00 00"));
});

Deno.test("encodeFrame: 16 Ki characters of 3-byte UTF-8 fit the scratch buffer whole", () => {
  const text = "\u20ac".repeat(16_384);
  const frame = encodeFrame(Opcode.Text, text);
  assertEquals(frame.subarray(0, 4), hex("81 7e c0 00"));
  assertEquals(frame.length, 4 + 3 * 16_384);
  assertEquals(new Frame(frame).message(), text);
});

Deno.test("message(): text is decoded strictly, other frames give bytes", () => {
  assertFrameError(() => new Frame(hex("81 02 c3 28")).message(), 1007, "WS_ERR_INVALID_UTF8");
  assertEquals(new Frame(hex("82 02 c3 28")).message(), hex("c3 28"));
  assertEquals(new Frame(Frame.buildMessage("κόσμε", false)).message(), "κόσμε");
  assertFrameError(() => decodeText(hex("ed a0 80")), 1007, "WS_ERR_INVALID_UTF8"); // a UTF-16 surrogate
});

Deno.test("copy option: the default copies, copy:false unmasks in place as a view", () => {
  const bytes = hex("81 85 37 fa 21 3d 7f 9f 4d 51 58");
  const original = bytes.slice();
  const copied = new Frame(bytes);
  assertEquals(bytes, original);
  assert(copied.payload.buffer !== bytes.buffer);
  const viewed = new Frame(bytes, { copy: false });
  assertEquals(viewed.payload.buffer, bytes.buffer);
  assertEquals(bytes.subarray(6), utf8("Hello"));
});

Deno.test("Frame.buildMessage: text for strings, binary for bytes, masked by default", () => {
  const text = new Frame(Frame.buildMessage("Hello"));
  assertEquals([text.opcode, text.fin, text.masked, text.message()], [Opcode.Text, true, true, "Hello"]);
  const binary = new Frame(Frame.buildMessage(new Uint8Array([1, 2, 3]), false));
  assertEquals([binary.opcode, binary.masked, binary.message()], [Opcode.Binary, false, new Uint8Array([1, 2, 3])]);
  assertEquals(Frame.buildMessage("Hello", false), hex("81 05 48 65 6c 6c 6f"));
  // Two masked frames of the same text get different random keys (2^-32 chance of a false failure).
  assert(Frame.buildMessage("x").subarray(2, 6).join() !== Frame.buildMessage("x").subarray(2, 6).join());
});

Deno.test("encodeFrame: text payloads of every size encode as TextEncoder would", () => {
  for (const text of ["", "a", "κόσμε", "€".repeat(41), "€".repeat(42), "x".repeat(16_384), "€".repeat(16_385)]) {
    assertEquals(encodeFrame(Opcode.Text, text), encodeFrame(Opcode.Text, utf8(text)), `${text.length} chars`);
  }
  const pool = new Uint8Array(100);
  const frame = encodeFrame(Opcode.Text, "Hello", { allocate: (length) => pool.subarray(10, 10 + length) });
  assertEquals(frame.buffer, pool.buffer);
  assertEquals(frame, hex("81 05 48 65 6c 6c 6f"));
});

Deno.test("RFC 6455 5.5.1, 7.4: close payloads and close codes", () => {
  assertEquals(decodeClosePayload(new Uint8Array(0)), { code: 1005, reason: "" });
  assertEquals(decodeClosePayload(encodeClosePayload(1000, "bye")), { code: 1000, reason: "bye" });
  assertEquals(encodeClosePayload(), new Uint8Array(0));
  assertFrameError(() => decodeClosePayload(hex("03")), 1002, "WS_ERR_INVALID_CLOSE_PAYLOAD");
  // 0x0f alone must not be read as 0x0f00 = 3840, a valid code (RFC 6455 5.5.1: 2 bytes or none).
  assertFrameError(() => decodeClosePayload(hex("0f")), 1002, "WS_ERR_INVALID_CLOSE_PAYLOAD");
  assertFrameError(() => decodeClosePayload(hex("03 e8 c3 28")), 1007, "WS_ERR_INVALID_UTF8");
  for (const code of [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]) {
    assertEquals(isValidCloseCode(code), false, `${code}`);
    assertFrameError(
      () => decodeClosePayload(new Uint8Array([code >> 8, code & 255])),
      1002,
      "WS_ERR_INVALID_CLOSE_CODE",
    );
    assertThrows(() => encodeClosePayload(code), RangeError);
  }
  for (const code of [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]) {
    assertEquals(isValidCloseCode(code), true, `${code}`);
    assertEquals(decodeClosePayload(encodeClosePayload(code)).code, code);
  }
  assertEquals(encodeClosePayload(1000, "x".repeat(123)).length, 125);
  assertThrows(() => encodeClosePayload(1000, "x".repeat(124)), RangeError);
  assertThrows(() => encodeClosePayload(undefined, "reason without code"), RangeError);
});

Deno.test("RFC 6455 5.3: applyMask equals a byte-wise XOR at every alignment and length", () => {
  for (let offset = 0; offset < 4; offset++) {
    for (let length = 0; length <= 80; length++) {
      const buffer = new Uint8Array(offset + length + 4).map((_, i) => (i * 31 + 7) & 255);
      const data = buffer.subarray(offset, offset + length);
      const expected = data.map((byte, i) => byte ^ MASK_KEY[i & 3]);
      const before = buffer.slice();
      applyMask(data, MASK_KEY);
      assertEquals(data, expected, `offset ${offset} length ${length}`);
      assertEquals(buffer.subarray(offset + length), before.subarray(offset + length), "bytes after the view");
      applyMask(data, MASK_KEY);
      assertEquals(buffer, before);
    }
  }
});

Deno.test("RFC 6455 5.3: applyMask in pieces, each with its offset, equals one pass", () => {
  const payload = new Uint8Array(300).map((_, i) => (i * 17 + 3) & 255);
  const whole = payload.slice();
  applyMask(whole, MASK_KEY);
  for (let split = 0; split <= payload.length; split += 7) {
    const pieces = payload.slice();
    applyMask(pieces.subarray(0, split), MASK_KEY);
    applyMask(pieces.subarray(split), MASK_KEY, split);
    assertEquals(pieces, whole, `split at ${split}`);
  }
});

// Decodes a stream given in chunks, the way a reader with a growing buffer would.
function decodeChunks(chunks: Uint8Array[]): Frame[] {
  const frames: Frame[] = [];
  let pending = new Uint8Array(0);
  for (const chunk of chunks) {
    const joined = new Uint8Array(pending.length + chunk.length);
    joined.set(pending);
    joined.set(chunk, pending.length);
    pending = joined;
    for (let frame = Frame.decode(pending); frame !== null; frame = Frame.decode(pending)) {
      frames.push(frame);
      pending = pending.subarray(frame.length());
    }
  }
  assertEquals(pending.length, 0, "bytes left over");
  return frames;
}

function split(bytes: Uint8Array, sizes: Iterable<number>): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const size of sizes) {
    if (offset >= bytes.length) break;
    chunks.push(bytes.subarray(offset, offset += Math.max(1, size)));
  }
  if (offset < bytes.length) chunks.push(bytes.subarray(offset));
  return chunks;
}

const concat = (parts: Uint8Array[]) => {
  const all = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  parts.reduce((offset, part) => (all.set(part, offset), offset + part.length), 0);
  return all;
};

Deno.test("a stream of frames decodes the same one byte at a time and in random chunks", () => {
  const frames = [
    encodeFrame(Opcode.Text, "Hel", { fin: false, mask: true }),
    encodeFrame(Opcode.Ping, "ping", { mask: true }),
    encodeFrame(Opcode.Continuation, "lo", { mask: true }),
    encodeFrame(Opcode.Binary, new Uint8Array(126).fill(1), { mask: true }),
    encodeFrame(Opcode.Binary, new Uint8Array(65536).fill(2)),
    encodeFrame(Opcode.Close, encodeClosePayload(1000, "bye"), { mask: true }),
  ];
  const stream = concat(frames);
  const expected = frames.map((bytes) => new Frame(bytes));
  const summary = (list: Frame[]) => list.map((f) => [f.opcode, f.fin, f.masked, f.payload.length, f.payload[0]]);
  assertEquals(summary(decodeChunks(split(stream, Array(stream.length).fill(1)))), summary(expected));
  let seed = 42;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 5000;
  assertEquals(summary(decodeChunks(split(stream, Array.from({ length: stream.length }, random)))), summary(expected));
});

const frameArbitrary = fc.oneof(
  fc.record({
    opcode: fc.constantFrom(Opcode.Continuation, Opcode.Text, Opcode.Binary),
    fin: fc.boolean(),
    mask: fc.boolean(),
    payload: fc.uint8Array({ maxLength: 70_000, size: "max" }),
  }),
  fc.record({
    opcode: fc.constantFrom(Opcode.Close, Opcode.Ping, Opcode.Pong),
    fin: fc.constant(true),
    mask: fc.boolean(),
    payload: fc.uint8Array({ maxLength: 125 }),
  }),
);

Deno.test("property: random frames survive encode then decode in random chunkings", () => {
  const lengthEncodings = new Set<number>();
  fc.assert(
    fc.property(
      fc.array(frameArbitrary, { minLength: 1, maxLength: 5 }),
      fc.array(fc.integer({ min: 1, max: 80_000 }), { minLength: 1, maxLength: 20 }),
      (specs, sizes) => {
        for (const { payload } of specs) {
          lengthEncodings.add(payload.length < 126 ? 7 : payload.length < 65536 ? 16 : 64);
        }
        const stream = concat(specs.map((spec) => encodeFrame(spec.opcode, spec.payload, spec)));
        const frames = decodeChunks(split(stream, sizes));
        assertEquals(
          frames.map((f) => [f.opcode, f.fin, f.masked, f.payload]),
          specs.map((s) => [s.opcode, s.fin, s.mask, s.payload]),
        );
      },
    ),
    { seed: 6455, numRuns: 150 },
  );
  assertEquals([...lengthEncodings].sort((a, b) => a - b), [7, 16, 64], "runs cover all three length encodings");
});

Deno.test("property: random and mutated bytes decode, ask for more, or throw FrameError", () => {
  const mutated = fc.tuple(frameArbitrary, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })))).map(
    ([spec, flips]) => {
      const bytes = encodeFrame(spec.opcode, spec.payload, spec);
      for (const [position, value] of flips) bytes[position % bytes.length] = value;
      return bytes;
    },
  );
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), mutated), fc.boolean(), (bytes, masked) => {
      try {
        const frame = Frame.decode(bytes, { masked, maxPayload: 1 << 20 });
        if (frame !== null) {
          assert(frame.length() <= bytes.length);
          frame.message();
        }
      } catch (error) {
        if (!(error instanceof FrameError)) throw error;
      }
    }),
    { seed: 1002, numRuns: 2000 },
  );
});

Deno.test("Frame.buildMessage frames are understood by Deno's own WebSocket server", async () => {
  const received: (string | Uint8Array)[] = [];
  const gotAll = Promise.withResolvers<void>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (request) => {
    const { socket, response } = Deno.upgradeWebSocket(request);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => {
      received.push(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
      if (received.length === 3) socket.send("pong-text");
    };
    socket.onclose = () => gotAll.resolve();
    return response;
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  try {
    await conn.write(utf8(
      "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ));
    const binary = new Uint8Array(70_000).map((_, i) => i % 251);
    const long = "κόσμε".repeat(14_000);
    for (const message of ["Hello", long, binary]) await conn.write(Frame.buildMessage(message));

    // Read the 101 answer, then the server's text frame.
    let bytes = new Uint8Array(0);
    let frame: Frame | null = null;
    const deadline = Date.now() + 5000;
    while (frame === null && Date.now() < deadline) {
      const chunk = new Uint8Array(4096);
      const count = await within(conn.read(chunk), Math.max(1, deadline - Date.now()), "the server's frame");
      if (count === null) break;
      bytes = concat([bytes, chunk.subarray(0, count)]);
      const headEnd = new TextDecoder().decode(bytes).indexOf("\r\n\r\n");
      if (headEnd >= 0) frame = Frame.decode(bytes.subarray(headEnd + 4), { masked: false });
    }
    assert(new TextDecoder().decode(bytes).startsWith("HTTP/1.1 101"));
    assertEquals(frame?.message(), "pong-text");
    assertEquals(received, ["Hello", long, binary]);
    await conn.write(encodeFrame(Opcode.Close, encodeClosePayload(1000), { mask: true }));
    await within(gotAll.promise, TIMEOUT, "the server to see the close");
  } finally {
    conn.close();
    await within(server.shutdown(), TIMEOUT, "Deno.serve to shut down");
  }
});
