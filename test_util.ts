// Test helpers: a Protocol server on loopback that records what happens, and a raw
// client that speaks WebSocket byte by byte. Not part of the published module.

import { assert, assertEquals } from "@std/assert";
import { decodeClosePayload, encodeClosePayload, encodeFrame, Frame, Opcode } from "./frame.ts";
import { Protocol, type ProtocolOptions } from "./protocol.ts";

export const encoder = new TextEncoder();

/**
 * Whether a real peer (a Debian package) is missing on this machine. Tests of a
 * missing peer are ignored on a developer's machine; in CI they run, and fail.
 */
export function peerMissing(check: () => boolean): boolean {
  let installed = false;
  try {
    installed = check();
  } catch {
    installed = false;
  }
  return !installed && !Deno.env.get("CI");
}
export const TIMEOUT = 5000;

/** Rejects if `promise` has not settled within `ms`. */
export async function within<T>(promise: Promise<T>, ms = TIMEOUT, what = "operation"): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A handler that records its events; tests subclass it to change behaviour. */
export class Recorder extends Protocol {
  header = "";
  connected = Promise.withResolvers<void>();
  disconnected = Promise.withResolvers<void>();
  disconnects = 0;
  messages: (string | Uint8Array)[] = [];
  #waiters: (() => void)[] = [];

  override onHandshake(header: string): boolean | void | Promise<boolean | void> {
    this.header = header;
  }
  override onConnect(): void {
    this.connected.resolve();
  }
  override onDisconnect(): void {
    this.disconnects++;
    this.disconnected.resolve();
  }
  override onMessage(msg: string | Uint8Array): void | Promise<void> {
    this.messages.push(msg);
    for (const wake of this.#waiters.splice(0)) wake();
  }

  /** Waits until `count` messages have arrived. */
  async received(count: number): Promise<(string | Uint8Array)[]> {
    const deadline = Date.now() + TIMEOUT;
    while (this.messages.length < count) {
      assert(Date.now() < deadline, `expected ${count} messages, got ${this.messages.length}`);
      const woken = Promise.withResolvers<void>();
      this.#waiters.push(woken.resolve);
      await within(woken.promise, deadline - Date.now(), "message");
    }
    return this.messages;
  }
}

/** A loopback server running one handler class; `close()` waits for every connection. */
export class TestServer<H extends Protocol = Recorder> {
  readonly users = new Map<string, Protocol>();
  readonly handlers: H[] = [];
  readonly port: number;
  #listener: Deno.Listener;
  #served: Promise<void>[] = [];
  #accepting: Promise<void>;
  #next = Promise.withResolvers<H>();

