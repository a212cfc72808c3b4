/**
 * The server side of a WebSocket connection (RFC 6455): one {@linkcode Protocol} per
 * connection drives a `Deno.Conn` (TCP or TLS) through the opening handshake, frame
 * dispatch and the closing handshake, and calls back into your subclass.
 *
 * @example An echo server
 * ```ts ignore
 * import { Protocol } from "./protocol.ts";
 *
 * class Echo extends Protocol {
 *   override onMessage(msg: string | Uint8Array) {
 *     this.sendMessage(msg);
 *   }
 * }
 * const users = new Map<string, Protocol>();
 * for await (const conn of Deno.listen({ port: 9999 })) new Echo(users).serve(conn);
 * ```
 *
 * @module
 */

import { decodeBase64 } from "@std/encoding/base64";
import {
  computeAcceptKey,
  type HandshakeRequest,
  hasToken,
  type HttpResponse,
  httpResponse,
  parseRequestHead,
  switchingProtocols,
} from "./_http.ts";
import { ProtocolError, WebSocketError } from "./errors.ts";
import {
  applyMask,
  CloseCode,
  decodeClosePayload,
  decodeHeader,
  decodeText,
  encodeClosePayload,
  encodeFrame,
  encodeHeader,
  type FrameHeader,
  Opcode,
} from "./frame.ts";
import { existingRegistry, type PublishOptions, registryOf, type TopicRegistry } from "./_topics.ts";

export { computeAcceptKey, type HandshakeRequest, type HttpResponse, type PublishOptions };

/**
 * Limits and timers of a connection; every one has a safe default.
 *
 * @example
 * ```ts
 * import { Protocol, type ProtocolOptions } from "./protocol.ts";
 *
 * const options: ProtocolOptions = { maxPayload: 64 * 1024, allowedOrigins: ["https://example.com"] };
 * const handler = new Protocol(new Map(), options);
 * ```
 */
export interface ProtocolOptions {
  /** Largest message, in bytes, whole or summed over its fragments (default 16 MiB); over it: 1009. */
  maxPayload?: number;
  /** Most fragments in one message (default 65,536); over it: 1009. */
  maxFragments?: number;
  /** Largest HTTP request head in bytes (default 16 KiB); over it: 431. */
  maxHeaderSize?: number;
  /** Most header lines in the request head (default 100); over it: 431. */
  maxHeaders?: number;
  /** Milliseconds for the opening handshake to arrive (default 10,000); then the TCP connection is closed. */
  handshakeTimeout?: number;
  /** Milliseconds to wait for the peer's close frame and TCP close after ours (default 5,000). */
  closeTimeout?: number;
  /** Bytes the send queue may hold (default 16 MiB); see `backpressurePolicy`. */
  maxBackpressure?: number;
  /** What a message that would overfill the send queue does: close with 1008 (default) or be dropped. */
  backpressurePolicy?: "close" | "drop";
  /** Milliseconds between pings (default 30,000; 0 turns pings off). */
  pingInterval?: number;
  /** Milliseconds without any frame from the peer before closing with 1001 (default 60,000; 0 turns it off). */
  idleTimeout?: number;
  /** Origins allowed to connect (exact `Origin` values, or a predicate); others get 403. Default: all. */
  allowedOrigins?: readonly string[] | ((origin: string | null) => boolean);
}

const DEFAULTS: Required<Omit<ProtocolOptions, "allowedOrigins">> = {
  maxPayload: 16 * 1024 * 1024,
  maxFragments: 65_536,
  maxHeaderSize: 16 * 1024,
  maxHeaders: 100,
  handshakeTimeout: 10_000,
  closeTimeout: 5_000,
  maxBackpressure: 16 * 1024 * 1024,
  backpressurePolicy: "close",
  pingInterval: 30_000,
  idleTimeout: 60_000,
};

/**
 * The connection's state, as `WebSocket.readyState` but named.
 *
 * @example
 * ```ts
 * import { Protocol } from "./protocol.ts";
 *
 * console.log(new Protocol().state); // "connecting"
 * ```
 */
export type ConnectionState = "connecting" | "open" | "closing" | "closed";

/**
 * The part of `Deno.Conn` a {@linkcode Protocol} uses; `Deno.TcpConn` and
 * `Deno.TlsConn` both fit, and so does an in-memory stand-in for tests.
 *
 * @example
 * ```ts ignore
 * import { type Connection, Protocol } from "./protocol.ts";
 *
 * const conn: Connection = await Deno.connect({ port: 9999 });
 * ```
 */
export type Connection = Pick<Deno.Conn, "read" | "write" | "close" | "closeWrite">;

// The read buffer: 1 KiB, doubled while reads fill it (up to maxHeaderSize for the
// request head, then up to 64 KiB) and given back once they do not. Idle connections
// hold little; a frame larger than the buffer is read straight into a buffer of its own.
const READ_BUFFER_MIN = 1024;
const READ_BUFFER_MAX = 64 * 1024;
// Payload buffers are allocated at their frame's declared length once its header has
// arrived (one allocation, no copy), as long as all connections together have at most
// RESERVE_LIMIT bytes allocated ahead of their arrival; past it a payload buffer grows
// with the bytes that arrive, so that declared lengths alone cannot take memory.
const RESERVE_LIMIT = 64 * 1024 * 1024;
let reserved = 0;
// Small frames queued together are joined into writes of at most 64 KiB. Larger joins
// win a little throughput under overload and cost fairness: connections that got big
// writes got more, and p99 latency doubled (64 connections x 16 KiB x 32 in flight).
const COALESCE_LIMIT = 64 * 1024;
// Buffers for those joins, lent to busy connections: a fresh one costs a page fault
// every 4 KiB as it is first written; the pool holds at most 4 MiB.
const SPARE_WRITE_BUFFERS = 64;
const spareWriteBuffers: Uint8Array[] = [];
// Outgoing frames are cut from shared slabs: in Deno a new ArrayBuffer costs about a
// microsecond, a view into one a few nanoseconds. A slab is never reused, only dropped
// once its frames are written; frames never leave this module.
const SLAB_SIZE = 64 * 1024;
const SLAB_CUT_LIMIT = 4 * 1024;
let slab = new Uint8Array(0);
let slabOffset = 0;
const pooled = { allocate };
// From this size a payload is queued by reference after its header, not copied into a frame.
const LARGE_PAYLOAD = 4 * 1024;
const EMPTY = new Uint8Array(0);
const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

