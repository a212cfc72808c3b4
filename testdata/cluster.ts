// Real parts for the cluster tests and the Redis benchmark: a redis-server on a free
// loopback port, server.ts processes, and WebSocket clients that queue what they get.
// Every process is stopped by its PID. Not part of the module.
import { peerMissing, within } from "../test_util.ts";

export const REDIS_SERVER = "/usr/bin/redis-server";
export const redisMissing: boolean = peerMissing(() => Deno.statSync(REDIS_SERVER).isFile);
const SERVER = new URL("../server.ts", import.meta.url).pathname;
export const NOTICE = /^[0-9a-f-]{36} (dis)?connected$/;

export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}

/** Reads a child's stream line by line; waits for a line that matches. */
export class Lines {
  readonly lines: string[] = [];
  #wake = Promise.withResolvers<void>();
  readonly done: Promise<void>;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      let pending = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        pending += chunk;
        const lines = pending.split("\n");
        pending = lines.pop()!;
        this.lines.push(...lines);
        this.#wake.resolve();
        this.#wake = Promise.withResolvers<void>();
      }
      this.#wake.resolve();
    })();
  }

  async waitFor(pattern: RegExp, ms = 20_000, from = 0): Promise<string> {
    const deadline = Date.now() + ms;
    while (true) {
      const line = this.lines.slice(from).find((candidate) => pattern.test(candidate));
      if (line !== undefined) return line;
      if (Date.now() >= deadline) throw new Error(`no line matching ${pattern}; got:\n${this.lines.join("\n")}`);
      await within(this.#wake.promise, deadline - Date.now(), `a line matching ${pattern}`);
    }
  }
}

/** A child process with its stdout read as lines, stopped by PID. */
export class Child {
  readonly process: Deno.ChildProcess;
  readonly stdout: Lines;
  readonly stderr: Lines;

