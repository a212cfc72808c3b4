// Codec throughput: `deno bench frame_bench.ts`. MB/s = payload bytes / time per frame.
import { applyMask, encodeFrame, Frame, Opcode } from "./frame.ts";

const SIZES: [string, number][] = [["16 B", 16], ["1 KiB", 1024], ["64 KiB", 64 * 1024], ["1 MiB", 1024 * 1024]];
const MASK_KEY = new Uint8Array([0x37, 0xfa, 0x21, 0x3d]);

for (const [label, size] of SIZES) {
  const payload = new Uint8Array(size).map((_, i) => i);
  for (const masked of [false, true]) {
    const kind = masked ? "masked" : "unmasked";
    const frame = encodeFrame(Opcode.Binary, payload, { maskKey: masked ? MASK_KEY : undefined });
    Deno.bench(`decode ${label} ${kind} (zero-copy)`, { group: `decode ${label}` }, () => {
      // Unmasking in place twice per two runs restores the bytes; the work is the same.
      Frame.decode(frame, { copy: false });
    });
    Deno.bench(`decode ${label} ${kind} (copy)`, { group: `decode ${label}` }, () => {
      Frame.decode(frame);
    });
    Deno.bench(`encode ${label} ${kind}`, { group: `encode ${label}` }, () => {
      encodeFrame(Opcode.Binary, payload, { maskKey: masked ? MASK_KEY : undefined });
    });
  }
  Deno.bench(`unmask ${label}`, { group: "unmask" }, () => {
    applyMask(payload, MASK_KEY);
  });
}

const text = "x".repeat(32);
Deno.bench("encode 32 B text frame (server, unmasked)", { group: "text" }, () => {
  encodeFrame(Opcode.Text, text);
});
const pool = new Uint8Array(64 * 1024);
let offset = 0;
Deno.bench("encode 32 B text frame into a pool", { group: "text" }, () => {
  encodeFrame(Opcode.Text, text, {
    allocate: (length) => {
      if (offset + length > pool.length) offset = 0;
      return pool.subarray(offset, offset += length);
    },
  });
});