/**
 * One WebSocket connection, server side. Subclass it and override the callbacks;
 * build one per connection with the shared `users` map, then `serve(conn)`.
 *
 * @example A broadcast handler in the TwistedWebsocket style
 * ```ts ignore
 * import { Protocol } from "./protocol.ts";
 *
 * class Handler extends Protocol {
 *   override onHandshake(header: string) {
 *     console.log(`[HANDSHAKE] ${this.id} origin: ${/Origin\s*:\s*(\S+)/i.exec(header)?.[1]}`);
 *   }
 *   override onMessage(msg: string | Uint8Array) {
 *     Protocol.broadcast(this.users.values(), msg);
 *   }
 * }
 * const users = new Map<string, Protocol>();
 * for await (const conn of Deno.listen({ port: 9999 })) new Handler(users).serve(conn);
 * ```
 */
export class Protocol {
  /** This connection's id, a UUID v4. */
  readonly id: string = crypto.randomUUID();
  /** Every connected user by id, shared by all connections; holds this one while it is open. */
  readonly users: Map<string, Protocol>;
  /** The subprotocol agreed on in the handshake, or `""`. */
  protocol = "";
  /** The closing handshake's code: the peer's, else the one sent, else 1006 (abnormal). */
  closeCode: number = CloseCode.AbnormalClosure;
  /** The closing handshake's reason. */
  closeReason = "";

  #options: ResolvedOptions;
  // The request head as received; its parsed form is kept during the handshake, and
  // parsed again if asked for later, which idle connections do not pay for.
  #head = "";
  #request: HandshakeRequest | undefined;
  #state: ConnectionState = "connecting";
  #conn: Connection | undefined;
  #connClosed = false;
  #reading = true;
  #closeSent = false;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #heartbeatPeriod = 0;
  #lastSeen = 0;
  #lastPing = -Infinity;

  // Read buffer: bytes [#start, #end) are received and not yet parsed.
  #buffer = new Uint8Array(READ_BUFFER_MIN);
  #start = 0;
  #end = 0;
  #lastRead = 0;
  #readFilled = false;
  // The frame too large for the read buffer whose payload is being read into a buffer of its own.
  #large: LargeFrame | undefined;

  // The fragmented message being reassembled (RFC 6455 5.4).
  #messageOpcode: number | undefined;
  #fragments = EMPTY;
  #fragmentBytes = 0;
  #fragmentCount = 0;
  #utf8Validator: TextDecoder | undefined;

  // Send queue: frames not yet written, and the promise of the batch they will go in.
  #queue: Uint8Array[] = [];
  #queuedBytes = 0;
  #queuedPong = -1; // index in #queue of a pong not yet written, or -1
  #flushing: Promise<void> | undefined;
  #batchWritten: PromiseWithResolvers<boolean> | undefined;
  #coalesced: Uint8Array | undefined;

  /**
   * Makes a connection handler.
   *
   * @param users The map of connected users, shared by all connections.
   * @param options Limits and timers.
   */
  constructor(users: Map<string, Protocol> = new Map(), options: ProtocolOptions = {}) {
    this.users = users;
    this.#options = resolveOptions(options);
  }