  constructor(command: string, args: string[]) {
    this.process = new Deno.Command(command, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
    this.stdout = new Lines(this.process.stdout);
    this.stderr = new Lines(this.process.stderr);
  }

  get pid(): number {
    return this.process.pid;
  }

  /** Sends `signal` and waits for the exit (SIGKILL after `ms`); returns the exit code. */
  async stop(signal: Deno.Signal = "SIGTERM", ms = 10_000): Promise<number> {
    try {
      this.process.kill(signal);
    } catch {
      // Already exited.
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const killed = new Promise<void>((resolve) =>
      timer = setTimeout(() => {
        try {
          this.process.kill("SIGKILL");
        } catch {
          // Already exited.
        }
        resolve();
      }, ms)
    );
    const status = await Promise.race([this.process.status, killed.then(() => this.process.status)]);
    clearTimeout(timer);
    await Promise.all([this.stdout.done, this.stderr.done]);
    return status.code;
  }
}

/** A redis-server without persistence on a free loopback port. */
export class RedisServer {
  readonly port: number;
  #child: Child | undefined;
  #cpus: string | undefined;

  private constructor(port: number) {
    this.port = port;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Starts one; `cpus` pins it with taskset (`"1"`, `"0,1"`). */
  static async start(port = freePort(), cpus?: string): Promise<RedisServer> {
    const server = new RedisServer(port);
    server.#cpus = cpus;
    await server.restart();
    return server;
  }

  /** Starts it (again, on the same port); resolves once it accepts connections. */
  async restart(): Promise<void> {
    const args = ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    this.#child = this.#cpus === undefined
      ? new Child(REDIS_SERVER, args)
      : new Child("taskset", ["-c", this.#cpus, REDIS_SERVER, ...args]);
    await this.#child.stdout.waitFor(/Ready to accept connections/, 10_000);
  }

  /** Kills it at once (SIGKILL): clients see their connections reset. */
  async kill(): Promise<void> {
    await this.#child?.stop("SIGKILL");
    this.#child = undefined;
  }

  async stop(): Promise<void> {
    await this.#child?.stop("SIGTERM", 5000);
    this.#child = undefined;
  }
}

/** Sends one PUBLISH over a raw RESP connection (as any Redis client could). */
export async function rawPublish(port: number, channel: string, payload: Uint8Array): Promise<void> {
  const encoder = new TextEncoder();
  const bulk = (bytes: Uint8Array) => [encoder.encode(`$${bytes.length}\r\n`), bytes, encoder.encode("\r\n")];
  const parts = [encoder.encode("*3\r\n"), ...bulk(encoder.encode("PUBLISH")), ...bulk(encoder.encode(channel))];
  parts.push(...bulk(payload));
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    for (const part of parts) await conn.write(part);
    const answer = new Uint8Array(64);
    await within(conn.read(answer), 5000, "Redis to answer PUBLISH"); // ":<receivers>\r\n"
  } finally {
    conn.close();
  }
}

/** A server.ts process on a free loopback port. */
export class ServerProcess extends Child {
  readonly port: number;

  private constructor(port: number, args: string[], denoFlags: string[], cpus?: string) {
    const command = [Deno.execPath(), "run", "-N", "-E", "-R", ...denoFlags, SERVER, String(port)];
    command.push("--hostname", "127.0.0.1", ...args);
    if (cpus !== undefined) command.unshift("taskset", "-c", cpus);
    super(command[0], command.slice(1));
    this.port = port;
  }

  /**
   * Starts `server.ts PORT --hostname 127.0.0.1 ...args`; resolves once it listens.
   * `cpus` pins it with taskset.
   */
  static async start(args: string[] = [], denoFlags: string[] = [], cpus?: string): Promise<ServerProcess> {
    const server = new ServerProcess(freePort(), args, denoFlags, cpus);
    try {
      await server.stdout.waitFor(/^Listening on /);
    } catch (error) {
      await server.stop("SIGKILL");
      throw new Error(`${error instanceof Error ? error.message : error}\nstderr:\n${server.stderr.lines.join("\n")}`);
    }
    return server;
  }

  url(room = "/"): string {
    return `ws://127.0.0.1:${this.port}${room}`;
  }

  async metrics(): Promise<string> {
    const response = await fetch(`http://127.0.0.1:${this.port}/metrics`);
    return await response.text();
  }
}

/** A Deno WebSocket client that queues the messages it gets; notices are kept apart. */
export class Client {
  readonly socket: WebSocket;
  readonly messages: (string | Uint8Array)[] = [];
  readonly notices: string[] = [];
  readonly closed: Promise<CloseEvent>;
  #wake = Promise.withResolvers<void>();

  private constructor(url: string) {
    const socket = this.socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => {
      const data = typeof event.data === "string" ? event.data : new Uint8Array(event.data);
      if (typeof data === "string" && NOTICE.test(data)) this.notices.push(data);
      else this.messages.push(data);
      this.#wake.resolve();
      this.#wake = Promise.withResolvers<void>();
    };
    this.closed = new Promise((resolve) => socket.onclose = resolve);
    this.closed.then(() => this.#wake.resolve());
  }

  static async open(url: string): Promise<Client> {
    const client = new Client(url);
    const opened = new Promise<void>((resolve, reject) => {
      client.socket.onopen = () => resolve();
      client.socket.onerror = (event) =>
        reject(new Error(`cannot connect to ${url}: ${(event as ErrorEvent).message}`));
    });
    await within(opened, 5000, `connecting to ${url}`);
    return client;
  }

  /** Waits until `count` messages (not notices) have arrived. */
  async received(count: number, ms = 5000): Promise<(string | Uint8Array)[]> {
    const deadline = Date.now() + ms;
    while (this.messages.length < count) {
      if (Date.now() >= deadline) throw new Error(`expected ${count} messages, got ${this.messages.length}`);
      await within(this.#wake.promise, deadline - Date.now(), `${count} messages`);
    }
    return this.messages;
  }

  /** Waits for a notice matching `pattern`. */
  async notice(pattern: RegExp, ms = 5000): Promise<string> {
    const deadline = Date.now() + ms;
    while (true) {
      const notice = this.notices.find((candidate) => pattern.test(candidate));
      if (notice !== undefined) return notice;
      if (Date.now() >= deadline) throw new Error(`no notice matching ${pattern}; got ${this.notices.join(", ")}`);
      await within(this.#wake.promise, deadline - Date.now(), `a notice matching ${pattern}`);
    }
  }

  async close(): Promise<void> {
    if (this.socket.readyState !== WebSocket.CLOSED) this.socket.close();
    await within(this.closed, 5000, "the client to close").catch(() => {});
  }
}

/** Closes clients and stops processes, whatever happened before. */
export async function cleanUp(clients: Client[], processes: { stop(): Promise<unknown> }[]): Promise<void> {
  await Promise.all(clients.map((client) => client.close()));
  await Promise.all(processes.map((process) => process.stop()));
}

/** Runs a command to its end, killing it (SIGKILL, by PID) if it takes over `ms`. */
export async function runBounded(
  command: string,
  args: string[],
  ms = 20_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Child(command, args);
  try {
    const status = await within(child.process.status, ms, `${command} ${args.join(" ")}`);
    await Promise.all([child.stdout.done, child.stderr.done]);
    return { code: status.code, stdout: child.stdout.lines.join("\n"), stderr: child.stderr.lines.join("\n") };
  } finally {
    await child.stop("SIGKILL", 1000);
  }
}