  constructor(make: (users: Map<string, Protocol>) => H) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.#listener = listener;
    this.port = listener.addr.port;
    this.#accepting = (async () => {
      try {
        for await (const conn of listener) {
          const handler = make(this.users);
          this.handlers.push(handler);
          this.#served.push(handler.serve(conn));
          this.#next.resolve(handler);
          this.#next = Promise.withResolvers<H>();
        }
      } catch {
        // The listener was closed.
      }
    })();
  }

  /** The handler of the n-th accepted connection (0-based), once accepted. */
  async handler(index: number): Promise<H> {
    while (this.handlers.length <= index) await within(this.#next.promise, TIMEOUT, "accept");
    return this.handlers[index];
  }

  async close(): Promise<void> {
    this.#listener.close();
    await this.#accepting;
    await within(Promise.all(this.#served), 10_000, "connections to end");
  }
}

/** Serves `Recorder`s (or `make`'s handlers) with the given options. */
export function recordingServer(options: ProtocolOptions = {}): TestServer<Recorder> {
  return new TestServer((users) => new Recorder(users, { pingInterval: 0, idleTimeout: 0, ...options }));
}

/** Runs `body` against a recording server (short handshake and close timeouts) and always closes it. */
export async function withServer(
  body: (server: TestServer<Recorder>) => Promise<void>,
  options: ProtocolOptions = {},
): Promise<void> {
  const server = recordingServer({ handshakeTimeout: 1000, closeTimeout: 1000, ...options });
  try {
    await body(server);
  } finally {
    await server.close();
  }
}

/** Runs `body` with one client whose connection is open, and always closes both ends. */
export function withClient(
  body: (client: RawClient, handler: Recorder, server: TestServer<Recorder>) => Promise<void>,
  options: ProtocolOptions = {},
): Promise<void> {
  return withServer(async (server) => {
    const client = await RawClient.open(server.port);
    try {
      const handler = await server.handler(0);
      await handler.connected.promise;
      await body(client, handler, server);
    } finally {
      client.close();
    }
  }, options);
}

export const KEY = "dGhlIHNhbXBsZSBub25jZQ==";
export const ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/** A valid opening handshake, with headers replaced (or removed with `null`). */
export function handshake(
  headers: Record<string, string | null> = {},
  requestLine = "GET /chat?room=1 HTTP/1.1",
): string {
  const all: Record<string, string | null> = {
    Host: "127.0.0.1",
    Upgrade: "websocket",
    Connection: "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
    ...headers,
  };
  const lines = Object.entries(all).filter(([, value]) => value !== null).map(([name, value]) => `${name}: ${value}`);
  return `${requestLine}\r\n${lines.join("\r\n")}\r\n\r\n`;
}

/** The HTTP response to a handshake. */
export interface HttpAnswer {
  status: number;
  headers: Headers;
  body: string;
}

/** A raw client: writes bytes, reads the HTTP answer and server frames. */
export class RawClient {
  readonly conn: Deno.TcpConn;
  /** Whether server frames may have RSV1 (permessage-deflate negotiated); their payloads stay compressed. */
  rsv1 = false;
  #buffer = new Uint8Array(0);
  #eof = false;

  private constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  static async connect(port: number): Promise<RawClient> {
    return new RawClient(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  /** Connects and completes a valid handshake. */
  static async open(port: number, headers: Record<string, string | null> = {}): Promise<RawClient> {
    const client = await RawClient.connect(port);
    await client.write(handshake(headers));
    const answer = await client.readAnswer();
    assertEquals(answer.status, 101, answer.body);
    return client;
  }

  async write(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    for (let offset = 0; offset < bytes.length;) offset += await this.conn.write(bytes.subarray(offset));
  }

  /** Sends one masked frame, as a client must. */
  send(opcode: Opcode, payload: string | Uint8Array = new Uint8Array(0), fin = true): Promise<void> {
    return this.write(encodeFrame(opcode, payload, { mask: true, fin }));
  }

  sendClose(code?: number, reason = ""): Promise<void> {
    return this.send(Opcode.Close, encodeClosePayload(code, reason));
  }

  // Reads more bytes; false at EOF or reset.
  async #fill(deadline: number): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = new Uint8Array(64 * 1024);
    let count: number | null;
    try {
      count = await within(this.conn.read(chunk), Math.max(1, deadline - Date.now()), "read");
    } catch (error) {
      if (error instanceof Error && error.message.includes("did not finish")) throw error;
      count = null; // A reset counts as the end.
    }
    if (count === null) {
      this.#eof = true;
      return false;
    }
    const joined = new Uint8Array(this.#buffer.length + count);
    joined.set(this.#buffer);
    joined.set(chunk.subarray(0, count), this.#buffer.length);
    this.#buffer = joined;
    return true;
  }

  /** Reads the HTTP response head and its body (by Content-Length). */
  async readAnswer(): Promise<HttpAnswer> {
    const deadline = Date.now() + TIMEOUT;
    let headEnd = -1;
    while ((headEnd = latin1(this.#buffer).indexOf("\r\n\r\n")) < 0) {
      if (!(await this.#fill(deadline))) throw new Error(`connection ended before an HTTP answer`);
    }
    const [statusLine, ...lines] = latin1(this.#buffer.subarray(0, headEnd)).split("\r\n");
    const headers = new Headers(lines.map((line) => line.split(/:\s*/, 2) as [string, string]));
    const bodyLength = Number(headers.get("content-length") ?? 0);
    while (this.#buffer.length < headEnd + 4 + bodyLength) await this.#fill(deadline);
    const body = new TextDecoder().decode(this.#buffer.subarray(headEnd + 4, headEnd + 4 + bodyLength));
    this.#buffer = this.#buffer.slice(headEnd + 4 + bodyLength);
    return { status: Number(statusLine.split(" ")[1]), headers, body };
  }

  /** The next frame from the server, or null at EOF. */
  async readFrame(ms = TIMEOUT): Promise<Frame | null> {
    const deadline = Date.now() + ms;
    while (true) {
      const frame = Frame.decode(this.#buffer, { masked: false, rsv1: this.rsv1 });
      if (frame) {
        this.#buffer = this.#buffer.slice(frame.length());
        return frame;
      }
      if (!(await this.#fill(deadline))) return null;
    }
  }

  /** Reads frames until a close frame; returns its code and the frames before it. */
  async readUntilClose(): Promise<{ code: number; reason: string; before: Frame[] }> {
    const before: Frame[] = [];
    for (let frame = await this.readFrame(); frame; frame = await this.readFrame()) {
      if (frame.opcode === Opcode.Close) return { ...decodeClosePayload(frame.payload), before };
      before.push(frame);
    }
    throw new Error(`connection ended without a close frame after ${before.length} frames`);
  }

  /** Resolves once the server has closed TCP (EOF); fails on any further frame. */
  async expectEnd(ms = TIMEOUT): Promise<void> {
    const frame = await this.readFrame(ms);
    assertEquals(frame, null, "expected the server to close TCP, got another frame");
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

function latin1(bytes: Uint8Array): string {
  return new TextDecoder("latin1").decode(bytes);
}
