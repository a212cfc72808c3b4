// The write path: frames queued in one task are joined into few writes (runs of small
// frames in a slab or a reused buffer, large payloads by reference), in order, intact.
import { assertEquals } from "@std/assert";
import { Opcode } from "./frame.ts";
import { withClient } from "./test_util.ts";

const pattern = (size: number, seed: number) => new Uint8Array(size).map((_, i) => (i * 7 + seed) & 255);

Deno.test("messages sent in one task, small and large mixed, arrive in order and intact", () =>
  withClient(async (client, handler) => {
    // Runs under 4 KiB, runs over it, payloads of 4 KiB+ by reference, some over 64 KiB.
    const sizes = [10, 20, 3000, 2000, 5000, 100, 300_000, 1, 0, 70_000, 40, 4096, 4095, 200_000, 60_000, 12];
    const sent: (string | Uint8Array)[] = sizes.flatMap((size, seed) => [pattern(size, seed), "t".repeat(size)]);
    const written = sent.map((message) => handler.sendMessage(message));
    const frames = [];
    for (let i = 0; i < sent.length; i++) frames.push(await client.readFrame());
    assertEquals(await Promise.all(written), sent.map(() => true));
    assertEquals(frames.map((frame) => frame?.message()), sent);
    assertEquals(frames.every((frame) => frame?.fin), true);
    assertEquals(handler.bufferedAmount, 0);
    await client.sendClose(1000);
    assertEquals((await client.readUntilClose()).code, 1000);
  }, { closeTimeout: 1000 }));

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
