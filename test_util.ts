// Test helpers: a Protocol server on loopback that records what happens, an in-memory
// connection that writes short and reads slowly on demand, and a raw client that speaks
// WebSocket byte by byte over either. Not part of the published module.

import { assert, assertEquals } from "@std/assert";
import { decodeClosePayload, encodeClosePayload, encodeFrame, Frame, Opcode } from "./frame.ts";
import { type Connection, Protocol, type ProtocolOptions } from "./protocol.ts";

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

/** Compressible text that is not one repeated pattern: JSON records of a seeded sequence. */
export function jsonText(size: number, seed = 1): string {
  let text = "";
  for (let i = 0; text.length < size; i++) {
    text += JSON.stringify({
      id: seed * 100_000 + i,
      user: `user${(i * 7919) % 1000}`,
      ts: 1_700_000_000_000 + i * 137,
    });
  }
  return text.slice(0, size);
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

/** Items in the order pushed; `next` waits for one, for at most `ms`. */
export class Queue<T> {
  #items: T[] = [];
  #waiting: ((item: T) => void)[] = [];

  push(item: T): void {
    const waiter = this.#waiting.shift();
    if (waiter) waiter(item);
    else this.#items.push(item);
  }

  next(what = "event", ms = TIMEOUT): Promise<T> {
    if (this.#items.length > 0) return Promise.resolve(this.#items.shift()!);
    return within(new Promise<T>((resolve) => this.#waiting.push(resolve)), ms, what);
  }
}

/** A promise settled by `resolve`, whose `promise` rejects if it has not within `TIMEOUT` of being asked for. */
export interface Bounded {
  resolve(): void;
  readonly promise: Promise<void>;
}

function bounded(what: string): Bounded {
  const { promise, resolve } = Promise.withResolvers<void>();
  return {
    resolve: () => resolve(),
    get promise() {
      return within(promise, TIMEOUT, what);
    },
  };
}

/**
 * A handler that records its events; tests subclass it to change behaviour. Waiting on
 * `connected` or `disconnected` fails after `TIMEOUT` instead of hanging.
 */
export class Recorder extends Protocol {
  header = "";
  connected: Bounded = bounded("onConnect");
  disconnected: Bounded = bounded("onDisconnect");
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

// ---------------------------------------------------------------- in-memory connections

/** How one end of a memory connection behaves. */
export interface MemoryEndOptions {
  /**
   * Most bytes one write call takes: a number for every call, or a script of lengths,
   * one a call, after which calls take everything. Default: no limit.
   */
  writeLimit?: number | readonly number[];
  /** Most bytes one read returns: a number, or a script of lengths used in turn, cycled. Default: no limit. */
  readLimit?: number | readonly number[];
  /** Awaited before each read returns. Default: one resolved promise, so a read never settles at once. */
  readDelay?: () => Promise<void>;
}

/** A write call a memory end received. */
export interface WriteCall {
  /** The buffer the caller passed: the object itself, to check identity. */
  given: Uint8Array;
  /** A copy of the bytes this call took (the caller may reuse its buffer). */
  taken: Uint8Array;
}

// Wakes whoever waits for something to happen on either end of a memory pair.
class Signal {
  #next = Promise.withResolvers<void>();
  notify(): void {
    this.#next.resolve();
    this.#next = Promise.withResolvers<void>();
  }
  get next(): Promise<void> {
    return this.#next.promise;
  }
}

// One direction of a memory pair: bytes written at one end, not yet read at the other.
class Pipe {
  #chunks: Uint8Array[] = [];
  #writerDone = false; // closeWrite or close at the writing end: EOF once drained
  #readerGone = false; // close at the reading end: writes fail as on a reset socket
  #signal: Signal;

  constructor(signal: Signal) {
    this.#signal = signal;
  }

  get readerGone(): boolean {
    return this.#readerGone;
  }

  push(bytes: Uint8Array): void {
    if (bytes.length > 0) this.#chunks.push(bytes.slice());
    this.#signal.notify();
  }

  endWrites(): void {
    this.#writerDone = true;
    this.#signal.notify();
  }

  endReads(): void {
    this.#readerGone = true;
    this.#chunks = [];
    this.#signal.notify();
  }

  // Up to `limit` bytes into `into`; null at EOF; throws once the reading end is closed.
  async take(into: Uint8Array, limit: number): Promise<number | null> {
    while (this.#chunks.length === 0 && !this.#writerDone && !this.#readerGone) await this.#signal.next;
    if (this.#readerGone) throw new Deno.errors.BadResource("memory connection closed");
    if (this.#chunks.length === 0) return null;
    let count = 0;
    while (count < Math.min(limit, into.length) && this.#chunks.length > 0) {
      const chunk = this.#chunks[0];
      const piece = chunk.subarray(0, Math.min(chunk.length, limit - count, into.length - count));
      into.set(piece, count);
      count += piece.length;
      if (piece.length === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(piece.length);
    }
    return count;
  }
}

/**
 * One end of an in-memory connection: a {@linkcode Connection} that can write short,
 * read in small pieces, hold writes in flight, and records every call.
 */
export class MemoryEnd implements Connection {
  /** Every write call, in order. */
  readonly writes: WriteCall[] = [];
  /** What each read returned, in order. */
  readonly reads: (number | null)[] = [];
  /** The length of the buffer each read call was given, in order (the last: the read under way). */
  readonly readSizes: number[] = [];
  /** How many write calls had been made when each read call was made, in order. */
  readonly writesBeforeRead: number[] = [];
  /** The calls in order: "write" (each call), "closeWrite", "close". */
  readonly log: string[] = [];
  #in: Pipe;
  #out: Pipe;
  #signal: Signal;
  #options: MemoryEndOptions;
  #writeCalls = 0;
  #readCalls = 0;
  #closed = false;
  #hold: Promise<void> | undefined;
  #inFlight = 0;

  constructor(incoming: Pipe, outgoing: Pipe, signal: Signal, options: MemoryEndOptions) {
    this.#in = incoming;
    this.#out = outgoing;
    this.#signal = signal;
    this.#options = options;
  }

  /** Bytes taken by write calls so far. */
  get bytesWritten(): number {
    return this.writes.reduce((sum, call) => sum + call.taken.length, 0);
  }

  /** Write calls under way (held by `hold()`). */
  get writesInFlight(): number {
    return this.#inFlight;
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Write calls from now on wait, until the returned function is called; calls already held stay held by their own hold. */
  hold(): () => void {
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#hold = promise;
    return () => {
      if (this.#hold === promise) this.#hold = undefined;
      resolve();
    };
  }

  /** Waits until `check()` holds, re-checking whenever either end of the pair does anything. */
  async until(check: () => boolean, what: string, ms = TIMEOUT): Promise<void> {
    const deadline = Date.now() + ms;
    while (!check()) await within(this.#signal.next, Math.max(1, deadline - Date.now()), what);
  }

  async read(into: Uint8Array): Promise<number | null> {
    if (this.#closed) throw new Deno.errors.BadResource("memory connection closed");
    this.readSizes.push(into.length);
    this.writesBeforeRead.push(this.writes.length + this.#inFlight);
    const limit = pick(this.#options.readLimit, this.#readCalls++, true);
    const count = await this.#in.take(into, limit);
    await (this.#options.readDelay?.() ?? Promise.resolve());
    this.reads.push(count);
    this.#signal.notify();
    return count;
  }

  async write(bytes: Uint8Array): Promise<number> {
    this.log.push("write");
    const limit = pick(this.#options.writeLimit, this.#writeCalls++, false);
    this.#inFlight++;
    this.#signal.notify();
    try {
      if (this.#hold !== undefined) await this.#hold;
      // Checked after the hold, as a socket reports a reset on the write that meets it.
      if (this.#closed) throw new Deno.errors.BadResource("memory connection closed");
      if (this.log.includes("closeWrite")) throw new Deno.errors.BrokenPipe("write after closeWrite");
      if (this.#out.readerGone) throw new Deno.errors.BrokenPipe("the other end is closed");
      const taken = bytes.slice(0, limit);
      this.writes.push({ given: bytes, taken });
      this.#out.push(taken);
      return taken.length;
    } finally {
      this.#inFlight--;
      this.#signal.notify();
    }
  }

  closeWrite(): Promise<void> {
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("memory connection closed"));
    this.log.push("closeWrite");
    this.#out.endWrites();
    return Promise.resolve();
  }

  close(): void {
    if (this.#closed) throw new Deno.errors.BadResource("memory connection closed");
    this.#closed = true;
    this.log.push("close");
    this.#out.endWrites();
    this.#in.endReads();
  }
}

// The limit of the `call`-th call: a fixed number, a script (cycled for reads), or none.
function pick(limit: number | readonly number[] | undefined, call: number, cycle: boolean): number {
  if (limit === undefined) return Infinity;
  if (typeof limit === "number") return limit;
  if (call < limit.length) return limit[call];
  return cycle ? limit[call % limit.length] : Infinity;
}

/** Two connected memory ends: what one writes the other reads. */
export function memoryPair(
  serverOptions: MemoryEndOptions = {},
  clientOptions: MemoryEndOptions = {},
): [server: MemoryEnd, client: MemoryEnd] {
  const signal = new Signal();
  const toServer = new Pipe(signal);
  const toClient = new Pipe(signal);
  return [
    new MemoryEnd(toServer, toClient, signal, serverOptions),
    new MemoryEnd(toClient, toServer, signal, clientOptions),
  ];
}

/** How `withMemoryClient` sets up its connection. */
export interface MemorySetup<H extends Protocol> {
  /** Handler options, over short handshake and close timeouts and no heartbeats. */
  options?: ProtocolOptions;
  /** How the server end behaves. */
  conn?: MemoryEndOptions;
  /** The handler class (default `Recorder`). */
  handler?: new (users: Map<string, Protocol>, options: ProtocolOptions) => H;
  /** Whether the client completes the handshake before `body` runs (default true). */
  open?: boolean;
}

/**
 * Serves one handler over a memory connection, runs `body` with a raw client on the
 * other end, then closes the client and waits (bounded) for `serve` to end.
 */
export async function withMemoryClient<H extends Protocol = Recorder>(
  body: (client: RawClient, handler: H, server: MemoryEnd) => Promise<void>,
  setup: MemorySetup<H> = {},
): Promise<void> {
  const [server, peer] = memoryPair(setup.conn);
  const options = { pingInterval: 0, idleTimeout: 0, handshakeTimeout: 1000, closeTimeout: 1000, ...setup.options };
  const Handler = setup.handler ??
    (Recorder as unknown as new (users: Map<string, Protocol>, options: ProtocolOptions) => H);
  const handler = new Handler(new Map(), options);
  const served = handler.serve(server);
  const client = RawClient.over(peer);
  try {
    if (setup.open ?? true) {
      await client.write(handshake());
      const answer = await client.readAnswer();
      assertEquals(answer.status, 101, answer.body);
    }
    await body(client, handler, server);
  } finally {
    client.close();
    await within(served, 10_000, "serve() to end");
  }
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

/** A raw client over TCP or a memory end: writes bytes, reads the HTTP answer and server frames. */
export class RawClient {
  readonly conn: Connection;
  /** Whether server frames may have RSV1 (permessage-deflate negotiated); their payloads stay compressed. */
  rsv1 = false;
  // Bytes [#start, end) of #buffer are received and not yet consumed.
  #buffer = new Uint8Array(0);
  #start = 0;
  #eof = false;

  private constructor(conn: Connection) {
    this.conn = conn;
  }

  static async connect(port: number): Promise<RawClient> {
    return new RawClient(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  /** A client on a connection already made, such as the client end of `memoryPair()`. */
  static over(conn: Connection): RawClient {
    return new RawClient(conn);
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
    const pending = this.#buffer.subarray(this.#start);
    const joined = new Uint8Array(pending.length + count);
    joined.set(pending);
    joined.set(chunk.subarray(0, count), pending.length);
    this.#buffer = joined;
    this.#start = 0;
    return true;
  }

  // The bytes received and not yet consumed.
  get #pending(): Uint8Array {
    return this.#buffer.subarray(this.#start);
  }

  /** Reads the HTTP response head and its body (by Content-Length). */
  async readAnswer(): Promise<HttpAnswer> {
    const deadline = Date.now() + TIMEOUT;
    let headEnd = -1;
    while ((headEnd = latin1(this.#pending).indexOf("\r\n\r\n")) < 0) {
      if (!(await this.#fill(deadline))) throw new Error(`connection ended before an HTTP answer`);
    }
    const [statusLine, ...lines] = latin1(this.#pending.subarray(0, headEnd)).split("\r\n");
    const headers = new Headers(lines.map((line) => line.split(/:\s*/, 2) as [string, string]));
    const bodyLength = Number(headers.get("content-length") ?? 0);
    while (this.#pending.length < headEnd + 4 + bodyLength) {
      if (!(await this.#fill(deadline))) throw new Error(`connection ended inside the HTTP answer's body`);
    }
    const body = new TextDecoder().decode(this.#pending.subarray(headEnd + 4, headEnd + 4 + bodyLength));
    this.#start += headEnd + 4 + bodyLength;
    return { status: Number(statusLine.split(" ")[1]), headers, body };
  }

  /** The next frame from the server, or null at EOF. */
  async readFrame(ms = TIMEOUT): Promise<Frame | null> {
    const deadline = Date.now() + ms;
    while (true) {
      const frame = Frame.decode(this.#pending, { masked: false, rsv1: this.rsv1 });
      if (frame) {
        this.#start += frame.length();
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
