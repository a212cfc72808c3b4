// A raw WebSocket client for the load and soak scripts: frame.ts over Deno.connect.
import { Frame } from "../frame.ts";

const HANDSHAKE = new TextEncoder().encode(
  "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
);

/** A raw WebSocket client over a TCP socket, built on frame.ts. */
export class Client {
  #buffer = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;
  private constructor(readonly conn: Deno.TcpConn) {}

  static async open(port: number): Promise<Client> {
    const client = new Client(
      await Deno.connect({ hostname: "127.0.0.1", port }),
    );
    await client.write(HANDSHAKE);
    while (true) {
      if (!(await client.#fill())) {
        throw new Error("closed during the handshake");
      }
      const head = new TextDecoder().decode(
        client.#buffer.subarray(0, client.#end),
      ).indexOf("\r\n\r\n");
      if (head >= 0) {
        client.#start = head + 4;
        return client;
      }
    }
  }

  async write(bytes: Uint8Array): Promise<void> {
    for (let offset = 0; offset < bytes.length;) {
      offset += await this.conn.write(bytes.subarray(offset));
    }
  }

  async #fill(): Promise<boolean> {
    if (this.#end === this.#buffer.length) {
      const pending = this.#buffer.subarray(this.#start, this.#end);
      const buffer = this.#start > 0 ? this.#buffer : new Uint8Array(this.#buffer.length * 2);
      buffer.set(pending);
      this.#buffer = buffer;
      this.#start = 0;
      this.#end = pending.length;
    }
    const count = await this.conn.read(this.#buffer.subarray(this.#end)).catch(
      () => null,
    );
    if (count === null) return false;
    this.#end += count;
    return true;
  }

  /** Reads once, then calls `onFrame` for every complete frame; false at EOF. */
  async read(onFrame: (frame: Frame) => void): Promise<boolean> {
    if (!(await this.#fill())) return false;
    for (
      let frame;
      (frame = Frame.decode(this.#buffer.subarray(this.#start, this.#end), {
        copy: false,
      }));
    ) {
      this.#start += frame.length();
      onFrame(frame);
    }
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return true;
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

/** Opens `count` clients, `parallel` handshakes at a time. */
export async function openMany(
  port: number,
  count: number,
  parallel = 16,
): Promise<Client[]> {
  const clients: Client[] = [];
  for (let i = 0; i < count; i += parallel) {
    clients.push(
      ...await Promise.all(
        Array.from(
          { length: Math.min(parallel, count - i) },
          () => Client.open(port),
        ),
      ),
    );
  }
  return clients;
}
