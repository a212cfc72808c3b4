// The floor of Deno's public API, not a WebSocket server to use: what any server written
// on Deno.Conn pays, with as little JavaScript as the load generator lets it have. Each
// connection has one read buffer; each read's frames are unmasked in place and their
// answers joined into one write. No limits, no close handshake, no UTF-8 check, no
// fragments, no pings: none of what the module does, only one conn.read and one
// conn.write a batch, and one new buffer for each message's frame (as every server
// that hands messages to an application has). /echo echoes; other paths broadcast. At most
// 100 connections start writing in one turn of the event loop, the rest in the next turns,
// as in protocol.ts: past about 128 writes a turn each costs about twice as much (README,
// "Writes a turn").
// Usage: deno run -N floor.ts PORT
import { setImmediate } from "node:timers";
import { applyMask } from "../../frame.ts";

const port = Number(Deno.args[0]);
const encoder = new TextEncoder();
const users = new Set<Peer>();

class Peer {
  #out: Uint8Array[] = [];
  #writing = false;

  constructor(readonly conn: Deno.TcpConn) {}

  send(frame: Uint8Array): void {
    this.#out.push(frame);
    if (this.#writing) return;
    this.#writing = true;
    if (due.push(this) - 1 === dueNext) queueMicrotask(startFlushes);
  }

  // Writes what was queued before it started in one write, then whatever came meanwhile.
  async flush(): Promise<void> {
    try {
      while (this.#out.length > 0) {
        const parts = this.#out;
        this.#out = [];
        const bytes = parts.length === 1 ? parts[0] : join(parts);
        for (let offset = 0; offset < bytes.length;) {
          offset += await this.conn.write(bytes.subarray(offset));
        }
      }
    } catch {
      this.conn.close();
    } finally {
      this.#writing = false;
    }
  }
}

// The peers due to start writing, in order; the first dueNext have started.
let due: Peer[] = [];
let dueNext = 0;

function startFlushes(): void {
  const end = Math.min(due.length, dueNext + 100);
  for (; dueNext < end; dueNext++) due[dueNext].flush();
  if (dueNext < due.length) return void setImmediate(startFlushes);
  due = [];
  dueNext = 0;
}

function join(parts: Uint8Array[]): Uint8Array {
  const joined = new Uint8Array(
    parts.reduce((sum, part) => sum + part.length, 0),
  );
  parts.reduce(
    (offset, part) => (joined.set(part, offset), offset + part.length),
    0,
  );
  return joined;
}

async function accept(key: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    encoder.encode(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"),
  );
  return new Uint8Array(digest).toBase64();
}

async function serve(conn: Deno.TcpConn): Promise<void> {
  conn.setNoDelay(true);
  let buffer: Uint8Array = new Uint8Array(64 * 1024);
  let end = 0;
  let head = "";
  while (!head.includes("\r\n\r\n")) {
    const count = await conn.read(buffer.subarray(end));
    if (count === null) return conn.close();
    end += count;
    head = new TextDecoder("latin1").decode(buffer.subarray(0, end));
  }
  const key = /^Sec-WebSocket-Key:\s*(\S+)/im.exec(head)?.[1] ?? "";
  const echo = head.startsWith("GET /echo ");
  await conn.write(encoder.encode(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${await accept(key)}\r\n\r\n`,
  ));
  end = 0; // the load generator sends nothing before the answer
  const peer = new Peer(conn);
  users.add(peer);
  try {
    for (;;) {
      if (end === buffer.length) {
        buffer = join([buffer, new Uint8Array(buffer.length)]);
      }
      const count = await conn.read(buffer.subarray(end));
      if (count === null) break;
      end += count;
      let start = 0;
      const answers: Uint8Array[] = [];
      while (end - start >= 2) {
        let length = buffer[start + 1] & 0x7f;
        const header = length === 126 ? 4 : length === 127 ? 10 : 2;
        if (end - start < header) break;
        if (length === 126) {
          length = (buffer[start + 2] << 8) | buffer[start + 3];
        } else if (length === 127) {
          length = new DataView(buffer.buffer, start + 6, 4).getUint32(0);
        }
        if (end - start < header + 4 + length) break;
        const payload = buffer.subarray(
          start + header + 4,
          start + header + 4 + length,
        );
        applyMask(payload, buffer.subarray(start + header, start + header + 4));
        if ((buffer[start] & 0x0f) === 8) return;
        // The server's frame: the same header without the mask bit, then the payload.
        const frame = new Uint8Array(header + length);
        frame.set(buffer.subarray(start, start + header));
        frame[1] &= 0x7f;
        frame.set(payload, header);
        if (echo) answers.push(frame);
        else for (const user of users) user.send(frame);
        start += header + 4 + length;
      }
      buffer.copyWithin(0, start, end);
      end -= start;
      if (answers.length > 0) {
        peer.send(answers.length === 1 ? answers[0] : join(answers));
      }
    }
  } catch {
    // Reset: the connection is gone.
  } finally {
    users.delete(peer);
    try {
      conn.close();
    } catch {
      // Already closed.
    }
  }
}

const listener = Deno.listen({ hostname: "127.0.0.1", port });
console.log("ready");
for await (const conn of listener) serve(conn);
