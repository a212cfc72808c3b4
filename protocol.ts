/**
 * The server side of a WebSocket connection (RFC 6455): one {@linkcode Protocol} per
 * connection drives a `Deno.Conn` (TCP or TLS) through the opening handshake, frame
 * dispatch and the closing handshake, and calls back into your subclass.
 *
 * @example An echo server, and a client of it
 * ```ts
 * import { Protocol } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * class Echo extends Protocol {
 *   override onMessage(msg: string | Uint8Array) {
 *     this.sendMessage(msg);
 *   }
 * }
 * const users = new Map<string, Protocol>();
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 }); // port 9999 in real life
 * const serving = (async () => {
 *   for await (const conn of listener) await new Echo(users).serve(conn);
 * })();
 *
 * const echoed = Promise.withResolvers<string | Uint8Array>();
 * const timeout = AbortSignal.timeout(5000);
 * timeout.onabort = () => echoed.reject(timeout.reason);
 * class Client extends Protocol {
 *   override onMessage(msg: string | Uint8Array) {
 *     echoed.resolve(msg);
 *     this.close();
 *   }
 * }
 * const client = await Client.connect(`ws://127.0.0.1:${listener.addr.port}/`);
 * await client.sendMessage("hello");
 * assertEquals(await echoed.promise, "hello");
 * listener.close();
 * await serving.catch(() => {}); // the listener's loop ends once the connection has
 * assertEquals(client.closeCode, 1000);
 * ```
 *
 * @module
 */

import {
  acceptKey,
  computeAcceptKey,
  type HandshakeRequest,
  type HttpResponse,
  parseRequestHead,
  requestHead,
} from "./_http.ts";
import { setImmediate } from "node:timers";
import { Core, resolveOptions } from "./_core.ts";
import type { CompressionMode, CompressionOptions } from "./_deflate.ts";
import type { DataFrame } from "./_outbox.ts";
import { ProtocolError, WebSocketError } from "./errors.ts";
import { CloseCode } from "./frame.ts";
import { existingRegistry, type PublishOptions, registryOf, type TopicRegistry } from "./_topics.ts";

export {
  type CompressionMode,
  type CompressionOptions,
  computeAcceptKey,
  type HandshakeRequest,
  type HttpResponse,
  type PublishOptions,
};

/**
 * Limits and timers of a connection; every one has a safe default.
 *
 * @example
 * ```ts
 * import { Protocol, type ProtocolOptions } from "./protocol.ts";
 *
 * import { assertEquals } from "@std/assert";
 *
 * const options: ProtocolOptions = { maxPayload: 64 * 1024, allowedOrigins: ["https://example.com"] };
 * const handler = new Protocol(new Map(), options);
 * assertEquals(handler.state, "connecting");
 * ```
 */
export interface ProtocolOptions {
  /** Largest message, in bytes, whole or summed over its fragments (default 16 MiB); over it: 1009. */
  maxPayload?: number;
  /**
   * Most frames in one message (default 1,048,576); over it: 1009. Fragments cost no
   * memory beyond their bytes, so this only bounds the work a message of empty
   * fragments can cause; see the README's limits.
   */
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
  /**
   * permessage-deflate (RFC 7692): a server accepts it when a client offers it, a
   * client ({@linkcode Protocol.connect}) offers it. `false` (the default) turns it
   * off, `true` turns it on with the defaults of {@linkcode CompressionOptions} (no
   * context takeover, messages from 256 bytes, level 6). Compressed messages count
   * against `maxPayload` once inflated.
   */
  compression?: boolean | CompressionOptions;
}

/**
 * Options of {@linkcode Protocol.connect}, the client side: what to ask the server
 * for, whom to trust, and every {@linkcode ProtocolOptions} limit (`maxHeaderSize`
 * bounds the server's answer, `handshakeTimeout` the whole connect).
 *
 * @example
 * ```ts
 * import type { ClientOptions } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const options: ClientOptions = { protocols: ["chat"], headers: { Authorization: "Bearer token" } };
 * assertEquals(options.protocols, ["chat"]);
 * ```
 */