  /** The opening handshake request, once it has been parsed. */
  get request(): HandshakeRequest | undefined {
    if (this.#request === undefined && this.#head !== "") {
      this.#request = parseRequestHead(this.#head, Infinity);
    }
    return this.#request;
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** Bytes queued for sending and not yet written to the socket. */
  get bufferedAmount(): number {
    return this.#queuedBytes;
  }

  /**
   * Called with the raw HTTP request head once it is valid, before the answer.
   * Return `false` (or throw a {@linkcode ProtocolError}) to refuse the connection
   * with 403 (or the error's `status`). `this.request` holds the parsed request.
   *
   * @param _header The request head, request line and headers, as received.
   * @returns `false` to refuse.
   */
  onHandshake(_header: string): boolean | void | Promise<boolean | void> {}

  /**
   * Chooses a subprotocol from those the client offers in `Sec-WebSocket-Protocol`,
   * in its order of preference. The default accepts none.
   *
   * @param _offered The offered subprotocols.
   * @returns One of them, or `undefined` for none.
   */
  selectProtocol(_offered: string[]): string | undefined {
    return undefined;
  }

  /**
   * Answers an HTTP request that is not a WebSocket upgrade (no `Upgrade` header).
   * The default returns `undefined`, which answers 400.
   *
   * @param _request The parsed request.
   * @returns The response, or `undefined` for the default.
   */
  onHttpRequest(_request: HandshakeRequest): HttpResponse | undefined {
    return undefined;
  }

  /** Called once the connection is open and in `users`. */
  onConnect(): void | Promise<void> {}

  /** Called once when an open connection has ended, however it ended, after it left `users`. */
  onDisconnect(): void | Promise<void> {}

  /**
   * Called for each whole message: a string for text, bytes for binary.
   *
   * @param _msg The message.
   */
  onMessage(_msg: string | Uint8Array): void | Promise<void> {}

  /**
   * Sends a message: text for a string, binary for bytes. Frames of one connection
   * never interleave. Bytes of 4 KiB and more are kept by reference until written (from
   * 64 KiB, written from your buffer without a copy, as `ws` does): leave them unchanged
   * until the returned promise settles.
   *
   * @example
   * ```ts ignore
   * const written = await this.sendMessage("hello"); // false if the connection is closed
   * ```
   *
   * @param msg The message.
   * @returns A promise of `true` once the bytes are written, `false` if the
   *   connection is closed or the message was dropped by the backpressure policy.
   */
  sendMessage(msg: string | Uint8Array): Promise<boolean> {
    return this.#sendData(encodeMessage(msg));
  }

  /**
   * Sends a ping (RFC 6455 5.5.2); the peer answers with a pong.
   *
   * @param data Up to 125 bytes of application data.
   * @returns A promise of `true` once written, `false` if the connection is not open.
   */
  ping(data: Uint8Array = new Uint8Array(0)): Promise<boolean> {
    if (this.#state !== "open") return Promise.resolve(false);
    if (data.length > 125) throw new RangeError(`Ping data must be at most 125 bytes, got ${data.length}`);
    const written = this.#written();
    this.#enqueue(encodeFrame(Opcode.Ping, data, pooled));
    return written;
  }

  /**
   * Starts the closing handshake (RFC 6455 7.1.2): sends a close frame after what is
   * already queued, then waits for the peer's close frame and closes TCP, or closes
   * it after `closeTimeout`.
   *
   * @param code The close code (default 1000).
   * @param reason A reason of at most 123 bytes.
   */
  close(code: number = CloseCode.NormalClosure, reason = ""): void {
    const payload = encodeClosePayload(code, reason);
    if (this.#state === "connecting") {
      this.#abort();
    } else if (this.#state === "open") {
      this.#state = "closing";
      this.closeCode = code;
      this.closeReason = reason;
      this.#sendClose(payload);
      this.#closeTimer = setTimeout(() => this.#abort(), this.#options.closeTimeout);
    }
  }

  /**
   * Sends one message to many connections, encoding its frame once. Recipients
   * that are not open are skipped.
   *
   * @example
   * ```ts ignore
   * Protocol.broadcast(this.users.values(), `${this.id} connected`);
   * ```
   *
   * @param recipients The connections to send to.
   * @param msg The message.
   * @returns How many recipients queued the message.
   */
  static broadcast(recipients: Iterable<Protocol>, msg: string | Uint8Array): number {
    const frame = encodeMessage(msg);
    let count = 0;
    for (const recipient of recipients) {
      if (recipient.#state === "open" && recipient.#enqueueData(frame)) count++;
    }
    return count;
  }

  // --- Topics (publish/subscribe) ---------------------------------------------------
  // The registry (_topics.ts) is one per `users` map, so connections sharing `users`
  // share topics; a bus attached to it (bus.ts: attachBus) reaches other workers and
  // nodes. Besides this block, the only line is in serve(): an ended connection leaves
  // all its topics.

  /**
   * Subscribes this connection to a topic, in O(1). It stays subscribed until
   * {@linkcode Protocol.prototype.unsubscribe} or until the connection ends.
   *
   * @example
   * ```ts
   * import { assertEquals } from "@std/assert";
   * import { Protocol } from "./protocol.ts";
   *
   * const user = new Protocol();
   * assertEquals(user.subscribe("news"), true);
   * assertEquals(user.subscribe("news"), false); // already subscribed
   * assertEquals([...user.topics], ["news"]);
   * ```
   *
   * @param topic Any string.
   * @returns `false` if it was subscribed already, or the connection has ended.
   */
  subscribe(topic: string): boolean {
    return this.state !== "closed" && Protocol.#topicsOf(this.users).subscribe(this, topic);
  }

  /**
   * Unsubscribes this connection from a topic, in O(1).
   *
   * @example
   * ```ts
   * import { assertEquals } from "@std/assert";
   * import { Protocol } from "./protocol.ts";
   *
   * const user = new Protocol();
   * user.subscribe("news");
   * assertEquals(user.unsubscribe("news"), true);
   * assertEquals(user.unsubscribe("news"), false);
   * ```
   *
   * @param topic The topic.
   * @returns `false` if it was not subscribed.
   */
  unsubscribe(topic: string): boolean {
    return Protocol.#topicsOf(this.users).unsubscribe(this, topic);
  }

  /** A copy of the topics this connection is subscribed to. */
  get topics(): ReadonlySet<string> {
    return Protocol.#topicsOf(this.users).topicsOf(this);
  }

  /**
   * Publishes a message to the open subscribers of a topic, encoding its frame once:
   * to those on this `users` map now, and through the attached bus, if any, to those
   * of other workers and nodes. This connection is left out unless
   * `options.includeSelf` (its copy then goes last); it need not be subscribed. One
   * publisher's messages reach each subscriber in the order they were published.
   *
   * @example
   * ```ts
   * import { assertEquals } from "@std/assert";
   * import { Protocol } from "./protocol.ts";
   *
   * const user = new Protocol();
   * user.subscribe("news");
   * // Not open yet, so no one queues it; an open subscriber would count.
   * assertEquals(user.publish("news", "hello", { includeSelf: true }), 0);
   * ```
   *
   * @param topic The topic.
   * @param msg Text (a string) or binary (bytes).
   * @param options Whether this connection gets it too.
   * @returns How many local subscribers queued the message.
   */
  publish(topic: string, msg: string | Uint8Array, options: PublishOptions = {}): number {
    return Protocol.#topicsOf(this.users).publish(topic, msg, this, options.includeSelf === true);
  }

  /**
   * Publishes a message to every open subscriber of a topic among the connections
   * sharing `users` (and, through the attached bus, on other workers and nodes), as a
   * server would, not on behalf of a connection.
   *
   * @example
   * ```ts
   * import { assertEquals } from "@std/assert";
   * import { Protocol } from "./protocol.ts";
   *
   * const users = new Map<string, Protocol>();
   * assertEquals(Protocol.publish(users, "news", "hello"), 0); // no one is subscribed
   * ```
   *
   * @param users The shared map of connections.
   * @param topic The topic.
   * @param msg The message.
   * @returns How many local subscribers queued the message.
   */
  static publish(users: Map<string, Protocol>, topic: string, msg: string | Uint8Array): number {
    return Protocol.#topicsOf(users).publish(topic, msg);
  }

  static #topicsOf(users: Map<string, Protocol>): TopicRegistry<Protocol> {
    return registryOf(users, Protocol.broadcast);
  }
  // --- End of topics -------------------------------------------------------------------

  /**
   * Runs the connection until it ends: the handshake, then frames, then the close.
   * Never rejects; errors close the connection with the right code or status.
   *
   * @param conn A TCP or TLS connection from `Deno.listen` / `Deno.listenTls`.
   * @returns A promise that settles when the connection has ended.
   */
  async serve(conn: Connection): Promise<void> {
    this.#conn = conn;
    (conn as Partial<Deno.TcpConn>).setNoDelay?.(true);
    let connected = false;
    try {
      if (!(await this.#handshake())) return;
      this.#state = "open";
      this.#request = undefined;
      this.users.set(this.id, this);
      connected = true;
      this.#startHeartbeat();
      this.#callback(() => this.onConnect());
      this.#receive();
      // The loop of #read, inline: one promise less a read.
      while (this.#reading) {
        const target = this.#readTarget();
        const count = await this.#conn!.read(target);
        if (count === null) break;
        this.#didRead(target, count);
        this.#receive();
      }
    } catch (error) {
      if (!isConnectionError(error)) console.error(`[${this.id}] unexpected error:`, error);
    } finally {
      await this.#finish();
      existingRegistry<Protocol>(this.users)?.leaveAll(this); // topics: an ended connection leaves them all
      if (connected) {
        this.users.delete(this.id);
        this.#callback(() => this.onDisconnect());
      }
    }
  }

  // --- Opening handshake (RFC 6455 4.2) ---

  async #handshake(): Promise<boolean> {
    const timer = setTimeout(() => this.#abort(), this.#options.handshakeTimeout);
    try {
      const headEnd = await this.#readHead();
      if (headEnd < 0) return false;
      if (headEnd + 4 > this.#options.maxHeaderSize) throw headTooLarge(this.#options.maxHeaderSize);
      const head = latin1.decode(this.#buffer.subarray(0, headEnd));
      this.#start = headEnd + 4;
      const { response, upgraded } = await this.#answer(head);
      await this.#writeAll(response);
      return upgraded;
    } catch (error) {
      if (!(error instanceof WebSocketError)) throw error;
      await this.#writeAll(httpResponse({ status: error.status, body: error.message })).catch(() => {});
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  // Reads until the blank line that ends the head; returns its offset, or -1 on EOF.
  async #readHead(): Promise<number> {
    let searchFrom = 0;
    while (true) {
      for (let i = searchFrom; i + 3 < this.#end; i++) {
        if (
          this.#buffer[i] === 13 && this.#buffer[i + 1] === 10 && this.#buffer[i + 2] === 13 &&
          this.#buffer[i + 3] === 10
        ) {
          return i;
        }
      }
      searchFrom = Math.max(0, this.#end - 3);
      if (this.#end >= this.#options.maxHeaderSize) throw headTooLarge(this.#options.maxHeaderSize);
      if (!(await this.#read())) return -1;
    }
  }

  // Checks the request and returns the HTTP answer; throws ProtocolError to refuse.
  async #answer(head: string): Promise<{ response: Uint8Array; upgraded: boolean }> {
    const request = parseRequestHead(head, this.#options.maxHeaders);
    this.#head = head;
    this.#request = request;
    const headers = request.headers;
    if (!headers.has("upgrade")) {
      const response = this.onHttpRequest(request);
      if (response) return { response: httpResponse(response), upgraded: false };
    }
    if (request.method !== "GET") {
      throw new ProtocolError(`Method must be GET, got ${request.method}`, { status: 405 });
    }
    if (!headers.has("host")) throw new ProtocolError("Missing Host header");
    if (!hasToken(headers.get("upgrade"), "websocket")) {
      throw new ProtocolError("Upgrade header must be websocket");
    }
    if (!hasToken(headers.get("connection"), "upgrade")) {
      throw new ProtocolError("Connection header must contain upgrade");
    }
    const key = headers.get("sec-websocket-key") ?? "";
    if (!/^[A-Za-z0-9+/]{22}==$/.test(key) || decodeBase64(key).length !== 16) {
      throw new ProtocolError("Sec-WebSocket-Key must be 16 bytes in base64");
    }
    const version = headers.get("sec-websocket-version");
    if (version === null) throw new ProtocolError("Missing Sec-WebSocket-Version header");
    if (version.trim() !== "13") {
      throw new ProtocolError(`Unsupported Sec-WebSocket-Version ${version}; this server speaks 13`, {
        status: 426,
      });
    }
    const origin = headers.get("origin");
    if (!this.#originAllowed(origin)) throw new ProtocolError(`Origin ${origin} is not allowed`, { status: 403 });

    const offered = (headers.get("sec-websocket-protocol") ?? "").split(",").map((p) => p.trim()).filter(Boolean);
    const selected = offered.length > 0 ? this.selectProtocol(offered) : undefined;
    if (selected !== undefined && !offered.includes(selected)) {
      throw new ProtocolError(`Selected subprotocol ${selected} was not offered`, { status: 500 });
    }
    let verdict: boolean | void;
    try {
      verdict = await this.onHandshake(head);
    } catch (error) {
      if (error instanceof WebSocketError) throw error;
      console.error(`[${this.id}] onHandshake failed:`, error);
      throw new ProtocolError("Internal error", { status: 500, cause: error });
    }
    if (verdict === false) throw new ProtocolError("Connection refused", { status: 403 });

    this.protocol = selected ?? "";
    return { response: switchingProtocols(await computeAcceptKey(key), this.protocol), upgraded: true };
  }

  #originAllowed(origin: string | null): boolean {
    const allowed = this.#options.allowedOrigins;
    if (allowed === undefined) return true;
    return typeof allowed === "function" ? allowed(origin) : origin !== null && allowed.includes(origin);
  }

  // --- Reading ---

  // Reads once, into the read buffer or into the payload of the large frame being
  // received; false at EOF.
  async #read(): Promise<boolean> {
    const target = this.#readTarget();
    const count = await this.#conn!.read(target);
    if (count === null) return false;
    this.#didRead(target, count);
    return true;
  }

  // Where the next read goes: the free end of the read buffer, or the rest of the
  // large frame's payload.
  #readTarget(): Uint8Array {
    const large = this.#large;
    if (large) return large.payload.subarray(large.received);
    this.#makeRoom();
    return this.#buffer.subarray(this.#end);
  }

  #didRead(target: Uint8Array, count: number): void {
    if (this.#large) {
      this.#large.received += count;
    } else {
      this.#end += count;
      this.#lastRead = count;
      this.#readFilled = count === target.length;
    }
    this.#lastSeen = Date.now();
  }

  // Moves unparsed bytes to the front of the read buffer, growing it first where it is
  // full: the request head up to maxHeaderSize, frames up to READ_BUFFER_MAX while
  // reads keep filling it.
  #makeRoom(): void {
    const pending = this.#buffer.subarray(this.#start, this.#end);
    let size = this.#buffer.length;
    if (this.#state === "connecting") {
      if (pending.length === size) size = Math.min(size * 2, this.#options.maxHeaderSize);
    } else if (this.#readFilled || pending.length === size) {
      size = Math.min(size * 2, READ_BUFFER_MAX);
    }
    if (this.#start === 0 && size === this.#buffer.length) return;
    const buffer = size === this.#buffer.length ? this.#buffer : new Uint8Array(size);
    buffer.set(pending);
    this.#buffer = buffer;
    this.#start = 0;
    this.#end = pending.length;
  }

  // Handles every complete frame received. A frame too large for the read buffer
  // moves to a payload buffer of its own, which later reads fill.
  #receive(): void {
    try {
      if (this.#large && !this.#receiveLarge(this.#large)) return;
      while (this.#reading) {
        const buffered = this.#buffer.subarray(this.#start, this.#end);
        // A fragment may not take its message over the limit.
        const maxPayload = this.#options.maxPayload - this.#fragmentBytes;
        const header = decodeHeader(buffered, { masked: true, maxPayload });
        if (header === null) break;
        const { headerLength, payloadLength } = header;
        const frameLength = headerLength + payloadLength;
        if (buffered.length < frameLength) {
          if (frameLength > this.#buffer.length) this.#startLarge(header);
          break;
        }
        const payload = buffered.subarray(headerLength, frameLength);
        applyMask(payload, buffered.subarray(headerLength - 4, headerLength));
        this.#start += frameLength;
        this.#handleFrame(header.opcode, header.fin, payload, false);
      }
    } catch (error) {
      if (!(error instanceof WebSocketError)) throw error;
      this.#fail(error);
    }
    if (this.#start === this.#end) {
      this.#start = this.#end = 0;
      // Give back a buffer grown for a burst (or for the request head) once reads are small.
      if (this.#buffer.length > READ_BUFFER_MIN && this.#lastRead * 4 <= this.#buffer.length) {
        this.#buffer = new Uint8Array(READ_BUFFER_MIN);
      }
    }
  }

  // Moves the buffered start of a large frame's payload into a buffer of its own.
  #startLarge(header: FrameHeader): void {
    const payloadStart = this.#start + header.headerLength;
    const maskKey = this.#buffer.slice(payloadStart - 4, payloadStart);
    const arrived = this.#buffer.subarray(payloadStart, this.#end);
    const capacity = payloadCapacity(header.payloadLength, arrived.length, 0);
    // A text frame's payload is garbage once decoded: it can go in the spare buffer.
    const payload = header.opcode === Opcode.Text && header.fin ? takeSpare(capacity) : new Uint8Array(capacity);
    payload.set(arrived);
    applyMask(payload.subarray(0, arrived.length), maskKey);
    const received = arrived.length;
    this.#large = { header, maskKey, payload, received, unmasked: received, reserved: 0 };
    reserve(this.#large);
    this.#start = this.#end = 0;
  }

  // Unmasks what the last read brought of the large frame, and handles the frame once
  // it is whole; false while it is not.
  #receiveLarge(large: LargeFrame): boolean {
    applyMask(large.payload.subarray(large.unmasked, large.received), large.maskKey, large.unmasked);
    large.unmasked = large.received;
    const { header } = large;
    if (large.received === large.payload.length && large.received < header.payloadLength) {
      const grown = new Uint8Array(payloadCapacity(header.payloadLength, large.received, large.payload.length));
      grown.set(large.payload);
      large.payload = grown;
    }
    reserve(large);
    if (large.received < header.payloadLength) return false;
    this.#large = undefined;
    this.#handleFrame(header.opcode, header.fin, large.payload, true);
    if (header.opcode === Opcode.Text && header.fin) giveSpare(large.payload);
    return true;
  }

  // `owned`: the payload is a buffer of its own, not a view into the read buffer.
  #handleFrame(opcode: number, fin: boolean, payload: Uint8Array, owned: boolean): void {
    switch (opcode) {
      case Opcode.Text:
      case Opcode.Binary:
        // RFC 6455 5.4: a new message may not start inside a fragmented one.
        if (this.#messageOpcode !== undefined) {
          throw new ProtocolError("New data frame inside a fragmented message", {
            code: "WS_ERR_EXPECTED_CONTINUATION",
          });
        }
        if (fin) return this.#deliver(opcode, payload, !owned);
        this.#messageOpcode = opcode;
        return this.#addFragment(payload, false);
      case Opcode.Continuation:
        if (this.#messageOpcode === undefined) {
          throw new ProtocolError("Continuation frame without a message to continue", {
            code: "WS_ERR_UNEXPECTED_CONTINUATION",
          });
        }
        return this.#addFragment(payload, fin);
      case Opcode.Close:
        return this.#receiveClose(payload);
      case Opcode.Ping:
        // RFC 6455 5.5.2: answer with a pong carrying the same data, unless closing.
        return this.#sendPong(payload);
        // A pong, solicited or not, only shows the peer is alive (RFC 6455 5.5.3).
    }
  }

  #addFragment(payload: Uint8Array, fin: boolean): void {
    const total = this.#fragmentBytes + payload.length;
    if (total > this.#options.maxPayload) throw tooBig(total, this.#options.maxPayload);
    if (++this.#fragmentCount > this.#options.maxFragments) {
      throw new ProtocolError(`Message has more than ${this.#options.maxFragments} fragments`, {
        closeCode: CloseCode.MessageTooBig,
        code: "WS_ERR_TOO_MANY_FRAGMENTS",
      });
    }
    if (total > this.#fragments.length) {
      const grown = new Uint8Array(Math.min(Math.max(total, this.#fragments.length * 2), this.#options.maxPayload));
      grown.set(this.#fragments.subarray(0, this.#fragmentBytes));
      this.#fragments = grown;
    }
    this.#fragments.set(payload, this.#fragmentBytes);
    this.#fragmentBytes = total;
    if (this.#messageOpcode === Opcode.Text) this.#validateUtf8(payload, fin);
    if (!fin) return;
    const opcode = this.#messageOpcode!;
    const message = this.#fragments.subarray(0, total);
    this.#messageOpcode = undefined;
    this.#fragments = EMPTY;
    this.#fragmentBytes = this.#fragmentCount = 0;
    this.#deliver(opcode, message, false);
  }

  // RFC 6455 8.1: fail fast on invalid UTF-8, even when a character spans fragments.
  // A lenient streaming decoder marks an invalid sequence with U+FFFD; only then does
  // the (much slower) strict one rule on the message so far, and it reads the rest.
  #validateUtf8(payload: Uint8Array, fin: boolean): void {
    const options = { stream: !fin };
    try {
      const validator = this.#utf8Validator ??= new TextDecoder("utf-8", { ignoreBOM: true });
      if (!validator.decode(payload, options).includes("\uFFFD") || validator.fatal) return;
      this.#utf8Validator = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
      this.#utf8Validator.decode(this.#fragments.subarray(0, this.#fragmentBytes), options);
    } catch (cause) {
      throw new ProtocolError("Text message is not valid UTF-8", {
        closeCode: CloseCode.InvalidPayload,
        code: "WS_ERR_INVALID_UTF8",
        cause,
      });
    } finally {
      if (fin) this.#utf8Validator = undefined;
    }
  }

  #deliver(opcode: number, payload: Uint8Array, copy: boolean): void {
    if (this.#state !== "open" && this.#state !== "closing") return;
    // A binary payload is a view into the read buffer, which is reused: copy it.
    const message = opcode === Opcode.Text ? decodeText(payload) : copy ? payload.slice() : payload;
    this.#callback(() => this.onMessage(message));
  }

  // RFC 6455 5.5.1: answer a close with a close echoing its code, then close TCP.
  #receiveClose(payload: Uint8Array): void {
    const { code, reason } = decodeClosePayload(payload);
    this.#reading = false;
    this.#state = "closed";
    this.closeCode = code;
    this.closeReason = reason;
    if (!this.#closeSent) {
      this.#sendClose(code === CloseCode.NoStatusReceived ? new Uint8Array(0) : payload.slice(0, 2));
    }
  }

  // RFC 6455 7.1.7: fail the connection: send a close with the error's code, stop reading.
  #fail(error: WebSocketError): void {
    this.#reading = false;
    if (this.#state === "open" || this.#state === "closing") {
      if (!this.#closeSent) {
        this.closeCode = error.closeCode;
        this.closeReason = error.message;
        this.#sendClose(encodeClosePayload(error.closeCode, truncateUtf8(error.message, 123)));
      }
      this.#state = "closed";
    }
  }

  // Runs a user callback: a throw or rejection closes this connection with 1011.
  #callback(run: () => void | Promise<void>): void {
    const onError = (error: unknown) => {
      console.error(`[${this.id}] callback failed:`, error);
      if (this.#state === "open") this.close(CloseCode.InternalError, "Internal error");
    };
    try {
      const result = run();
      if (result instanceof Promise) result.catch(onError);
    } catch (error) {
      onError(error);
    }
  }

  // Heartbeats: one timer for all connections of the same period, not a timer each
  // (a timer costs a connection about 2 KiB).
  static #heartbeats = new Map<number, { timer: ReturnType<typeof setInterval>; members: Set<Protocol> }>();

  #startHeartbeat(): void {
    const { pingInterval, idleTimeout } = this.#options;
    const period = Math.min(pingInterval || Infinity, idleTimeout || Infinity);
    if (period === Infinity) return;
    this.#lastSeen = Date.now();
    let group = Protocol.#heartbeats.get(period);
    if (group === undefined) {
      const members = new Set<Protocol>();
      const timer = setInterval(() => {
        const now = Date.now();
        for (const member of members) member.#beat(now);
      }, period);
      group = { timer, members };
      Protocol.#heartbeats.set(period, group);
    }
    group.members.add(this);
    this.#heartbeatPeriod = period;
  }

  #stopHeartbeat(): void {
    const group = Protocol.#heartbeats.get(this.#heartbeatPeriod);
    if (!group?.members.delete(this) || group.members.size > 0) return;
    clearInterval(group.timer);
    Protocol.#heartbeats.delete(this.#heartbeatPeriod);
  }

  // Closes a connection silent for idleTimeout with 1001, else pings when one is due.
  #beat(now: number): void {
    if (this.#state !== "open") return;
    const { pingInterval, idleTimeout } = this.#options;
    if (idleTimeout > 0 && now - this.#lastSeen >= idleTimeout) {
      this.close(CloseCode.GoingAway, "Idle timeout");
    } else if (pingInterval > 0 && now - this.#lastPing >= pingInterval - this.#heartbeatPeriod / 2) {
      this.#lastPing = now;
      this.ping();
    }
  }

  // --- Writing ---

  #sendData(frame: Uint8Array | [Uint8Array, Uint8Array]): Promise<boolean> {
    if (this.#state !== "open") return Promise.resolve(false);
    const written = this.#written();
    return this.#enqueueData(frame) ? written : Promise.resolve(false);
  }

  // Queues a data frame within the backpressure limit, applying the policy past it.
  // Queues a data frame (whole, or header and payload) within the backpressure limit,
  // applying the policy past it.
  #enqueueData(frame: Uint8Array | [Uint8Array, Uint8Array]): boolean {
    const length = Array.isArray(frame) ? frame[0].length + frame[1].length : frame.length;
    if (this.#queuedBytes > 0 && this.#queuedBytes + length > this.#options.maxBackpressure) {
      if (this.#options.backpressurePolicy === "close") {
        this.close(CloseCode.PolicyViolation, "Send queue over its limit");
      }
      return false;
    }
    if (Array.isArray(frame)) {
      this.#enqueue(frame[0]);
      this.#enqueue(frame[1]);
    } else {
      this.#enqueue(frame);
    }
    return true;
  }

  // RFC 6455 5.5.3: only the most recent ping needs its pong, so a pong still queued is
  // replaced: a peer that pings without reading cannot grow the queue.
  #sendPong(payload: Uint8Array): void {
    if (this.#closeSent || this.#connClosed) return;
    const pong = encodeFrame(Opcode.Pong, payload, pooled);
    if (this.#queuedPong < 0) {
      this.#queuedPong = this.#queue.length;
      return this.#enqueue(pong);
    }
    this.#queuedBytes += pong.length - this.#queue[this.#queuedPong].length;
    this.#queue[this.#queuedPong] = pong;
  }

  #sendClose(payload: Uint8Array): void {
    this.#enqueue(encodeFrame(Opcode.Close, payload, pooled));
    this.#closeSent = true;
  }

  #enqueue(frame: Uint8Array): void {
    if (this.#closeSent || this.#connClosed) return;
    this.#queue.push(frame);
    this.#queuedBytes += frame.length;
    this.#flushing ??= this.#flush();
  }

  // A promise for the batch the last queued frame will be written in.
  #written(): Promise<boolean> {
    this.#batchWritten ??= Promise.withResolvers<boolean>();
    return this.#batchWritten.promise;
  }

  // Writes queued frames: all that are queued at once, in one write where small.
  async #flush(): Promise<void> {
    // Write once the current task is done: frames sent together go in one write.
    await undefined;
    let written = true;
    while (this.#queue.length > 0 && written) {
      const batch = this.#queue;
      const batchWritten = this.#batchWritten;
      this.#queue = [];
      this.#queuedPong = -1;
      this.#batchWritten = undefined;
      let bytes = 0;
      for (const frame of batch) bytes += frame.length;
      try {
        if (batch.length > 1) {
          await this.#writeBatch(batch);
        } else {
          // #writeAll, inline: one promise less a write.
          const frame = batch[0];
          let offset = await this.#conn!.write(frame);
          while (offset < frame.length) offset += await this.#conn!.write(frame.subarray(offset));
        }
      } catch {
        written = false;
        this.#abort();
      }
      this.#queuedBytes -= bytes;
      batchWritten?.resolve(written);
    }
    this.#batchWritten?.resolve(false);
    this.#flushing = undefined;
    // Idle: the write buffer goes back to the pool, not kept by an idle connection.
    if (this.#coalesced !== undefined && spareWriteBuffers.length < SPARE_WRITE_BUFFERS) {
      spareWriteBuffers.push(this.#coalesced);
    }
    this.#coalesced = undefined;
  }

  // One write for each run of small frames in a batch, copied together: into a slab
  // for a run of up to 4 KiB, else into a buffer kept while the connection is busy. A
  // frame of COALESCE_LIMIT or more is written as it is.
  async #writeBatch(frames: Uint8Array[]): Promise<void> {
    for (let start = 0, end = 0; start < frames.length; start = end) {
      let length = frames[start].length;
      for (end = start + 1; end < frames.length && length + frames[end].length <= COALESCE_LIMIT; end++) {
        length += frames[end].length;
      }
      if (end - start === 1) {
        await this.#writeAll(frames[start]);
        continue;
      }
      if (length > SLAB_CUT_LIMIT) this.#coalesced ??= spareWriteBuffers.pop() ?? new Uint8Array(COALESCE_LIMIT);
      const run = length > SLAB_CUT_LIMIT ? this.#coalesced!.subarray(0, length) : allocate(length);
      for (let i = start, offset = 0; i < end; offset += frames[i++].length) run.set(frames[i], offset);
      await this.#writeAll(run);
    }
  }

  // Deno.Conn.write may write fewer bytes than given.
  async #writeAll(bytes: Uint8Array): Promise<void> {
    for (let offset = 0; offset < bytes.length;) offset += await this.#conn!.write(bytes.subarray(offset));
  }

  // --- Closing ---

  // Flushes what is queued, half-closes, drains the peer until EOF, then closes; all within closeTimeout.
  async #finish(): Promise<void> {
    this.#stopHeartbeat();
    clearTimeout(this.#closeTimer);
    this.#reading = false;
    this.#state = "closed";
    if (this.#large) {
      this.#large.payload = this.#large.payload.subarray(0, this.#large.received);
      reserve(this.#large); // gives its room back
      this.#large = undefined;
    }
    if (this.#connClosed) return;
    const linger = setTimeout(() => this.#abort(), this.#options.closeTimeout);
    try {
      await this.#flushing;
      // RFC 6455 7.1.1: the server closes TCP first. Half-close, then wait for the
      // peer's FIN, so unread bytes do not turn our close into a reset.
      if (!this.#connClosed) {
        await this.#conn!.closeWrite();
        this.#start = this.#end = 0;
        while (!this.#connClosed && (await this.#conn!.read(this.#buffer)) !== null);
      }
    } catch {
      // The peer reset or the linger timer fired: nothing more to do.
    } finally {
      clearTimeout(linger);
      this.#abort();
    }
  }

  // Closes the TCP connection now; pending reads and writes fail.
  #abort(): void {
    if (this.#connClosed) return;
    this.#connClosed = true;
    this.#state = "closed";
    try {
      this.#conn?.close();
    } catch {
      // Already closed.
    }
  }
}

type ResolvedOptions = Required<Omit<ProtocolOptions, "allowedOrigins">> & Pick<ProtocolOptions, "allowedOrigins">;

function resolveOptions(options: ProtocolOptions): ResolvedOptions {
  const given = Object.entries(options).filter(([, value]) => value !== undefined);
  return { ...DEFAULTS, ...Object.fromEntries(given) };
}

// A frame whose payload is read into a buffer of its own, and how much has arrived.
interface LargeFrame {
  header: FrameHeader;
  maskKey: Uint8Array;
  /** The payload's buffer: its declared length, or less while it grows with arrivals. */
  payload: Uint8Array;
  received: number;
  unmasked: number;
  /** Bytes of RESERVE_LIMIT this frame holds: room in `payload` not filled yet. */
  reserved: number;
}

// The size for a payload buffer of `length` bytes when `received` have arrived and the
// buffer holds `current`: all of it if the reserve allows, else twice as much as now
// (and always room for more).
function payloadCapacity(length: number, received: number, current: number): number {
  if (reserved + length - received <= RESERVE_LIMIT) return length;
  return Math.min(length, Math.max(2 * current, received + READ_BUFFER_MAX));
}

// One buffer kept for the payloads of large text frames, which are garbage once
// decoded: a fresh buffer costs a page fault every 4 KiB as it is first written.
const SPARE_LIMIT = 4 * 1024 * 1024;
let spare: Uint8Array | undefined;

function takeSpare(size: number): Uint8Array {
  if (spare === undefined || spare.length < size) return new Uint8Array(size);
  const buffer = spare.subarray(0, size);
  spare = undefined;
  return buffer;
}

function giveSpare(buffer: Uint8Array): void {
  const whole = new Uint8Array(buffer.buffer);
  if (whole.length <= SPARE_LIMIT && whole.length > (spare?.length ?? 0)) spare = whole;
}

// Updates the reserve for the room left in a large frame's buffer.
function reserve(large: LargeFrame): void {
  const room = large.payload.length - large.received;
  reserved += room - large.reserved;
  large.reserved = room;
}

function headTooLarge(limit: number): ProtocolError {
  return new ProtocolError(`Request head exceeds ${limit} bytes`, { status: 431, code: "WS_ERR_HEAD_TOO_LARGE" });
}

function tooBig(size: number, limit: number): ProtocolError {
  return new ProtocolError(`Message of ${size} bytes exceeds the limit of ${limit}`, {
    closeCode: CloseCode.MessageTooBig,
    code: "WS_ERR_PAYLOAD_TOO_BIG",
  });
}

// A data frame to queue: a small one is cut from a slab, a long text is encoded into a
// frame of its own, and a large binary payload stays where it is, queued after its
// header (the writer joins the two below 64 KiB, and writes larger ones as they are).
function encodeMessage(msg: string | Uint8Array): Uint8Array | [Uint8Array, Uint8Array] {
  if (typeof msg === "string") return encodeFrame(Opcode.Text, msg, msg.length < LARGE_PAYLOAD ? pooled : undefined);
  if (msg.length < LARGE_PAYLOAD) return encodeFrame(Opcode.Binary, msg, pooled);
  return [encodeHeader(Opcode.Binary, msg.length, pooled), msg];
}

function allocate(length: number): Uint8Array {
  if (length > SLAB_CUT_LIMIT) return new Uint8Array(length);
  if (slabOffset + length > slab.length) {
    slab = new Uint8Array(SLAB_SIZE);
    slabOffset = 0;
  }
  return slab.subarray(slabOffset, slabOffset += length);
}

function truncateUtf8(text: string, maxBytes: number): string {
  const bytes = encoder.encode(text);
  return bytes.length <= maxBytes ? text : new TextDecoder().decode(bytes.subarray(0, maxBytes)).replace(/\uFFFD$/, "");
}

function isConnectionError(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource || error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.BrokenPipe || error instanceof Deno.errors.Interrupted ||
    error instanceof Deno.errors.ConnectionAborted || error instanceof Deno.errors.UnexpectedEof;
}
