/**
 * The built-in broadcast server. Rooms are URL paths: a client of `ws://host:9999/` is in
 * room `/`, one of `ws://host:9999/lobby` in room `/lobby`. Every message goes to every
 * member of its room, the sender included, and connects and disconnects are announced to
 * the room's other members. With a bus (`--redis`, `--workers`), rooms span workers and
 * nodes.
 *
 * ```sh
 * deno run -N server.ts 9999
 * deno run -N --unstable-net server.ts 9999 --workers 2 --redis redis://127.0.0.1:6379 --metrics
 * ```
 *
 * @example Start it from code
 * ```ts
 * import { startServer } from "./server.ts";
 * import { assertNotEquals } from "@std/assert";
 *
 * const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
 * assertNotEquals(server.addr.port, 0); // port 0 picked a free one
 * await server.shutdown();
 * ```
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";
import { attachBus, type Bus } from "./bus.ts";
import { CHAT_PAGE } from "./chat_page.ts";
import { CloseCode } from "./frame.ts";
import { ProtocolError } from "./errors.ts";
import { type HandshakeRequest, type HttpResponse, Protocol, type ProtocolOptions } from "./protocol.ts";
import { type Rooms, ServerMetrics } from "./_metrics.ts";
import { registryOf } from "./_topics.ts";

/**
 * Options of {@linkcode startServer}: where to listen, logging, and every
 * {@linkcode ProtocolOptions} limit. Unlike a bare `Protocol`, the server accepts
 * permessage-deflate unless `compression` is `false`: browsers offer it, and without
 * context takeover it costs an idle connection nothing.
 *
 * @example
 * ```ts
 * import { type ServerOptions, startServer } from "./server.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const options: ServerOptions = { port: 0, hostname: "127.0.0.1", quiet: true, maxConnections: 100 };
 * const server = startServer(options);
 * assertEquals(server.addr.hostname, "127.0.0.1");
 * await server.shutdown();
 * ```
 */
export interface ServerOptions extends ProtocolOptions {
  /** Port to listen on (default 9999; 0 picks a free one). */
  port?: number;
  /** Address to listen on (default `0.0.0.0`). */
  hostname?: string;
  /** PEM certificate chain: serve wss:// (with `key`). */
  cert?: string;
  /** PEM private key of `cert`. */
  key?: string;
  /** Log nothing. */
  quiet?: boolean;
  /** Log every message too. */
  verbose?: boolean;
  /** Where log lines go (default `console.log`). */
  log?: (line: string) => void;
  /** Answer a plain `GET /` with the chat page (default `true`). */
  page?: boolean;
  /** Most connections at once, handshakes included (default unlimited); past it: 503. */
  maxConnections?: number;
  /**
   * The bus that joins this server's rooms to other workers or nodes (`PortBus`,
   * `RedisBus`); default none: rooms are this server's. The server does not close it.
   */
  bus?: Bus;
  /** Answer `GET /metrics` in the Prometheus text format (default `false`: it tells outsiders about the server). */
  metrics?: boolean;
  /** Listen with `SO_REUSEPORT`, sharing the port with other listeners (needs `--unstable-net`). */
  reusePort?: boolean;
  /** In a worker of `--workers`: its index, and the `BroadcastChannel` on which the workers share their metrics. */
  worker?: { index: number; channel: string };
  /** permessage-deflate, as in {@linkcode ProtocolOptions} but on by default (no context takeover). */
  compression?: ProtocolOptions["compression"];
}

/**
 * A running broadcast server, as returned by {@linkcode startServer}.
 *
 * @example
 * ```ts
 * import { type BroadcastServer, startServer } from "./server.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const server: BroadcastServer = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
 * assertEquals(server.users.size, 0);
 * await server.shutdown();
 * ```
 */
export interface BroadcastServer {
  /** The address it listens on. */
  readonly addr: Deno.NetAddr;
  /** The connected users by id. */
  readonly users: Map<string, Protocol>;
  /**
   * Stops accepting, closes every connection with 1001 and waits for the closing
   * handshakes (each bounded by `closeTimeout`).
   */
  shutdown(): Promise<void>;
}