export interface ClientOptions extends ProtocolOptions {
  /** Subprotocols to offer, in order of preference (default none). */
  protocols?: readonly string[];
  /** Extra request headers, such as `Origin` or `Authorization` (default none). */
  headers?: Readonly<Record<string, string>>;
  /** PEM certificates to trust for wss:// besides the system's, e.g. a self-signed one (default none). */
  caCerts?: string[];
  /** The map of connected users the connection joins (default a new one). */
  users?: Map<string, Protocol>;
}

/**
 * The connection's state, as `WebSocket.readyState` but named.
 *
 * @example
 * ```ts
 * import { Protocol } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(new Protocol().state, "connecting");
 * ```
 */
export type ConnectionState = "connecting" | "open" | "closing" | "closed";

/**
 * The part of `Deno.Conn` a {@linkcode Protocol} uses; `Deno.TcpConn` and
 * `Deno.TlsConn` both fit, and so does an in-memory stand-in for tests.
 *
 * @example
 * ```ts
 * import type { Connection } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const conn: Connection = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * const accepted = await listener.accept();
 * assertEquals(await conn.write(new Uint8Array([1, 2])), 2);
 * conn.close();
 * accepted.close();
 * listener.close();
 * ```
 */
export type Connection = Pick<Deno.Conn, "read" | "write" | "close" | "closeWrite">;

/**
 * One WebSocket connection, server side. Subclass it and override the callbacks;
 * build one per connection with the shared `users` map, then `serve(conn)`.
 *
 * @example A broadcast handler in the TwistedWebsocket style
 * ```ts
 * import { Protocol } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const origins: string[] = [];
 * class Handler extends Protocol {
 *   override onHandshake(header: string) {
 *     origins.push(/^Origin\s*:\s*(\S+)/im.exec(header)?.[1] ?? "(none)");
 *   }
 *   override onMessage(msg: string | Uint8Array) {
 *     Protocol.broadcast(this.users.values(), msg);
 *   }
 * }
 * const users = new Map<string, Protocol>();
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 }); // port 9999 in real life
 * const served: Promise<void>[] = [];
 * const accepting = (async () => {
 *   for await (const conn of listener) served.push(new Handler(users).serve(conn));
 * })();
 *
 * // Two clients; what one sends, both get.
 * const url = `ws://127.0.0.1:${listener.addr.port}/`;
 * const received: (string | Uint8Array)[] = [];
 * const both = Promise.withResolvers<void>();
 * AbortSignal.timeout(5000).onabort = () => both.reject(new Error("timed out"));
 * class Client extends Protocol {
 *   override onMessage(msg: string | Uint8Array) {
 *     if (received.push(msg) === 2) both.resolve();
 *   }
 * }
 * const alice = await Client.connect(url, { headers: { Origin: "http://example.com" } });
 * const bob = await Client.connect(url);
 * while (users.size < 2) await new Promise((resolve) => setTimeout(resolve, 1));
 * await alice.sendMessage("hi all");
 * await both.promise;
 * assertEquals(received, ["hi all", "hi all"]);
 * assertEquals(origins, ["http://example.com", "(none)"]);
 * alice.close();
 * bob.close();
 * listener.close();
 * await accepting;
 * await Promise.all(served);
 * ```
 */
export class Protocol {
  /** This connection's id, a UUID v4. */
  readonly id: string = crypto.randomUUID();
  /** Every connected user by id, shared by all connections; holds this one while it is open. */
  readonly users: Map<string, Protocol>;
  /** The subprotocol agreed on in the handshake, or `""`. */
  protocol = "";

  // The rules live in the core; this shell reads, writes, keeps timers and runs callbacks.
  #core: Core;
  #conn: Connection | undefined;
  #connClosed = false;
  // The writer: whether it runs, the piece it writes and how much of it is written, and
  // what #finish waits on for it to end.
  #writing = false;
  #piece: Uint8Array = EMPTY;
  #pieceWritten = 0;
  #drained: PromiseWithResolvers<void> | undefined;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  // The request head as received; parsed again if asked for after the handshake,
  // which idle connections do not pay for.
  #head = "";
  #request: HandshakeRequest | undefined;
  // Promises of sendMessage: each resolves once the outbox has written `frames` frames.
  // Sends between two writes share one.
  #waiters: Waiter[] = [];

  /**
   * Makes a connection handler.
   *
   * @param users The map of connected users, shared by all connections.
   * @param options Limits and timers.
   */
  constructor(users: Map<string, Protocol> = new Map(), options: ProtocolOptions = {}) {
    this.users = users;
    this.#core = new Core(resolveOptions(options));
  }

