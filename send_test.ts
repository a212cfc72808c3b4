// The write path: frames queued in one task are joined into few writes (runs of small
// frames in a slab or a reused buffer, large payloads by reference), in order, intact.
import { assert, assertEquals } from "@std/assert";
import { Frame, Opcode } from "./frame.ts";
import { withClient, withMemoryClient } from "./test_util.ts";

// Runs of small frames are joined into writes of at most this many bytes.
const JOIN_LIMIT = 64 * 1024;

const pattern = (size: number, seed: number) => new Uint8Array(size).map((_, i) => (i * 7 + seed) & 255);

Deno.test("messages sent in one task, small and large mixed, are joined into few writes and arrive in order, intact", () =>
  withMemoryClient(async (client, handler, server) => {
    // Runs under 4 KiB, runs over it, payloads of 4 KiB+ by reference, some over 64 KiB.
    const sizes = [10, 20, 3000, 2000, 5000, 100, 300_000, 1, 0, 70_000, 40, 4096, 4095, 200_000, 60_000, 12];
    const sent: (string | Uint8Array)[] = sizes.flatMap((size, seed) => [pattern(size, seed), "t".repeat(size)]);
    const from = server.writes.length;
    const written = sent.map((message) => handler.sendMessage(message));
    const frames = [];
    for (let i = 0; i < sent.length; i++) frames.push(await client.readFrame());
    assertEquals(await Promise.all(written), sent.map(() => true));
    assertEquals(frames.map((frame) => frame?.message()), sent);
    assertEquals(frames.every((frame) => frame?.fin), true);
    assertEquals(handler.bufferedAmount, 0);

    const writes = server.writes.slice(from);
    // Joins are greedy: a write ends where the next frame would take it past the limit,
    // so no two writes in a row are both under half of it.
    for (let i = 1; i < writes.length; i++) {
      const pair = [writes[i - 1].taken.length, writes[i].taken.length];
      assert(pair.some((length) => length >= JOIN_LIMIT / 2), `writes ${i - 1} and ${i} (${pair}) fit in one`);
    }
    // Over the limit only what is written as it is: a payload by reference (the caller's
    // own bytes, no copy) or one whole frame.
    for (const { given, taken } of writes.filter((call) => call.taken.length > JOIN_LIMIT)) {
      const byReference = sent.includes(given);
      assert(byReference || Frame.decode(taken, { masked: false })?.length() === taken.length, `${taken.length} bytes`);
    }
    for (const message of sent.filter((message) => message instanceof Uint8Array && message.length >= JOIN_LIMIT)) {
      assert(writes.some((call) => call.given === message), `${message.length} bytes were copied`);
    }
  }));

Deno.test("a 64 KiB message goes out with its header in one write, copied; a larger one from the caller's bytes", () =>
  withMemoryClient(async (client, handler, server) => {
    for (const size of [JOIN_LIMIT, JOIN_LIMIT + 100]) {
      const message = pattern(size, size);
      const from = server.writes.length;
      assertEquals(await handler.sendMessage(message), true);
      const writes = server.writes.slice(from);
      // Not a 10-byte header written alone, a packet of its own before the payload.
      if (size === JOIN_LIMIT) assertEquals(writes.map((call) => call.taken.length), [10 + size]);
      else assertEquals(writes.map((call) => call.given === message), [false, true]);
      assertEquals((await client.readFrame())?.payload, message);
    }
  }));

Deno.test("a message sent while a large write is under way goes after it, whole", () =>
  withClient(async (client, handler) => {
    const big = pattern(8 * 1024 * 1024, 1); // more than the socket buffers take at once
    const first = handler.sendMessage(big);
    await new Promise((resolve) => setTimeout(resolve, 10));
    const second = handler.sendMessage("after");
    const [frameBig, frameAfter] = [await client.readFrame(), await client.readFrame()];
    assertEquals([frameBig?.opcode, frameBig?.payload.length], [Opcode.Binary, big.length]);
    assertEquals(frameBig?.payload, big);
    assertEquals(frameAfter?.message(), "after");
    assertEquals([await first, await second], [true, true]);
  }, { closeTimeout: 1000 }));