// What the handlers of one server share.
interface ServerContext {
  log: (line: string) => void;
  verbose: boolean;
  page: boolean;
  metrics: ServerMetrics | undefined;
  rooms: Rooms;
  bus: Bus | undefined;
}

// The chat page is served at room-like paths: not at file-like ones such as /favicon.ico.
const PAGE_PATH = /^\/[^.]*$/;

/** The broadcast server's connection handler: its room is its request's path. */
class BroadcastHandler extends Protocol {
  #context: ServerContext;
  #room = "/";

  constructor(users: Map<string, Protocol>, options: ServerOptions, context: ServerContext) {
    super(users, options);
    this.#context = context;
  }

  // A request without `Upgrade`: /metrics when asked for; the chat page at a room's
  // path, 404 elsewhere, 405 for other methods.
  override onHttpRequest(request: HandshakeRequest): HttpResponse | undefined {
    const { metrics, page } = this.#context;
    if (metrics !== undefined && request.path === "/metrics") {
      if (request.method !== "GET") return { status: 405, body: "Method Not Allowed" };
      const body = metrics.render(this.#context.rooms, this.#context.bus?.stats);
      return { status: 200, headers: { "Content-Type": "text/plain; version=0.0.4; charset=utf-8" }, body };
    }
    if (!page) return undefined;
    if (request.method !== "GET") return { status: 405, body: "Method Not Allowed" };
    if (!PAGE_PATH.test(request.path)) return { status: 404, body: "Not Found" };
    return { status: 200, headers: { "Content-Type": "text/html; charset=utf-8" }, body: CHAT_PAGE };
  }

  override onHandshake(header: string): void {
    this.#room = this.request?.path ?? "/";
    const origin = /^Origin\s*:\s*(\S+)/im.exec(header)?.[1] ?? "(none)";
    this.#context.log(`[HANDSHAKE] ${this.id} origin: ${origin}`);
  }

  override onConnect(): void {
    this.#context.log(`[CONNECTION] ${this.id} connected`);
    this.subscribe(this.#room);
    this.publish(this.#room, `${this.id} connected`);
  }

  override onDisconnect(): void {
    // It has left its room already: the notice goes to the others.
    this.#context.log(`[DISCONNECTION] ${this.id} disconnected (${this.closeCode})`);
    const closes = this.#context.metrics?.closes;
    closes?.set(this.closeCode, (closes.get(this.closeCode) ?? 0) + 1);
    Protocol.publish(this.users, this.#room, `${this.id} disconnected`);
  }

  override onMessage(msg: string | Uint8Array): void {
    const { metrics } = this.#context;
    if (metrics !== undefined) {
      metrics.received++;
      metrics.receivedBytes += metrics.size(msg);
    }
    // The sender's own copy goes last: a sender that waits for it is paced by the
    // delivery to everyone else, instead of queueing faster than they are served.
    const count = this.publish(this.#room, msg, { includeSelf: true });
    if (this.#context.verbose) {
      const text = typeof msg === "string" ? msg : `<${msg.length} bytes>`;
      this.#context.log(`[MESSAGE] from ${this.id} to ${count} users: ${text}`);
    }
  }
}

// Answers the opening handshake with 503 when the server is full.
class FullHandler extends Protocol {
  override onHandshake(): never {
    throw new ProtocolError("Server is at its connection limit", { status: 503, code: "WS_ERR_SERVER_FULL" });
  }
}

/**
 * Starts the broadcast server and returns at once.
 *
 * @example
 * ```ts
 * import { startServer } from "./server.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
 * const socket = new WebSocket(`ws://127.0.0.1:${server.addr.port}/`);
 * const message = await new Promise((resolve, reject) => {
 *   socket.onopen = () => socket.send("hello");
 *   socket.onmessage = (event) => resolve(event.data);
 *   AbortSignal.timeout(5000).onabort = () => reject(new Error("no broadcast within 5 s"));
 * });
 * assertEquals(message, "hello"); // the sender gets its own broadcast too
 * socket.close();
 * await server.shutdown();
 * ```
 *
 * @param options Where to listen, logging, and connection limits.
 * @returns The running server.
 */
export function startServer(options: ServerOptions = {}): BroadcastServer {
  options = { ...options, compression: options.compression ?? true };
  const listenOptions = {
    port: options.port ?? 9999,
    hostname: options.hostname ?? "0.0.0.0",
    ...(options.reusePort ? { reusePort: true } : {}),
  };
  const listener = options.cert !== undefined && options.key !== undefined
    ? Deno.listenTls({ ...listenOptions, cert: options.cert, key: options.key })
    : Deno.listen(listenOptions);
  const users = new Map<string, Protocol>();
  const metrics = options.metrics ? new ServerMetrics(options.worker) : undefined;
  const registry = registryOf(users, Protocol.broadcast);
  const context: ServerContext = {
    log: options.quiet ? () => {} : options.log ?? console.log,
    verbose: options.verbose === true && !options.quiet,
    page: options.page !== false,
    metrics,
    rooms: registry,
    bus: options.bus,
  };
  if (metrics !== undefined) {
    registry.onDelivered = (msg, count) => metrics.sentBytes += count * metrics.size(msg);
    metrics.share(registry, options.bus?.stats);
  }
  attachBus(users, options.bus);
  const handlers = new Set<Protocol>();
  const served = new Set<Promise<void>>();

  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        const full = handlers.size >= (options.maxConnections ?? Infinity);
        const handler = full ? new FullHandler(new Map(), options) : new BroadcastHandler(users, options, context);
        handlers.add(handler);
        const done = handler.serve(conn).finally(() => {
          handlers.delete(handler);
          served.delete(done);
        });
        served.add(done);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  })();

  let stopping: Promise<void> | undefined;
  return {
    addr: listener.addr,
    users,
    shutdown() {
      stopping ??= (async () => {
        listener.close();
        await accepting;
        for (const handler of handlers) handler.close(CloseCode.GoingAway, "Server shutting down");
        await Promise.all(served);
        attachBus(users, undefined);
        metrics?.close();
      })();
      return stopping;
    },
  };
}

const USAGE = `Usage: deno run -N server.ts [PORT] [OPTIONS]

A WebSocket broadcast server. Rooms are URL paths (ws://HOST:PORT/ is room /,
ws://HOST:PORT/lobby room /lobby): every message goes to every member of its room.

Options:
  --hostname HOST      address to listen on (default 0.0.0.0)
  --max-payload BYTES  largest message accepted (default 16777216)
  --max-connections N  most connections at once; more get 503 (default unlimited)
  --origin ORIGIN      accept only this Origin (repeatable; default any)
  --cert FILE          PEM certificate: serve wss:// (needs --key and -R)
  --key FILE           PEM private key of --cert
  --redis URL          join the cluster on Redis at URL (redis://HOST:PORT): rooms span
                       every node on it (needs -E for node-redis); exits 1 if Redis
                       is not reachable within 5 s of the start
  --workers N          serve the port from N workers (needs --unstable-net and -R);
                       rooms span them; a crashed worker is restarted
  --metrics            answer GET /metrics in the Prometheus text format
  --quiet              log nothing
  --verbose            log every message
  --no-page            answer plain HTTP requests with 400, not the chat page
  --no-compression     decline permessage-deflate (default: accepted, no context takeover)
  --help               show this help

Two nodes on one Redis:
  deno run -N -E server.ts 9001 --redis redis://127.0.0.1:6379
  deno run -N -E server.ts 9002 --redis redis://127.0.0.1:6379`;

/**
 * What the command line sets: {@linkcode ServerOptions}, and what the process does
 * around the server (a Redis cluster, workers).
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { type CommandLineOptions, parseServerArgs } from "./server.ts";
 *
 * const options: CommandLineOptions = parseServerArgs(["--workers", "2"])!;
 * assertEquals(options.workers, 2);
 * ```
 */
export interface CommandLineOptions extends ServerOptions {
  /** `--redis`: the Redis URL of the cluster. */
  redis?: string;
  /** `--workers`: how many workers serve the port. */
  workers?: number;
}

/**
 * Parses the command line into {@linkcode CommandLineOptions}; throws `Error` with a
 * message for the user when an argument is wrong.
 *
 * @example
 * ```ts
 * import { parseServerArgs } from "./server.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * assertEquals(parseServerArgs(["8080", "--quiet"]), { port: 8080, quiet: true, verbose: false, page: true });
 * assertEquals(parseServerArgs(["--help"]), undefined);
 * assertThrows(() => parseServerArgs(["--max-payload", "0"]), Error, "--max-payload");
 * ```
 *
 * @param args The arguments, as `Deno.args`.
 * @returns The options, or `undefined` when `--help` was asked for.
 */
export function parseServerArgs(args: string[]): CommandLineOptions | undefined {
  const flags = parseArgs(args, {
    string: ["hostname", "max-payload", "max-connections", "cert", "key", "origin", "redis", "workers"],
    collect: ["origin"],
    boolean: ["quiet", "verbose", "help", "page", "metrics", "compression"],
    negatable: ["page", "compression"],
    default: { page: true, compression: true },
    unknown: (arg: string) => {
      if (arg.startsWith("-")) throw new Error(`Unknown option ${arg}`);
      return true;
    },
  });
  if (flags.help) return undefined;
  if (flags._.length > 1) throw new Error(`Expected at most one PORT, got ${flags._.join(" ")}`);
  const port = flags._.length === 1 ? parseInteger(String(flags._[0]), "PORT", 0, 65535) : 9999;
  const options: CommandLineOptions = { port, quiet: flags.quiet, verbose: flags.verbose, page: flags.page };
  if (flags.hostname !== undefined) options.hostname = flags.hostname;
  if (flags["max-payload"] !== undefined) {
    options.maxPayload = parseInteger(flags["max-payload"], "--max-payload", 1, Number.MAX_SAFE_INTEGER);
  }
  if (flags["max-connections"] !== undefined) {
    options.maxConnections = parseInteger(flags["max-connections"], "--max-connections", 1, Number.MAX_SAFE_INTEGER);
  }
  if (flags.origin.length > 0) options.allowedOrigins = flags.origin as string[];
  if ((flags.cert === undefined) !== (flags.key === undefined)) throw new Error("--cert and --key go together");
  if (flags.cert !== undefined && flags.key !== undefined) {
    options.cert = readPem(flags.cert, "--cert");
    options.key = readPem(flags.key, "--key");
  }
  if (flags.redis !== undefined) options.redis = parseRedisUrl(flags.redis);
  if (flags.workers !== undefined) options.workers = parseInteger(flags.workers, "--workers", 1, 256);
  if (flags.metrics) options.metrics = true;
  if (!flags.compression) options.compression = false;
  return options;
}

function parseRedisUrl(text: string): string {
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  if (url === undefined || (url.protocol !== "redis:" && url.protocol !== "rediss:") || url.hostname === "") {
    throw new Error(`--redis must be a URL such as redis://127.0.0.1:6379, got ${JSON.stringify(text)}`);
  }
  return text;
}

function parseInteger(text: string, name: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    throw new Error(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(text)}`);
  }
  return value;
}

function readPem(path: string, name: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (error) {
    throw new Error(`${name} ${path}: ${error instanceof Error ? error.message : error}`);
  }
}

// The command line, one process: a server, and with --redis its bus.
async function serveOne(options: CommandLineOptions): Promise<void> {
  const log = options.quiet ? () => {} : console.log;
  let bus: Bus | undefined;
  if (options.redis !== undefined) {
    // Imported only here: without --redis, server.ts loads no dependency.
    const { RedisBus } = await import("./redis.ts");
    try {
      bus = await RedisBus.connect(options.redis, { log });
    } catch (error) {
      // A cluster member that cannot reach the cluster at the start is misconfigured, or
      // early: say so and exit 1 (a supervisor restarts it), rather than serve alone.
      // A missing permission is the command line's: 2.
      console.error(`error: ${error instanceof Error ? error.message : error}`);
      Deno.exit(error instanceof Deno.errors.NotCapable ? 2 : 1);
    }
  }
  let server: BroadcastServer;
  try {
    server = startServer({ ...options, bus });
  } catch (error) {
    // A port in use is the machine's state; anything else (a bad certificate) is the arguments'.
    console.error(`error: cannot listen: ${error instanceof Error ? error.message : error}`);
    Deno.exit(error instanceof Deno.errors.AddrInUse ? 1 : 2);
  }
  const scheme = options.cert ? "wss" : "ws";
  log(`Listening on ${scheme}://${server.addr.hostname}:${server.addr.port}/`);
  const stop = async () => {
    await server.shutdown();
    await bus?.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}

// The command line with --workers: N workers on one port (SO_REUSEPORT), rooms joined
// by a PortBus (or each worker's RedisBus).
async function serveWorkers(options: CommandLineOptions, count: number): Promise<void> {
  const log = options.quiet ? () => {} : console.log;
  const hostname = options.hostname ?? "0.0.0.0";
  const module = new URL("./_worker.ts", import.meta.url);
  // Without --unstable-net, Deno.listen({ reusePort: true }) ends the process (exit 70)
  // instead of throwing; the flag also brings Deno.listenDatagram, which tells.
  if (!("listenDatagram" in Deno)) {
    console.error(`error: --workers needs --unstable-net (SO_REUSEPORT is unstable in Deno):
  deno run -N -R --unstable-net server.ts ... --workers ${count}\n\n${USAGE}`);
    Deno.exit(2);
  }
  // A worker's module is loaded from disk: that takes read permission.
  if (module.protocol === "file:" && Deno.permissions.querySync({ name: "read", path: module }).state !== "granted") {
    console.error(`error: --workers needs read access to load ${module.pathname} in each worker (-R)\n\n${USAGE}`);
    Deno.exit(2);
  }
  // Listen the way the workers will, once, to check the port and pick it when it is 0.
  let port: number;
  try {
    const probe = Deno.listen({ hostname, port: options.port ?? 9999, reusePort: true });
    port = probe.addr.port;
    probe.close();
  } catch (error) {
    console.error(`error: cannot listen: ${error instanceof Error ? error.message : error}`);
    Deno.exit(error instanceof Deno.errors.AddrInUse ? 1 : 2);
  }
  const { WorkerPool } = await import("./_workers.ts");
  const { redis, workers: _, ...serverOptions } = options;
  const channel = `twistedws-${crypto.randomUUID()}`;
  const pool = new WorkerPool({
    module,
    count,
    mesh: redis === undefined,
    init: (index) => ({ index, options: { ...serverOptions, port }, channel, redis }),
    log,
  });
  try {
    await pool.start();
  } catch (error) {
    console.error(`error: ${error instanceof Error ? error.message : error}`);
    Deno.exit(1);
  }
  const scheme = options.cert ? "wss" : "ws";
  log(`Listening on ${scheme}://${hostname}:${port}/ (${count} workers)`);
  const stop = async () => {
    await pool.shutdown((options.closeTimeout ?? 5000) + 5000);
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}

if (import.meta.main) {
  let options: CommandLineOptions | undefined;
  try {
    options = parseServerArgs(Deno.args);
  } catch (error) {
    console.error(`error: ${error instanceof Error ? error.message : error}\n\n${USAGE}`);
    Deno.exit(2);
  }
  if (options === undefined) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (options.workers === undefined) await serveOne(options);
  else await serveWorkers(options, options.workers);
}