  /** The opening handshake request, once it has been parsed. */
  get request(): HandshakeRequest | undefined {
    if (this.#request === undefined && this.#head !== "") this.#request = parseRequestHead(this.#head, Infinity);
    return this.#request;
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this.#core.state;
  }

  /** The closing handshake's code: the peer's, else the one sent, else 1006 (abnormal). */
  get closeCode(): number {
    return this.#core.closeCode;
  }

  /** The closing handshake's reason. */
  get closeReason(): string {
    return this.#core.closeReason;
  }

  /** Bytes queued for sending and not yet written to the socket. */
  get bufferedAmount(): number {
    return this.#core.outbox.bufferedAmount;
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
   * Answers an HTTP request that carries none of the WebSocket handshake's headers.
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
   * never interleave. Bytes of 4 KiB and more are kept by reference until written (over
   * 64 KiB, written from your buffer without a copy, as `ws` does): leave them unchanged
   * until the returned promise settles.
   *
   * @example
   * ```ts ignore
   * // A line of a handler's method (`this` is the connection); the module's example runs sendMessage.
   * const written = await this.sendMessage("hello"); // false if the connection is closed
   * ```
   *
   * @param msg The message.
   * @returns A promise of `true` once the bytes are written, `false` if the
   *   connection is closed or the message was dropped by the backpressure policy.
   */
  sendMessage(msg: string | Uint8Array): Promise<boolean> {
    if (this.#core.state !== "open") return Promise.resolve(false);
    const queued = this.#core.send(this.#core.encode(msg));
    const written = queued ? this.#waiter() : Promise.resolve(false);
    this.#sync();
    return written;
  }

  /**
   * Sends a ping (RFC 6455 5.5.2); the peer answers with a pong.
   *
   * @param data Up to 125 bytes of application data.
   * @returns A promise of `true` once written, `false` if the connection is not open.
   */
  ping(data: Uint8Array = new Uint8Array(0)): Promise<boolean> {
    if (!this.#core.ping(data)) return Promise.resolve(false);
    const written = this.#waiter();
    this.#sync();
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
    const connecting = this.#core.state === "connecting";
    this.#core.close(code, reason);
    if (connecting) this.#abort();
    this.#sync();
  }

  /**
   * Sends one message to many connections, encoding its frame once: every recipient
   * queues the very same bytes (client-side connections mask a copy of their own).
   * With compression, once for each distinct set of negotiated parameters, as long as
   * the server keeps no window (no context takeover); with a window, each recipient
   * compresses its own copy. Topics publish through it. Recipients that are not open
   * are skipped.
   *
   * @example
   * ```ts ignore
   * // A line of a handler's onConnect (`this` is the connection); the class example runs broadcast.
   * Protocol.broadcast(this.users.values(), `${this.id} connected`);
   * ```
   *
   * @param recipients The connections to send to.
   * @param msg The message.
   * @returns How many recipients queued the message.
   */
  static broadcast(recipients: Iterable<Protocol>, msg: string | Uint8Array): number {
    // The frame of the uncompressed ("" key), most recipients, kept aside: no map for them.
    let plain: DataFrame | undefined;
    let frames: Map<string, DataFrame> | undefined;
    let count = 0;
    for (const recipient of recipients) {
      const core = recipient.#core;
      if (core.state !== "open") continue;
      const key = core.shareKey(msg);
      let frame = key === "" ? plain : key === undefined ? undefined : frames?.get(key);
      if (frame === undefined) {
        frame = core.encode(msg);
        if (key === "") plain = frame;
        else if (key !== undefined) (frames ??= new Map()).set(key, frame);
      }
      if (core.send(frame)) count++;
      recipient.#sync();
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

  // An ended connection leaves all its topics.
  #leaveTopics(): void {
    existingRegistry<Protocol>(this.users)?.leaveAll(this);
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
    const core = this.#core;
    const deadlines = Protocol.#deadlinesFor(core.options.handshakeTimeout);
    deadlines.add(this);
    try {
      while (core.state === "connecting") {
        if (!core.reading) await this.#answer();
        else if (!(await this.#read())) break;
      }
    } catch (error) {
      if (!isConnectionError(error)) console.error(`[${this.id}] unexpected error:`, error);
    } finally {
      deadlines.remove(this);
    }
    if (core.state === "open") return this.#run();
    await this.#finish();
    this.#leaveTopics(); // subscribed before the handshake failed, perhaps
  }

  /**
   * Connects to a WebSocket server as a client (RFC 6455 4.1) and resolves once the
   * opening handshake is done and `onConnect` has run; the connection then runs on
   * its own, as one from `serve` does. Rejects with a {@linkcode ProtocolError} when
   * the handshake fails (its `status` is the server's answer: 403, or 101 with a
   * wrong accept key), or with the network's error; redirects are not followed.
   * Every frame is masked with a fresh random key; a masked frame from the server
   * fails the connection with 1002. A server that closes right after the handshake
   * gives a connection that is already closing or closed when this resolves (as in
   * browsers). Failures without an answer have the codes `WS_ERR_HANDSHAKE_TIMEOUT` and
   * `WS_ERR_HANDSHAKE_CLOSED`; their `status` (400) is not the server's.
   *
   * @example
   * ```ts ignore
   * // Needs a server on localhost:9999; the module's example connects to one of its own.
   * import { Protocol } from "./protocol.ts";
   *
   * class Printer extends Protocol {
   *   override onMessage(msg: string | Uint8Array) {
   *     console.log(msg);
   *   }
   * }
   * const client = await Printer.connect("ws://localhost:9999/");
   * await client.sendMessage("hello");
   * client.close();
   * ```
   *
   * @param url A `ws://` or `wss://` URL.
   * @param options What to offer and send, whom to trust, and the limits.
   * @returns The connected instance.
   */
  static async connect<T extends Protocol>(
    this: new (users: Map<string, Protocol>, options: ProtocolOptions) => T,
    url: string | URL,
    options: ClientOptions = {},
  ): Promise<T> {
    const target = new URL(url);
    if (target.protocol !== "ws:" && target.protocol !== "wss:") {
      throw new TypeError(`URL scheme must be ws: or wss:, got ${target.protocol}`);
    }
    if (target.hash !== "") throw new TypeError("A WebSocket URL has no fragment (RFC 6455 3)");
    const handler = new this(options.users ?? new Map(), options);
    await handler.#connect(target, options);
    return handler;
  }

  async #connect(url: URL, options: ClientOptions): Promise<void> {
    const core = this.#core = new Core(resolveOptions(options), "client");
    const protocols = options.protocols ?? [];
    const key = crypto.getRandomValues(new Uint8Array(16)).toBase64();
    const extensions = core.extensionOffer();
    const head = requestHead({ url, key, protocols, headers: options.headers ?? {}, extensions });
    const accept = acceptKey(key);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      this.#abort();
    }, core.options.handshakeTimeout);
    try {
      const hostname = url.hostname.replace(/^\[|\]$/g, "");
      const port = Number(url.port || (url.protocol === "wss:" ? 443 : 80));
      const connecting = url.protocol === "wss:"
        ? Deno.connectTls({ hostname, port, caCerts: options.caCerts })
        : Deno.connect({ hostname, port });
      this.#conn = await connecting;
      if (timedOut) this.#conn.close();
      (this.#conn as Partial<Deno.TcpConn>).setNoDelay?.(true);
      core.connect(head, { accept, protocols, extensions: extensions !== undefined });
      this.#sync();
      while (core.state === "connecting" && (await this.#read()));
    } catch (error) {
      this.#abort();
      if (!timedOut) throw error;
    } finally {
      clearTimeout(timer);
    }
    // Frames that came with the answer may have closed it already: #run echoes their
    // close (or sends the failure's) and waits for the server's FIN (RFC 6455 7.1.1).
    if (!core.opened) {
      this.#abort();
      if (timedOut) {
        throw new ProtocolError(`No handshake answer within ${core.options.handshakeTimeout} ms`, {
          code: "WS_ERR_HANDSHAKE_TIMEOUT",
        });
      }
      throw core.handshakeError ??
        new ProtocolError("Connection closed before the handshake answer", { code: "WS_ERR_HANDSHAKE_CLOSED" });
    }
    this.protocol = core.protocol;
    this.#run();
  }

  // An open connection, until it ends: callbacks, reading, the close.
  async #run(): Promise<void> {
    const core = this.#core;
    this.users.set(this.id, this);
    this.#startHeartbeat();
    this.#callback(() => this.onConnect());
    this.#dispatch(); // frames that came with the handshake
    try {
      // #read inlined (one promise and one async function less for every read), but the
      // next read still starts after the writer: reading first split echoes into more,
      // smaller writes and reads (32 conn x 1 KiB x 4: 0.25 -> 0.57 sendto a message).
      while (core.reading) {
        const count = await this.#conn!.read(core.readTarget());
        if (count === null) {
          core.receiveEnd();
          break;
        }
        core.receive(count, Date.now());
        this.#dispatch();
        await undefined;
      }
    } catch (error) {
      if (!isConnectionError(error)) console.error(`[${this.id}] unexpected error:`, error);
    } finally {
      await this.#finish();
      this.#leaveTopics();
      this.users.delete(this.id);
      this.#callback(() => this.onDisconnect());
    }
  }

  // Reads once into the core; false at EOF.
  async #read(): Promise<boolean> {
    const core = this.#core;
    const target = core.readTarget();
    const count = await this.#conn!.read(target);
    if (count === null) {
      core.receiveEnd();
      return false;
    }
    core.receive(count, Date.now());
    if (core.state !== "connecting") this.#dispatch();
    return true;
  }

  // Answers the handshake request the core holds: the user's callbacks decide (RFC 6455 4.2.2).
  async #answer(): Promise<void> {
    const core = this.#core;
    const event = core.takeEvents()[0];
    try {
      if (event?.type === "http") {
        this.#head = event.head;
        const response = this.onHttpRequest(event.request);
        if (response) return core.respond(response);
        throw new ProtocolError("Not a WebSocket handshake: Upgrade: websocket is missing");
      }
      if (event?.type !== "upgrade") throw new Error(`Handshake event expected, got ${event?.type}`);
      this.#head = event.head;
      this.#request = event.request;
      const selected = event.offered.length > 0 ? this.selectProtocol(event.offered) : undefined;
      if (selected !== undefined && !event.offered.includes(selected)) {
        throw new ProtocolError(`Selected subprotocol ${selected} was not offered`, { status: 500 });
      }
      if ((await this.onHandshake(event.head)) === false) {
        throw new ProtocolError("Connection refused", { status: 403 });
      }
      // The handshake timeout or close() may have dropped the connection while we awaited.
      if (core.state !== "connecting") return;
      core.accept(acceptKey(event.key), selected ?? "", Date.now());
      this.protocol = core.protocol;
      this.#request = undefined;
    } catch (error) {
      if (!(error instanceof WebSocketError)) console.error(`[${this.id}] handshake callback failed:`, error);
      core.reject(error instanceof WebSocketError ? error : new ProtocolError("Internal error", { status: 500 }));
    } finally {
      this.#sync();
    }
  }

  // Runs the callbacks for what the core received, then writes what it queued.
  #dispatch(): void {
    const core = this.#core;
    for (let events = core.takeEvents(); events.length > 0; events = core.takeEvents()) {
      for (const event of events) {
        if (event.type === "message") this.#message(event.data);
        else if (event.type === "error") console.error(`[${this.id}] unexpected error, closed with 1011:`, event.error);
      }
    }
    this.#sync();
  }

  // Runs a user callback: a throw or rejection closes this connection with 1011.
  #callback(run: () => void | Promise<void>): void {
    try {
      const result = run();
      if (result instanceof Promise) result.catch((error) => this.#callbackFailed(error));
    } catch (error) {
      this.#callbackFailed(error);
    }
  }

  // onMessage as #callback runs it, without two closures for every message.
  #message(data: string | Uint8Array): void {
    try {
      const result = this.onMessage(data);
      if (result instanceof Promise) result.catch((error) => this.#callbackFailed(error));
    } catch (error) {
      this.#callbackFailed(error);
    }
  }

  #callbackFailed(error: unknown): void {
    console.error(`[${this.id}] callback failed:`, error);
    if (this.#core.state === "open") this.close(CloseCode.InternalError, "Internal error");
  }

  // --- Handshake deadlines: one timer for all connections with the same timeout, not one
  // each (a setTimeout and its clearTimeout cost 5-7 µs, 3% of a handshake's server CPU).

  static #deadlines = new Map<number, Deadlines>();

  static #deadlinesFor(timeout: number): Deadlines {
    let deadlines = Protocol.#deadlines.get(timeout);
    if (deadlines === undefined) {
      deadlines = new Deadlines(timeout, (handler) => handler.#abort());
      Protocol.#deadlines.set(timeout, deadlines);
    }
    return deadlines;
  }

  // --- Heartbeats: one timer for all connections of the same period, not a timer each
  // (a timer costs a connection about 2 KiB); the core decides at each tick.

  static #heartbeats = new Map<number, { timer: ReturnType<typeof setInterval>; members: Set<Protocol> }>();

  #startHeartbeat(): void {
    const period = this.#core.heartbeatPeriod;
    if (period === Infinity) return;
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
  }

  #stopHeartbeat(): void {
    const period = this.#core.heartbeatPeriod;
    const group = Protocol.#heartbeats.get(period);
    if (!group?.members.delete(this) || group.members.size > 0) return;
    clearInterval(group.timer);
    Protocol.#heartbeats.delete(period);
  }

  #beat(now: number): void {
    const decision = this.#core.tick(now);
    if (decision === "idle") this.close(CloseCode.GoingAway, "Idle timeout");
    else if (decision === "ping") this.ping();
  }

