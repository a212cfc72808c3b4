// An in-memory connection for driving a real Protocol without sockets: the test pushes
// the client's bytes in, and reads the server's frames out. Not part of the module.
import { encodeFrame, Frame, Opcode } from "../frame.ts";
import type { Connection, Protocol } from "../protocol.ts";
import { within } from "../test_util.ts";

const HANDSHAKE = new TextEncoder().encode(
  "GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
);

export class MemoryConnection implements Connection {
  static #writeCount = 0;
  /** Every buffer the server wrote, as it was given (not copied). */
  readonly writes: Uint8Array[] = [];
  /** For each write, its rank among the writes of all memory connections. */
  readonly writeRanks: number[] = [];
  #incoming: Uint8Array[] = [];
  #output = new Uint8Array(0);
  #readWaiter: (() => void) | undefined;
  #writeWaiters: (() => void)[] = [];
  #closed = false;
  #writeClosed = false;

  /** Client to server bytes. */
  push(bytes: Uint8Array): void {
    this.#incoming.push(bytes);
    this.#readWaiter?.();
  }

  /** A masked frame from the client. */
  send(opcode: Opcode, payload: string | Uint8Array): void {
    this.push(encodeFrame(opcode, payload, { mask: true }));
  }

  async read(buffer: Uint8Array): Promise<number | null> {
    while (this.#incoming.length === 0) {
      // After the server's half-close, the client closes too (EOF).
      if (this.#closed || this.#writeClosed) return null;
      await new Promise<void>((resolve) => this.#readWaiter = resolve);
      this.#readWaiter = undefined;
    }
    const chunk = this.#incoming[0];
    const count = Math.min(chunk.length, buffer.length);
    buffer.set(chunk.subarray(0, count));
    if (count === chunk.length) this.#incoming.shift();
    else this.#incoming[0] = chunk.subarray(count);
    return count;
  }

  write(bytes: Uint8Array): Promise<number> {
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("closed"));
    this.writes.push(bytes);
    this.writeRanks.push(MemoryConnection.#writeCount++);
    const joined = new Uint8Array(this.#output.length + bytes.length);
    joined.set(this.#output);
    joined.set(bytes, this.#output.length);
    this.#output = joined;
    for (const wake of this.#writeWaiters.splice(0)) wake();
    return Promise.resolve(bytes.length);
  }

  close(): void {
    this.#closed = true;
    this.#readWaiter?.();
  }

  closeWrite(): Promise<void> {
    this.#writeClosed = true;
    this.#readWaiter?.();
    return Promise.resolve();
  }

  /** The server's frames so far, after its 101 answer. */
  frames(): Frame[] {
    const end = new TextDecoder("latin1").decode(this.#output).indexOf("\r\n\r\n");
    if (end < 0) return [];
    let bytes = this.#output.subarray(end + 4);
    const frames: Frame[] = [];
    for (let frame = Frame.decode(bytes, { masked: false }); frame; frame = Frame.decode(bytes, { masked: false })) {
      frames.push(frame);
      bytes = bytes.subarray(frame.length());
    }
    return frames;
  }

  /** The data messages the server sent so far. */
  messages(): (string | Uint8Array)[] {
    return this.frames().filter((frame) => frame.opcode === Opcode.Text || frame.opcode === Opcode.Binary)
      .map((frame) => frame.message());
  }

  /** Waits until the server has sent `count` data messages, and returns them. */
  async received(count: number, ms = 2000): Promise<(string | Uint8Array)[]> {
    const deadline = Date.now() + ms;
    while (this.messages().length < count) {
      if (Date.now() >= deadline) throw new Error(`expected ${count} messages, got ${this.messages().length}`);
      const written = new Promise<void>((resolve) => this.#writeWaiters.push(resolve));
      await within(written, deadline - Date.now(), "a write").catch(() => {});
    }
    return this.messages();
  }

  /** Waits until the server has written something (its 101 answer first). */
  async written(): Promise<void> {
    if (this.#output.length > 0) return;
    await within(new Promise<void>((resolve) => this.#writeWaiters.push(resolve)), 2000, "the 101 answer");
  }
}

/** Serves `handler` over memory; resolves once its connection is open. */
export async function openInMemory(handler: Protocol): Promise<{ conn: MemoryConnection; served: Promise<void> }> {
  const conn = new MemoryConnection();
  const served = handler.serve(conn);
  conn.push(HANDSHAKE);
  await conn.written();
  if (handler.state !== "open") throw new Error(`expected an open connection, got ${handler.state}`);
  return { conn, served };
}

/** Closes the client side cleanly and waits for the server to end. */
export async function closeInMemory(open: { conn: MemoryConnection; served: Promise<void> }): Promise<void> {
  open.conn.send(Opcode.Close, new Uint8Array([0x03, 0xe8]));
  await within(open.served, 2000, "the connection to end");
}
