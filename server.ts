/**
 * The built-in broadcast server: every message goes to every connected user, the
 * sender included, and connects and disconnects are announced to the others.
 *
 * ```sh
 * deno run -N server.ts 9999
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
import { CHAT_PAGE } from "./chat_page.ts";
import { CloseCode } from "./frame.ts";
import { ProtocolError } from "./errors.ts";
import { type HandshakeRequest, type HttpResponse, Protocol, type ProtocolOptions } from "./protocol.ts";

/**
 * Options of {@linkcode startServer}: where to listen, logging, and every
 * {@linkcode ProtocolOptions} limit.
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

/** The broadcast server's connection handler. */
class BroadcastHandler extends Protocol {
  #log: (line: string) => void;
  #verbose: boolean;
  #page: boolean;

  constructor(users: Map<string, Protocol>, options: ServerOptions) {
    super(users, options);
    this.#log = options.quiet ? () => {} : options.log ?? console.log;
    this.#verbose = options.verbose === true && !options.quiet;
    this.#page = options.page !== false;
  }

  // A request without `Upgrade`: the chat page at `/`, 404 elsewhere, 405 for other methods.
  override onHttpRequest(request: HandshakeRequest): HttpResponse | undefined {
    if (!this.#page) return undefined;
    if (request.method !== "GET") return { status: 405, body: "Method Not Allowed" };
    if (request.path !== "/") return { status: 404, body: "Not Found" };
    return { status: 200, headers: { "Content-Type": "text/html; charset=utf-8" }, body: CHAT_PAGE };
  }

  override onHandshake(header: string): void {
    const origin = /^Origin\s*:\s*(\S+)/im.exec(header)?.[1] ?? "(none)";
    this.#log(`[HANDSHAKE] ${this.id} origin: ${origin}`);
  }

  override onConnect(): void {
    this.#log(`[CONNECTION] ${this.id} connected`);
    Protocol.broadcast(this.#others(), `${this.id} connected`);
  }

  override onDisconnect(): void {
    this.#log(`[DISCONNECTION] ${this.id} disconnected (${this.closeCode})`);
    Protocol.broadcast(this.users.values(), `${this.id} disconnected`);
  }

  override onMessage(msg: string | Uint8Array): void {
    // The sender's own copy goes last: a sender that waits for it is paced by the
    // delivery to everyone else, instead of queueing faster than they are served.
    const count = Protocol.broadcast(this.#othersThenSelf(), msg);
    if (this.#verbose) {
      const text = typeof msg === "string" ? msg : `<${msg.length} bytes>`;
      this.#log(`[MESSAGE] from ${this.id} to ${count} users: ${text}`);
    }
  }

  *#others(): Iterable<Protocol> {
    for (const user of this.users.values()) if (user !== this) yield user;
  }

  *#othersThenSelf(): Iterable<Protocol> {
    yield* this.#others();
    yield this;
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
  const listenOptions = { port: options.port ?? 9999, hostname: options.hostname ?? "0.0.0.0" };
  const listener = options.cert !== undefined && options.key !== undefined
    ? Deno.listenTls({ ...listenOptions, cert: options.cert, key: options.key })
    : Deno.listen(listenOptions);
  const users = new Map<string, Protocol>();
  const handlers = new Set<Protocol>();
  const served = new Set<Promise<void>>();

  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        const full = handlers.size >= (options.maxConnections ?? Infinity);
        const handler = full ? new FullHandler(new Map(), options) : new BroadcastHandler(users, options);
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
      })();
      return stopping;
    },
  };
}

const USAGE = `Usage: deno run -N server.ts [PORT] [OPTIONS]

A WebSocket broadcast server: every message goes to every connected user.

Options:
  --hostname HOST      address to listen on (default 0.0.0.0)
  --max-payload BYTES  largest message accepted (default 16777216)
  --max-connections N  most connections at once; more get 503 (default unlimited)
  --origin ORIGIN      accept only this Origin (repeatable; default any)
  --cert FILE          PEM certificate: serve wss:// (needs --key and -R)
  --key FILE           PEM private key of --cert
  --quiet              log nothing
  --verbose            log every message
  --no-page            answer plain HTTP requests with 400, not the chat page
  --help               show this help`;

/**
 * Parses the command line into {@linkcode ServerOptions}; throws `Error` with a
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
export function parseServerArgs(args: string[]): ServerOptions | undefined {
  const flags = parseArgs(args, {
    string: ["hostname", "max-payload", "max-connections", "cert", "key", "origin"],
    collect: ["origin"],
    boolean: ["quiet", "verbose", "help", "page"],
    negatable: ["page"],
    default: { page: true },
    unknown: (arg: string) => {
      if (arg.startsWith("-")) throw new Error(`Unknown option ${arg}`);
      return true;
    },
  });
  if (flags.help) return undefined;
  if (flags._.length > 1) throw new Error(`Expected at most one PORT, got ${flags._.join(" ")}`);
  const port = flags._.length === 1 ? parseInteger(String(flags._[0]), "PORT", 0, 65535) : 9999;
  const options: ServerOptions = { port, quiet: flags.quiet, verbose: flags.verbose, page: flags.page };
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
  return options;
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

if (import.meta.main) {
  let options: ServerOptions | undefined;
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
  let server: BroadcastServer;
  try {
    server = startServer(options);
  } catch (error) {
    // A port in use is the machine's state; anything else (a bad certificate) is the arguments'.
    console.error(`error: cannot listen: ${error instanceof Error ? error.message : error}`);
    Deno.exit(error instanceof Deno.errors.AddrInUse ? 1 : 2);
  }
  const scheme = options.cert ? "wss" : "ws";
  if (!options.quiet) console.log(`Listening on ${scheme}://${server.addr.hostname}:${server.addr.port}/`);
  const stop = async () => {
    await server.shutdown();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