  // --- Writing ---

  // A promise for the frames queued so far.
  #waiter(): Promise<boolean> {
    const frames = this.#core.outbox.queuedFrames;
    const last = this.#waiters.at(-1);
    if (last !== undefined && !last.sealed) {
      last.frames = frames;
      return last.done.promise;
    }
    const waiter = { frames, sealed: false, done: Promise.withResolvers<boolean>() };
    this.#waiters.push(waiter);
    return waiter.done.promise;
  }

  // Resolves the promises of frames written; once the connection is gone, all of them.
  #settle(gone: boolean): void {
    const written = this.#core.outbox.writtenFrames;
    while (this.#waiters.length > 0 && (gone || this.#waiters[0].frames <= written)) {
      const waiter = this.#waiters.shift()!;
      waiter.done.resolve(waiter.frames <= written);
    }
  }

  // Starts the writer when there is something to write, and the close timer when closing.
  #sync(): void {
    if (this.#core.state === "closing" && this.#closeTimer === undefined) {
      this.#closeTimer = setTimeout(() => this.#abort(), this.#core.options.closeTimeout);
    }
    if (!this.#writing && this.#conn !== undefined && this.#core.outbox.pending) {
      this.#writing = true;
      // The first one waiting starts them; with others waiting, a microtask or an immediate will.
      if (Protocol.#toWrite.push(this) - 1 === Protocol.#toWriteNext) queueMicrotask(Protocol.#startWriters);
    }
  }

  // Writers start once the current task is done, so that frames sent together go in one
  // write; all of them in one microtask, so that a broadcast to N connections does not
  // cost N suspended async functions (at 5,000 receivers they outlived young-generation
  // collections: 18% of the server's time in GC against 10% at 1,000).
  //
  // At most WRITERS_A_TURN of them start in one turn of the event loop, the rest in the
  // next turns (setImmediate), in the order they came. Past about 128 writes in one turn
  // (tokio's budget of I/O operations a task poll, under Deno's ops), each write costs about
  // twice as much: 32 B to each of 5,000 sockets took 12-19 µs a write in one turn, 6.5-9.7
  // µs in turns of 64-128; fan-out to 5,000 went from 2.04 to 1.34 µs of CPU a delivery.
  static #toWrite: Protocol[] = [];
  static #toWriteNext = 0; // the first of #toWrite not started
  static #startWriters(): void {
    const writers = Protocol.#toWrite;
    const end = Math.min(writers.length, Protocol.#toWriteNext + WRITERS_A_TURN);
    try {
      while (Protocol.#toWriteNext < end) writers[Protocol.#toWriteNext++].#writeNext();
    } finally { // even if a writer threw, the others still start
      if (Protocol.#toWriteNext < writers.length) {
        if (Protocol.#toWriteNext * 2 >= writers.length) { // drop those started once they are half the queue
          Protocol.#toWrite = writers.slice(Protocol.#toWriteNext);
          Protocol.#toWriteNext = 0;
        }
        setImmediate(Protocol.#startWriters);
      } else {
        Protocol.#toWrite = [];
        Protocol.#toWriteNext = 0;
      }
    }
  }

  // Writes the next piece the outbox hands out, whole (Deno.Conn.write may write fewer
  // bytes than given), then the next, until none is left; callbacks, not an async
  // function, so that each write costs the op's promise and no more.
  #writeNext(): void {
    const bytes = this.#connClosed ? undefined : this.#core.outbox.next();
    if (bytes === undefined) return this.#writerDone();
    // Frames sent from now on are not in these bytes: they get a promise of their own.
    const last = this.#waiters.at(-1);
    if (last !== undefined) last.sealed = true;
    this.#piece = bytes;
    this.#pieceWritten = 0;
    this.#writePiece();
  }

  #writePiece(): void {
    try {
      const bytes = this.#pieceWritten === 0 ? this.#piece : this.#piece.subarray(this.#pieceWritten);
      this.#conn!.write(bytes).then(this.#onWritten, this.#onWriteFailed);
    } catch {
      this.#onWriteFailed();
    }
  }

  readonly #onWritten = (count: number): void => {
    this.#pieceWritten += count;
    if (this.#pieceWritten < this.#piece.length) return this.#writePiece();
    this.#core.outbox.written(this.#piece.length);
    this.#piece = EMPTY;
    this.#settle(false);
    this.#writeNext();
  };

  readonly #onWriteFailed = (): void => {
    this.#abort();
    this.#writerDone();
  };

  #writerDone(): void {
    this.#writing = false;
    this.#piece = EMPTY;
    if (this.#connClosed) this.#settle(true);
    this.#drained?.resolve();
    this.#drained = undefined;
  }

  // --- Closing ---

  // Writes what is queued, half-closes, drains the peer until EOF, then closes; all within closeTimeout.
  async #finish(): Promise<void> {
    this.#stopHeartbeat();
    clearTimeout(this.#closeTimer);
    this.#core.release();
    if (this.#connClosed) return;
    const linger = setTimeout(() => this.#abort(), this.#core.options.closeTimeout);
    try {
      this.#sync();
      while (this.#writing) await (this.#drained ??= Promise.withResolvers()).promise;
      // RFC 6455 7.1.1: the server closes TCP first. Half-close, then wait for the
      // peer's FIN, so unread bytes do not turn our close into a reset. A client waits
      // for the server's FIN.
      if (!this.#connClosed) {
        if (!this.#core.client) await this.#conn!.closeWrite();
        const drain = new Uint8Array(1024);
        while (!this.#connClosed && (await this.#conn!.read(drain)) !== null);
      }
    } catch {
      // The peer reset or the linger timer fired: nothing more to do.
    } finally {
      clearTimeout(linger);
      this.#abort();
    }
  }

  // Closes the TCP connection now; pending reads and writes fail, pending sends resolve false.
  #abort(): void {
    if (this.#connClosed) return;
    this.#connClosed = true;
    this.#core.release();
    this.#core.outbox.discard();
    this.#settle(true);
    try {
      this.#conn?.close();
    } catch {
      // Already closed.
    }
  }
}

// Connections that must finish something within `timeout` ms of joining: they join in
// the order of their deadlines, so the first in the map is always the next one due, and
// one timer, set for it, serves them all.
class Deadlines {
  #members = new Map<Protocol, number>();
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(readonly timeout: number, readonly expire: (handler: Protocol) => void) {}

  add(handler: Protocol): void {
    this.#members.set(handler, Date.now() + this.timeout);
    this.#timer ??= setTimeout(() => this.#fire(), this.timeout);
  }

  remove(handler: Protocol): void {
    // An empty set holds no timer, so that nothing keeps the process (or a test) waiting.
    if (this.#members.delete(handler) && this.#members.size === 0) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  #fire(): void {
    this.#timer = undefined;
    const now = Date.now();
    for (const [handler, deadline] of this.#members) {
      if (deadline > now) {
        this.#timer = setTimeout(() => this.#fire(), deadline - now);
        return;
      }
      this.#members.delete(handler);
      this.expire(handler);
    }
  }
}

const EMPTY = new Uint8Array(0);
const WRITERS_A_TURN = 100;

interface Waiter {
  frames: number;
  sealed: boolean;
  done: PromiseWithResolvers<boolean>;
}

function isConnectionError(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource || error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.BrokenPipe || error instanceof Deno.errors.Interrupted ||
    error instanceof Deno.errors.ConnectionAborted || error instanceof Deno.errors.UnexpectedEof;
}
