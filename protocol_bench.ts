// The JavaScript cost of a connection, without the kernel: `deno bench protocol_bench.ts`.
// An echo Protocol serves an in-memory connection whose reads hand it client frames and
// whose writes complete at once; each bench iteration echoes MESSAGES messages.
import { encodeFrame, Opcode } from "./frame.ts";
import { type Connection, Protocol } from "./protocol.ts";

const MESSAGES = 1000;
const HANDSHAKE = new TextEncoder().encode(
  "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
);

class Echo extends Protocol {
  override onMessage(msg: string | Uint8Array): void {
    this.sendMessage(msg);
  }
}

// Reads give `perRead` frames at a time; writes count the bytes and complete at once.
class MemoryConnection implements Connection {
  written = 0;
  #chunks: Uint8Array[];
  #next = 0;
  #wake: (() => void) | undefined;
  #closed = false;

  constructor(chunks: Uint8Array[]) {
    this.#chunks = chunks;
  }

  // Hands out the next chunk; at the end, waits until closed.
  read(buffer: Uint8Array): Promise<number | null> {
    const chunk = this.#chunks[this.#next];
    if (this.#closed) return Promise.resolve(null);
    if (chunk === undefined) return new Promise((resolve) => this.#wake = () => resolve(null));
    const count = Math.min(chunk.length, buffer.length);
    buffer.set(chunk.subarray(0, count));
    if (count === chunk.length) this.#next++;
    else this.#chunks[this.#next] = chunk.subarray(count);
    return Promise.resolve(count);
  }

  write(bytes: Uint8Array): Promise<number> {
    this.written += bytes.length;
    return Promise.resolve(bytes.length);
  }

  close(): void {
    this.#closed = true;
    this.#wake?.();
  }

  closeWrite(): Promise<void> {
    return Promise.resolve();
  }
}

function chunks(frame: Uint8Array, perRead: number): Uint8Array[] {
  const batch = new Uint8Array(frame.length * perRead);
  for (let i = 0; i < perRead; i++) batch.set(frame, i * frame.length);
  return [HANDSHAKE, ...Array.from({ length: MESSAGES / perRead }, () => batch)];
}

// Serves MESSAGES echoes, then closes; resolves once the connection has ended.
async function serve(stream: Uint8Array[], expected: number): Promise<void> {
  const conn = new MemoryConnection(stream);
  const handler = new Echo(new Map(), { pingInterval: 0, idleTimeout: 0, closeTimeout: 10 });
  const served = handler.serve(conn);
  while (conn.written < expected) await new Promise((resolve) => setTimeout(resolve, 0));
  if (conn.written !== expected) throw new Error(`wrote ${conn.written} bytes, expected ${expected}`);
  conn.close();
  await served;
}

const CASES: [string, Opcode, number, number][] = [
  ["32 B binary, a frame a read", Opcode.Binary, 32, 1],
  ["32 B text, a frame a read", Opcode.Text, 32, 1],
  ["32 B binary, 10 frames a read", Opcode.Binary, 32, 10],
  ["16 KiB binary, a frame a read", Opcode.Binary, 16 * 1024, 1],
];

for (const [name, opcode, size, perRead] of CASES) {
  const payload = opcode === Opcode.Text ? "x".repeat(size) : new Uint8Array(size);
  const frame = encodeFrame(opcode, payload, { mask: true });
  const reply = encodeFrame(opcode, payload).length;
  // The 101 answer is 129 bytes; the echoes follow.
  const expected = 129 + MESSAGES * reply;
  Deno.bench(`echo ${MESSAGES} × ${name}`, { group: name }, async () => {
    await serve(chunks(frame, perRead), expected);
  });
}
