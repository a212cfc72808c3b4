// The client role, Protocol.connect: against servers nobody here wrote (Deno.serve,
// Python websockets, npm ws), our own broadcast server, a TLS server with a throwaway
// certificate, and a raw TCP server that checks every byte the client sends and
// answers with what a strict client must refuse (RFC 6455 4.1, 5.1, 5.3, 7.1.1).

import { assert, assertEquals, assertInstanceOf, assertMatch, assertNotEquals, assertRejects } from "@std/assert";
import { WebSocketServer } from "ws";
import { deflateStats } from "./_deflate.ts";
import { ProtocolError } from "./errors.ts";
import { applyMask, decodeClosePayload, decodeHeader, encodeClosePayload, encodeFrame, Opcode } from "./frame.ts";
import { type ClientOptions, computeAcceptKey, Protocol } from "./protocol.ts";
import { startServer } from "./server.ts";
import { encoder, peerMissing, Queue, Recorder, TIMEOUT, within } from "./test_util.ts";
import { pythonChild, pythonMissing } from "./testdata/python.ts";

// ---------------------------------------------------------------- helpers

/** A Recorder that also counts onConnect calls, for clients. */
class Client extends Recorder {
  connects = 0;
  override onConnect(): void {
    this.connects++;
    super.onConnect();
  }
}

/** Connects a Client, bounded in time. */
function connect(url: string, options: ClientOptions = {}): Promise<Client> {
  return within(Client.connect(url, options), TIMEOUT, `connect to ${url}`);
}

/** Closes the clients still open and waits (bounded) for them to end; for finally blocks. */
async function closeAll(clients: Recorder[]): Promise<void> {
  for (const client of clients) if (client.state === "open") client.close();
  await within(Promise.all(clients.map((client) => client.disconnected.promise)), 6000, "clients to end").catch(
    () => {},
  );
}

const TIMED_OUT = Symbol("timed out");

/** The promise's value, or TIMED_OUT after `ms`; the timer is always cleared. */
async function settleWithin<T>(promise: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<typeof TIMED_OUT>((resolve) => timer = setTimeout(() => resolve(TIMED_OUT), ms));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const pattern = (size: number, seed = 0) => new Uint8Array(size).map((_, i) => (i + seed) % 251);

// 1 MiB of text with a 3-byte character every 1,024 bytes, so that characters fall
// across reads and frame boundaries.
const MEBI_TEXT = Array.from({ length: 1024 }, (_, i) => `${i}`.padStart(1021, "-") + "€").join("");

/** Whether two messages are the same: same kind (text or binary), same content. */
function sameMessage(actual: string | Uint8Array | undefined, expected: string | Uint8Array): boolean {
  if (typeof expected === "string") return actual === expected;
  if (!(actual instanceof Uint8Array) || actual.length !== expected.length) return false;
  return actual.every((byte, i) => byte === expected[i]);
}

function describe(message: string | Uint8Array | undefined): string {
  if (message === undefined) return "nothing";
  if (typeof message === "string") return `text of ${message.length} chars: ${JSON.stringify(message.slice(0, 30))}`;
  return `binary of ${message.length} bytes`;
}

function assertMessages(actual: (string | Uint8Array)[], expected: (string | Uint8Array)[]): void {
  assertEquals(actual.length, expected.length, `expected ${expected.length} messages, got ${actual.length}`);
  expected.forEach((message, i) =>
    assert(sameMessage(actual[i], message), `message ${i}: expected ${describe(message)}, got ${describe(actual[i])}`)
  );
}

// ---------------------------------------------------------------- echo servers nobody here wrote

/**
 * An echo server: echoes every message, and answers the text "close CODE REASON" by
 * closing with that code and reason.
 */
interface EchoServer {
  url: string;
  /** The close code the server saw on the next connection to end. */
  nextClose(): Promise<number>;
  stop(): Promise<void>;
}

const CLOSE_COMMAND = /^close (\d+) (.*)$/s;

function denoEchoServer(tls?: { cert: string; key: string }): EchoServer {
  const closes = new Queue<number>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {}, ...tls }, (request) => {
    const { socket, response } = Deno.upgradeWebSocket(request);
    socket.binaryType = "arraybuffer";
    socket.onmessage = ({ data }) => {
      const command = typeof data === "string" ? CLOSE_COMMAND.exec(data) : null;
      if (command) socket.close(Number(command[1]), command[2]);
      else socket.send(data);
    };
    socket.onclose = ({ code }) => closes.push(code);
    return response;
  });
  return {
    url: `${tls ? "wss" : "ws"}://127.0.0.1:${server.addr.port}/echo`,
    nextClose: () => closes.next("the server's close"),
    stop: () => within(server.shutdown(), TIMEOUT, "Deno.serve to stop"),
  };
}

async function wsEchoServer(perMessageDeflate: boolean | object = false): Promise<EchoServer> {
  const closes = new Queue<number>();
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0, perMessageDeflate });
  await within(
    new Promise((resolve, reject) => {
      server.once("listening", resolve);
      server.once("error", reject);
    }),
    TIMEOUT,
    "ws to listen",
  );
  // deno-lint-ignore no-explicit-any
  server.on("connection", (socket: any) => {
    socket.on("message", (data: Uint8Array, isBinary: boolean) => {
      const command = isBinary ? null : CLOSE_COMMAND.exec(new TextDecoder().decode(data));
      if (command) socket.close(Number(command[1]), command[2]);
      else socket.send(data, { binary: isBinary });
    });
    socket.on("close", (code: number) => closes.push(code));
  });
  return {
    url: `ws://127.0.0.1:${(server.address() as { port: number }).port}/echo`,
    nextClose: () => closes.next("the server's close"),
    stop: () =>
      within(
        new Promise<void>((resolve) => {
          for (const socket of server.clients) socket.terminate();
          server.close(() => resolve());
        }),
        TIMEOUT,
        "ws to stop",
      ),
  };
}

async function pythonEchoServer(compression = false): Promise<EchoServer> {
  const python = pythonChild<{ port?: number; closed?: number }>(
    "./python_echo_server.py",
    compression ? ["deflate"] : [],
  );
  const child = python.process;
  const stop = async () => {
    await python.endInput();
    if ((await settleWithin(child.status, TIMEOUT)) === TIMED_OUT) child.kill("SIGKILL");
    assertEquals((await child.status).code, 0, "the Python server's exit code");
    await python.reading;
  };
  try {
    const { port } = await python.events.next("the Python server's port");
    return {
      url: `ws://127.0.0.1:${port}/echo`,
      nextClose: async () => (await python.events.next("the Python server's close")).closed!,
      stop,
    };
  } catch (error) {
    child.kill("SIGKILL");
    await child.status;
    await python.reading;
    throw error;
  }
}

// Text, 100 KB binary, 1 MiB text, empty text and binary, 200 messages in order; the
// client's close (1000, onDisconnect once); the server's close (its code).
async function echoScenario(server: EchoServer, clients: Client[], options: ClientOptions = {}): Promise<void> {
  const users = new Map<string, Protocol>();
  const client = await connect(server.url, { users, ...options });
  clients.push(client);
  assertEquals([client.state, client.connects, client.protocol], ["open", 1, ""]);
  assertEquals(users.get(client.id), client);

  const sent = ["hello", pattern(100_000), MEBI_TEXT, "", new Uint8Array(0)];
  assertEquals(await within(Promise.all(sent.map((msg) => client.sendMessage(msg)))), sent.map(() => true));
  assertMessages(await client.received(sent.length), sent);

  const ordered = Array.from({ length: 200 }, (_, i) => i % 3 ? `order ${i}` : encoder.encode(`order ${i}`));
  for (const msg of ordered) client.sendMessage(msg);
  assertMessages((await client.received(sent.length + 200)).slice(sent.length), ordered);

  client.close();
  assertEquals(client.state, "closing");
  // Well before closeTimeout (5 s): the client ends when the server closes TCP.
  await within(client.disconnected.promise, 2000, "the client's close");
  assertEquals([client.closeCode, client.state, client.disconnects, users.size], [1000, "closed", 1, 0]);
  assertEquals(await server.nextClose(), 1000);
  assertEquals(await client.sendMessage("late"), false);

  const closed = await connect(server.url, options);
  clients.push(closed);
  await closed.sendMessage("close 4001 server says bye");
  await within(closed.disconnected.promise, 2000, "the server's close");
  assertEquals([closed.closeCode, closed.closeReason, closed.disconnects], [4001, "server says bye", 1]);
  assertEquals(await server.nextClose(), 4001);
  assertEquals(client.disconnects, 1);
}

async function runEchoScenario(start: () => EchoServer | Promise<EchoServer>, options?: ClientOptions): Promise<void> {
  const server = await start();
  const clients: Client[] = [];
  try {
    await echoScenario(server, clients, options);
  } finally {
    await closeAll(clients);
    await server.stop();
  }
  // Still once each, after the servers are gone.
  assertEquals(clients.map((client) => client.disconnects), clients.map(() => 1));
}

Deno.test("interop: Deno.serve + Deno.upgradeWebSocket echo server", () => runEchoScenario(denoEchoServer));

Deno.test({
  name: "interop: npm ws echo server (WebSocketServer, in Deno)",
  // ws keeps Node-compat timers and sockets that settle after the test.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () => runEchoScenario(wsEchoServer),
});

Deno.test({
  name: "interop: Python websockets echo server (Debian python3-websockets)",
  ignore: pythonMissing,
  fn: () => runEchoScenario(pythonEchoServer),
});

Deno.test("interop: a Deno.serve server that closes as soon as the socket opens: connect resolves, then the code", async () => {
  const closes = new Queue<number>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (request) => {
    const { socket, response } = Deno.upgradeWebSocket(request);
    socket.onopen = () => {
      socket.send("welcome");
      socket.close(4005, "go away");
    };
    socket.onclose = ({ code }) => closes.push(code);
    return response;
  });
  const clients: Client[] = [];
  try {
    for (let i = 0; i < 5; i++) {
      const client = await connect(`ws://127.0.0.1:${server.addr.port}/`);
      clients.push(client);
      await within(client.disconnected.promise, 2000, "the server's close");
      assertEquals([client.messages, client.closeCode, client.closeReason], [["welcome"], 4005, "go away"]);
      assertEquals(await closes.next(), 4005);
    }
  } finally {
    await closeAll(clients);
    await within(server.shutdown(), TIMEOUT, "Deno.serve to stop");
  }
  assertEquals(clients.map((client) => [client.connects, client.disconnects]), clients.map(() => [1, 1]));
});

Deno.test("interop: our broadcast server: notices, every message to every user, close, shutdown 1001", async () => {
  const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
  const url = `ws://127.0.0.1:${server.addr.port}/`;
  const users = new Map<string, Protocol>();
  const clients: Client[] = [];
  try {
    const a = await connect(url, { users });
    clients.push(a);
    await within(waitFor(() => server.users.size === 1), TIMEOUT, "the first user");
    const b = await connect(url, { users });
    clients.push(b);
    const [notice] = await a.received(1);
    assertMatch(notice as string, /^[0-9a-f-]{36} connected$/);
    const bId = (notice as string).split(" ")[0];
    assert(server.users.has(bId));
    assertEquals(users.size, 2);

    const sent = ["hello", pattern(100_000), MEBI_TEXT, "", new Uint8Array(0)];
    for (const msg of sent) a.sendMessage(msg);
    assertMessages(await b.received(sent.length), sent); // b never saw its own notice
    const ordered = Array.from({ length: 200 }, (_, i) => i % 3 ? `order ${i}` : encoder.encode(`order ${i}`));
    for (const msg of ordered) b.sendMessage(msg);
    // b sent once a's messages had come back: the server relayed all of a's first.
    assertMessages((await a.received(1 + sent.length + 200)).slice(1), [...sent, ...ordered]);
    assertMessages(await b.received(sent.length + 200), [...sent, ...ordered]);

    // A broadcast from the client side: each client masks a copy of its own.
    assertEquals(Protocol.broadcast(users.values(), "to all"), 2);
    await a.received(1 + sent.length + 200 + 2);
    await b.received(sent.length + 200 + 2);
    assertEquals([a.messages.slice(-2), b.messages.slice(-2)], [["to all", "to all"], ["to all", "to all"]]);

    b.close();
    await within(b.disconnected.promise, 2000, "b's close");
    assertEquals([b.closeCode, b.disconnects, users.size], [1000, 1, 1]);
    assertEquals((await a.received(1 + sent.length + 200 + 3)).at(-1), `${bId} disconnected`);

    await within(server.shutdown(), TIMEOUT, "the shutdown");
    await within(a.disconnected.promise, 2000, "the shutdown");
    assertEquals([a.closeCode, a.closeReason, a.disconnects, users.size], [1001, "Server shutting down", 1, 0]);
  } finally {
    await closeAll(clients);
    await within(server.shutdown(), TIMEOUT, "the shutdown");
  }
  assertEquals(clients.map((client) => client.disconnects), [1, 1]);
});

async function waitFor(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5));
}

// ---------------------------------------------------------------- wss://

const opensslMissing = peerMissing(() =>
  new Deno.Command("openssl", { args: ["version"], stdout: "null", stderr: "null" }).outputSync().success
);

/** A throwaway self-signed certificate for localhost, 127.0.0.1 and ::1. */
async function selfSigned(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const certFile = `${dir}/${name}.pem`;
  const keyFile = `${dir}/${name}.key`;
  const { success, stderr } = await new Deno.Command("openssl", {
    args: [
      ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"],
      ...["-keyout", keyFile, "-out", certFile, "-subj", "/CN=localhost"],
      ...[
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
      ],
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert(success, new TextDecoder().decode(stderr));
  return { cert: await Deno.readTextFile(certFile), key: await Deno.readTextFile(keyFile) };
}

Deno.test({
  name: "wss://: a TLS Deno.serve with a self-signed certificate, trusted through caCerts; refused without",
  ignore: opensslMissing,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "client_test_" });
    try {
      const tls = await selfSigned(dir, "server");
      const other = await selfSigned(dir, "other");
      await t.step(
        "the echo scenario over wss://127.0.0.1",
        () => runEchoScenario(() => denoEchoServer(tls), { caCerts: [tls.cert] }),
      );
      const server = denoEchoServer(tls);
      const port = new URL(server.url).port;
      const clients: Client[] = [];
      try {
        await t.step("wss://localhost: SNI and the DNS name", async () => {
          const client = await connect(`wss://localhost:${port}/`, { caCerts: [tls.cert] });
          clients.push(client);
          await client.sendMessage("over TLS");
          assertEquals(await client.received(1), ["over TLS"]);
          client.close();
          await within(client.disconnected.promise, 2000, "the close");
          assertEquals(client.closeCode, 1000);
        });
        await t.step("wss://[::1]: an IPv6 literal is dialled and verified without its brackets", async () => {
          const v6 = Deno.serve({ hostname: "::1", port: 0, onListen() {}, ...tls }, (request) => {
            const { socket, response } = Deno.upgradeWebSocket(request);
            socket.onmessage = ({ data }) => socket.send(data);
            return response;
          });
          try {
            const client = await connect(`wss://[::1]:${v6.addr.port}/`, { caCerts: [tls.cert] });
            clients.push(client);
            await client.sendMessage("over IPv6");
            assertEquals(await client.received(1), ["over IPv6"]);
            client.close();
            await within(client.disconnected.promise, 2000, "the close");
          } finally {
            await within(v6.shutdown(), TIMEOUT, "Deno.serve on ::1 to stop");
          }
        });
        const untrusted: [string, ClientOptions][] = [
          ["without caCerts", {}],
          ["trusting another certificate", { caCerts: [other.cert] }],
        ];
        for (const [name, options] of untrusted) {
          await t.step(`${name}: a certificate error`, async () => {
            const error = await assertRejects(() => connect(`wss://localhost:${port}/`, options));
            assertMatch(String(error), /certificate|UnknownIssuer/i);
          });
        }
      } finally {
        await closeAll(clients);
        await server.stop();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// ---------------------------------------------------------------- a raw TCP server

/** A frame as the client sent it: its header bits, its masking key, its unmasked payload. */
interface ClientFrame {
  fin: boolean;
  opcode: number;
  maskKey: Uint8Array;
  payload: Uint8Array;
}

/** The client's request head, as read by the raw server. */
interface RequestHead {
  line: string;
  headers: Headers;
  names: string[];
}

/** The server end of one raw connection: reads the request and frames by hand. */
class RawPeer {
  readonly conn: Deno.Conn;
  #buffer = new Uint8Array(0);
  #pending: Promise<Uint8Array | null> | undefined;
  #eof = false;

  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  async #readChunk(): Promise<Uint8Array | null> {
    const chunk = new Uint8Array(64 * 1024);
    try {
      const count = await this.conn.read(chunk);
      return count === null ? null : chunk.subarray(0, count);
    } catch {
      return null; // a reset, or our own close: the end either way
    }
  }

  // Reads more bytes: "data", "eof", or "timeout" (the read stays pending for the next call).
  async #fill(ms: number): Promise<"data" | "eof" | "timeout"> {
    if (this.#eof) return "eof";
    this.#pending ??= this.#readChunk();
    const chunk = await settleWithin(this.#pending, Math.max(1, ms));
    if (chunk === TIMED_OUT) return "timeout";
    this.#pending = undefined;
    if (chunk === null) {
      this.#eof = true;
      return "eof";
    }
    const joined = new Uint8Array(this.#buffer.length + chunk.length);
    joined.set(this.#buffer);
    joined.set(chunk, this.#buffer.length);
    this.#buffer = joined;
    return "data";
  }

  async #more(deadline: number, what: string): Promise<boolean> {
    const result = await this.#fill(deadline - Date.now());
    if (result === "timeout") throw new Error(`raw server: no ${what} within the time`);
    return result === "data";
  }

  /** Reads the request head (up to the empty line). */
  async readHead(): Promise<RequestHead> {
    const deadline = Date.now() + TIMEOUT;
    let end: number;
    while ((end = new TextDecoder("latin1").decode(this.#buffer).indexOf("\r\n\r\n")) < 0) {
      if (!(await this.#more(deadline, "request head"))) throw new Error("raw server: EOF before the request head");
    }
    const [line, ...lines] = new TextDecoder("latin1").decode(this.#buffer.subarray(0, end)).split("\r\n");
    this.#buffer = this.#buffer.slice(end + 4);
    const headers = new Headers();
    const names: string[] = [];
    for (const header of lines) {
      const colon = header.indexOf(":");
      names.push(header.slice(0, colon));
      headers.append(header.slice(0, colon), header.slice(colon + 1).trim());
    }
    return { line, headers, names };
  }

  /** The next frame from the client, which must be masked (RFC 6455 5.1), or null at EOF. */
  async readFrame(ms = TIMEOUT): Promise<ClientFrame | null> {
    const deadline = Date.now() + ms;
    while (true) {
      const header = decodeHeader(this.#buffer, { masked: true }); // throws if unmasked
      if (header !== null && this.#buffer.length >= header.headerLength + header.payloadLength) {
        const { headerLength, payloadLength } = header;
        const maskKey = this.#buffer.slice(headerLength - 4, headerLength);
        const payload = this.#buffer.slice(headerLength, headerLength + payloadLength);
        applyMask(payload, maskKey);
        this.#buffer = this.#buffer.slice(headerLength + payloadLength);
        return { fin: header.fin, opcode: header.opcode, maskKey, payload };
      }
      if (!(await this.#more(deadline, "frame"))) {
        assertEquals(this.#buffer.length, 0, "raw server: EOF inside a frame");
        return null;
      }
    }
  }

  /** Reads a close frame from the client; returns its code and reason. */
  async readClose(): Promise<{ code: number; reason: string }> {
    const frame = await this.readFrame();
    if (frame === null) throw new Error("raw server: EOF instead of a close frame");
    assertEquals(frame.opcode, Opcode.Close, `raw server: expected a close frame, got opcode ${frame.opcode}`);
    return decodeClosePayload(frame.payload);
  }

  /**
   * Whether the client closes TCP within `ms` (no bytes may arrive meanwhile): true at
   * EOF, false if the connection is still open.
   */
  async endsWithin(ms: number): Promise<boolean> {
    const result = await this.#fill(ms);
    assert(result !== "data", "raw server: unexpected bytes from the client");
    return result === "eof";
  }

  async write(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    for (let offset = 0; offset < bytes.length;) offset += await this.conn.write(bytes.subarray(offset));
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

/** The 101 answer to `head`, with extra header lines, as one string. */
async function switching(head: RequestHead, extra: string[] = []): Promise<string> {
  const accept = await computeAcceptKey(head.headers.get("sec-websocket-key") ?? "");
  const lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"];
  return [...lines, `Sec-WebSocket-Accept: ${accept}`, ...extra, "", ""].join("\r\n");
}

/** A server frame (unmasked, RFC 6455 5.1) as bytes. */
function serverFrame(opcode: Opcode, payload: string | Uint8Array = new Uint8Array(0)): Uint8Array {
  return encodeFrame(opcode, payload);
}

function concat(...parts: (string | Uint8Array)[]): Uint8Array {
  const bytes = parts.map((part) => typeof part === "string" ? encoder.encode(part) : part);
  const joined = new Uint8Array(bytes.reduce((sum, part) => sum + part.length, 0));
  bytes.reduce((offset, part) => (joined.set(part, offset), offset + part.length), 0);
  return joined;
}

/** A TCP server on loopback that runs `handle` for each connection; `close()` rethrows its failures. */
class RawServer {
  readonly port: number;
  readonly hostname: string;
  #listener: Deno.Listener;
  #accepting: Promise<void>;
  #handled: Promise<void>[] = [];
  #errors: unknown[] = [];

  constructor(handle: (peer: RawPeer, index: number) => Promise<void>, hostname = "127.0.0.1") {
    const listener = Deno.listen({ hostname, port: 0 });
    this.#listener = listener;
    this.hostname = hostname;
    this.port = listener.addr.port;
    this.#accepting = (async () => {
      try {
        for await (const conn of listener) {
          const peer = new RawPeer(conn);
          const index = this.#handled.length;
          this.#handled.push(
            handle(peer, index).catch((error) => void this.#errors.push(error)).finally(() => peer.close()),
          );
        }
      } catch {
        // The listener was closed.
      }
    })();
  }

  get url(): string {
    return `ws://${this.hostname.includes(":") ? `[${this.hostname}]` : this.hostname}:${this.port}`;
  }

  /** Connections accepted so far. */
  get accepted(): number {
    return this.#handled.length;
  }

  async close(): Promise<void> {
    this.#listener.close();
    await this.#accepting;
    await within(Promise.all(this.#handled), 10_000, "raw connections to end");
    if (this.#errors.length > 0) throw this.#errors[0];
  }
}

/** Runs `body` against a raw server and always closes both. */
async function withRawServer(
  handle: (peer: RawPeer, index: number) => Promise<void>,
  body: (server: RawServer) => Promise<void>,
  hostname?: string,
): Promise<void> {
  const server = new RawServer(handle, hostname);
  try {
    await body(server);
  } finally {
    await server.close();
  }
}

// The server's part of a client-initiated close: read the close, echo it, close TCP.
async function answerClose(peer: RawPeer): Promise<void> {
  const { code } = await peer.readClose();
  await peer.write(serverFrame(Opcode.Close, encodeClosePayload(code)));
}

Deno.test("raw: the request line and headers; a fresh 16-byte key per connect; protocols and extra headers sent", async () => {
  const heads: RequestHead[] = [];
  await withRawServer(async (peer) => {
    const head = await peer.readHead();
    heads.push(head);
    await peer.write(await switching(head, ["Sec-WebSocket-Protocol: superchat"]));
    await answerClose(peer);
  }, async (server) => {
    for (let i = 0; i < 2; i++) {
      const client = await connect(`${server.url}/chat/room?name=a%20b`, {
        protocols: ["chat", "superchat"],
        headers: { Origin: "http://example.test", Authorization: "Bearer t0k3n" },
      });
      assertEquals(client.protocol, "superchat");
      client.close();
      await within(client.disconnected.promise, 2000, "the close");
      assertEquals(client.closeCode, 1000);
    }
  });
  assertEquals(heads.length, 2);
  const keys = heads.map((head) => head.headers.get("sec-websocket-key") ?? "");
  for (const { line, headers, names } of heads) {
    assertEquals(line, "GET /chat/room?name=a%20b HTTP/1.1");
    assertMatch(headers.get("host") ?? "", /^127\.0\.0\.1:\d+$/);
    assertEquals(headers.get("upgrade")?.toLowerCase(), "websocket");
    assert(/(^|,)\s*upgrade\s*(,|$)/i.test(headers.get("connection") ?? ""), headers.get("connection") ?? "");
    assertEquals(headers.get("sec-websocket-version"), "13");
    assertEquals(headers.get("sec-websocket-protocol"), "chat, superchat");
    assertEquals(headers.get("origin"), "http://example.test");
    assertEquals(headers.get("authorization"), "Bearer t0k3n");
    // Each header once: no duplicate that a server would join with a comma.
    assertEquals(new Set(names.map((name) => name.toLowerCase())).size, names.length, names.join(", "));
  }
  for (const key of keys) {
    assertMatch(key, /^[A-Za-z0-9+/]{22}==$/);
    assertEquals(Uint8Array.fromBase64(key).length, 16);
    assertNotEquals(key, "dGhlIHNhbXBsZSBub25jZQ=="); // the RFC's sample key
  }
  assertNotEquals(keys[0], keys[1]);
});

Deno.test("raw: Host for a default path and for an IPv6 address; the path defaults to /", async () => {
  for (const hostname of ["127.0.0.1", "::1"]) {
    const heads: RequestHead[] = [];
    await withRawServer(async (peer) => {
      const head = await peer.readHead();
      heads.push(head);
      await peer.write(await switching(head));
      await answerClose(peer);
    }, async (server) => {
      const client = await connect(server.url);
      client.close();
      await within(client.disconnected.promise, 2000, "the close");
      const host = hostname.includes(":") ? `[${hostname}]:${server.port}` : `${hostname}:${server.port}`;
      assertEquals([heads[0].line, heads[0].headers.get("host")], ["GET / HTTP/1.1", host]);
    }, hostname);
  }
});

Deno.test("raw: headers the handshake sets are refused with TypeError before connecting; so are bad URLs and injected lines", async () => {
  await withRawServer(async (peer) => {
    const head = await peer.readHead();
    await peer.write(await switching(head));
    await answerClose(peer);
  }, async (server) => {
    const reserved = [
      "Host",
      "upgrade",
      "Connection",
      "Sec-WebSocket-Key",
      "SEC-WEBSOCKET-VERSION",
      "Sec-WebSocket-Protocol",
      "sec-websocket-extensions",
    ];
    for (const name of reserved) {
      await assertRejects(() => Client.connect(server.url, { headers: { [name]: "x" } }), TypeError, name);
    }
    const invalid: Record<string, string>[] = [{ "Bad Name": "x" }, { "X-Injected": "a\r\nHost: evil.example" }, {
      "X-Newline": "a\nb",
    }];
    for (const headers of invalid) await assertRejects(() => Client.connect(server.url, { headers }), TypeError);
    for (const url of [`http://127.0.0.1:${server.port}/`, `${server.url}/#fragment`, "not a url"]) {
      await assertRejects(() => Client.connect(url), TypeError);
    }
    // None of them opened a connection: this one is the first.
    const client = await connect(server.url);
    assertEquals(server.accepted, 1);
    client.close();
    await within(client.disconnected.promise, 2000, "the close");
  });
});

Deno.test("raw: every client frame is masked with a fresh random key (1,100 messages, pings, the pong, the close)", async () => {
  const messages = Array.from(
    { length: 1100 },
    (_, i) => i % 100 === 99 ? pattern(70_000, i) : i % 2 ? `text ${i}` : pattern(i % 300, i),
  );
  const pings = Array.from({ length: 11 }, (_, i) => encoder.encode(`ping ${i}`));
  const frames: ClientFrame[] = [];
  await withRawServer(async (peer) => {
    await peer.write(await switching(await peer.readHead()));
    await peer.write(serverFrame(Opcode.Ping, "are you there"));
    for (let frame = await peer.readFrame(); frame !== null; frame = await peer.readFrame()) {
      frames.push(frame);
      if (frame.opcode === Opcode.Close) {
        await peer.write(serverFrame(Opcode.Close, frame.payload.subarray(0, 2)));
        break;
      }
    }
  }, async (server) => {
    const client = await connect(server.url);
    messages.forEach((msg, i) => {
      client.sendMessage(msg);
      if (i % 100 === 0) client.ping(pings[i / 100]);
    });
    client.close();
    await within(client.disconnected.promise, TIMEOUT, "the close");
    assertEquals(client.closeCode, 1000);
  });

  const data = frames.filter((frame) => frame.opcode === Opcode.Text || frame.opcode === Opcode.Binary);
  assertMessages(
    data.map((frame) => frame.opcode === Opcode.Text ? new TextDecoder().decode(frame.payload) : frame.payload),
    messages,
  );
  assert(data.every((frame) => frame.fin));
  const control = (opcode: number) => frames.filter((frame) => frame.opcode === opcode).map((frame) => frame.payload);
  assertEquals(control(Opcode.Ping), pings);
  assertEquals(control(Opcode.Pong), [encoder.encode("are you there")]);
  assertEquals(control(Opcode.Close).map(decodeClosePayload), [{ code: 1000, reason: "" }]);
  assertEquals(frames.length, 1100 + 11 + 1 + 1);

  // More keys than one batch of 1,024: a batch that is not drawn again would repeat.
  const keys = frames.map((frame) => frame.maskKey.join("."));
  const repeats = keys.length - new Set(keys).size;
  // 1,113 random 32-bit keys repeat with probability about 1.4e-4; three repeats are beyond chance.
  assert(repeats <= 2, `${repeats} repeated masking keys`);
  assert(keys.filter((key) => key === "0.0.0.0").length <= 1, "all-zero masking keys");
  // Each of the 4 bytes takes about 252 of the 256 values in random keys; a counter or a
  // key derived from a few bits takes far fewer.
  for (let byte = 0; byte < 4; byte++) {
    const values = new Set(frames.map((frame) => frame.maskKey[byte])).size;
    assert(values >= 200, `masking key byte ${byte} takes only ${values} values`);
  }
});

// The server's answers a strict client refuses (RFC 6455 4.1): the client rejects with
// a ProtocolError carrying the status and code, sends no frame, and closes TCP.
Deno.test("raw: answers the client refuses: wrong accept, 403, a redirect, unrequested subprotocol or extension", async (t) => {
  interface Case {
    name: string;
    answer: (head: RequestHead, port: number) => Promise<string>;
    status?: number;
    code?: string;
    message: RegExp;
    protocols?: string[];
  }
  const wrongAccept = async (head: RequestHead) =>
    (await switching(head)).replace(
      /Sec-WebSocket-Accept: .*\r\n/,
      `Sec-WebSocket-Accept: ${await computeAcceptKey("x")}\r\n`,
    );
  const cases: Case[] = [
    {
      name: "a wrong Sec-WebSocket-Accept",
      answer: wrongAccept,
      status: 101,
      code: "WS_ERR_INVALID_ACCEPT",
      message: /Accept/,
    },
    {
      name: "no Sec-WebSocket-Accept",
      answer: async (head) => (await switching(head)).replace(/Sec-WebSocket-Accept: .*\r\n/, ""),
      status: 101,
      code: "WS_ERR_INVALID_ACCEPT",
      message: /Accept/,
    },
    {
      name: "the accept key of the RFC's sample key",
      answer: async (head) =>
        (await switching(head)).replace(
          /Sec-WebSocket-Accept: .*\r\n/,
          "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
        ),
      status: 101,
      code: "WS_ERR_INVALID_ACCEPT",
      message: /Accept/,
    },
    {
      name: "403",
      answer: () =>
        Promise.resolve("HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\nConnection: close\r\n\r\nForbidden"),
      status: 403,
      code: "WS_ERR_HANDSHAKE_STATUS",
      message: /403/,
    },
    {
      name: "a 302 redirect (not followed)",
      answer: (_, port) =>
        Promise.resolve(
          `HTTP/1.1 302 Found\r\nLocation: ws://127.0.0.1:${port}/elsewhere\r\nContent-Length: 0\r\n\r\n`,
        ),
      status: 302,
      code: "WS_ERR_HANDSHAKE_STATUS",
      message: /302/,
    },
    {
      name: "200 OK",
      answer: () => Promise.resolve("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
      status: 200,
      message: /200/,
    },
    {
      name: "a subprotocol when none was offered",
      answer: (head) => switching(head, ["Sec-WebSocket-Protocol: chat"]),
      status: 101,
      code: "WS_ERR_UNREQUESTED_PROTOCOL",
      message: /chat/,
    },
    {
      name: "a subprotocol that was not offered",
      answer: (head) => switching(head, ["Sec-WebSocket-Protocol: superchat"]),
      protocols: ["chat"],
      status: 101,
      code: "WS_ERR_UNREQUESTED_PROTOCOL",
      message: /superchat/,
    },
    {
      name: "an extension",
      answer: (head) => switching(head, ["Sec-WebSocket-Extensions: permessage-deflate"]),
      status: 101,
      code: "WS_ERR_UNREQUESTED_EXTENSION",
      message: /permessage-deflate/,
    },
    {
      name: "no Upgrade header",
      answer: async (head) => (await switching(head)).replace("Upgrade: websocket\r\n", ""),
      status: 101,
      message: /Upgrade/,
    },
    {
      name: "Connection without upgrade",
      answer: async (head) => (await switching(head)).replace("Connection: Upgrade", "Connection: keep-alive"),
      status: 101,
      message: /Connection/,
    },
    {
      name: "an HTTP/1.0 status line",
      answer: async (head) => (await switching(head)).replace("HTTP/1.1", "HTTP/1.0"),
      message: /status line/,
    },
    { name: "no answer: the server closes", answer: () => Promise.resolve(""), message: /closed before/ },
  ];
  let current = cases[0];
  await withRawServer(async (peer) => {
    const head = await peer.readHead();
    const answer = await current.answer(head, (peer.conn.localAddr as Deno.NetAddr).port);
    if (answer === "") return;
    await peer.write(answer);
    // Nothing after the refused answer, and the client closes TCP.
    assertEquals(await peer.readFrame(), null);
  }, async (server) => {
    for (const [i, item] of cases.entries()) {
      current = item;
      await t.step(item.name, async () => {
        const error = await assertRejects(() => connect(server.url, { protocols: item.protocols }));
        assertInstanceOf(error, ProtocolError);
        assertMatch(error.message, item.message);
        if (item.status !== undefined) assertEquals(error.status, item.status);
        if (item.code !== undefined) assertEquals(error.code, item.code);
        assertEquals(server.accepted, i + 1, "one connection per connect: nothing followed");
      });
    }
  });
});

Deno.test("raw: an answer head over maxHeaderSize rejects, and says it is the answer", async () => {
  await withRawServer(async (peer) => {
    const head = await peer.readHead();
    // The client may close (and reset) while this is being written.
    await peer.write(await switching(head, [`X-Padding: ${"a".repeat(20_000)}`])).catch(() => {});
    assertEquals(await peer.readFrame(), null);
  }, async (server) => {
    const error = await assertRejects(() => connect(server.url, { maxHeaderSize: 16 * 1024 }), ProtocolError);
    assertEquals(error.code, "WS_ERR_HEAD_TOO_LARGE");
    // Not "Request head": the client's own request was fine.
    assertMatch(error.message, /^Handshake answer exceeds 16384 bytes$/);
  });
});

Deno.test("raw: silence rejects after handshakeTimeout (300 ms), before the head and within it", async (t) => {
  const answers = ["", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"];
  const ended = new Queue<number>();
  let current = "";
  await withRawServer(async (peer) => {
    await peer.readHead();
    if (current) await peer.write(current);
    assert(await peer.endsWithin(TIMEOUT), "the client did not close TCP");
    ended.push(performance.now());
  }, async (server) => {
    for (const answer of answers) {
      current = answer;
      await t.step(answer ? "a partial answer" : "no answer", async () => {
        const start = performance.now();
        const error = await assertRejects(() => connect(server.url, { handshakeTimeout: 300 }), ProtocolError);
        const elapsed = performance.now() - start;
        assertMatch(error.message, /300 ms/);
        assertEquals(error.code, "WS_ERR_HANDSHAKE_TIMEOUT");
        assert(elapsed >= 290 && elapsed < 2000, `rejected after ${elapsed.toFixed(0)} ms`);
        assert((await ended.next("the server to see the end")) - start < 2000, "TCP closed late");
      });
    }
  });
});

Deno.test("raw: a masked frame from the server: close 1002, not delivered, and the connection ends", async () => {
  let closeFrame: { code: number; reason: string } | undefined;
  await withRawServer(async (peer) => {
    await peer.write(await switching(await peer.readHead()));
    assertEquals((await peer.readFrame())?.payload, encoder.encode("go"));
    await peer.write(encodeFrame(Opcode.Text, "masked", { mask: true }));
    closeFrame = await peer.readClose();
    // The client waits for the server to close TCP (RFC 6455 7.1.1); the handler's end closes it.
    assertEquals(await peer.endsWithin(200), false, "the client closed TCP before the server");
  }, async (server) => {
    const client = await connect(server.url, { closeTimeout: 5000 });
    await client.sendMessage("go");
    await within(client.disconnected.promise, 2000, "the failed connection to end");
    assertEquals([client.closeCode, client.messages, client.disconnects], [1002, [], 1]);
  });
  assertEquals(closeFrame?.code, 1002);
});

Deno.test("raw: the server's close: echoed, and the client closes TCP only after the server (RFC 6455 7.1.1)", async () => {
  let client: Client | undefined;
  let afterFin = 0;
  await withRawServer(async (peer) => {
    await peer.write(await switching(await peer.readHead()));
    assertEquals((await peer.readFrame())?.payload, encoder.encode("go"));
    await peer.write(serverFrame(Opcode.Close, encodeClosePayload(4002, "done")));
    assertEquals(await peer.readClose(), { code: 4002, reason: "" }); // the echo: code only
    assertEquals(await peer.endsWithin(200), false, "the client closed TCP before the server");
    assertEquals(client?.disconnects, 0, "onDisconnect before the TCP close");
    const fin = performance.now();
    await peer.conn.closeWrite();
    assert(await peer.endsWithin(TIMEOUT), "no EOF after the server's FIN");
    afterFin = performance.now() - fin;
  }, async (server) => {
    client = await connect(server.url, { closeTimeout: 5000 });
    await client.sendMessage("go");
    await within(client.disconnected.promise, TIMEOUT, "the close");
    assertEquals([client.closeCode, client.closeReason, client.disconnects], [4002, "done", 1]);
  });
  // The client answered the FIN, not its closeTimeout.
  assert(afterFin < 2000, `the client closed TCP ${afterFin.toFixed(0)} ms after the FIN`);
});

Deno.test("raw: the client's close: the client still waits for the server's FIN after the echo", async () => {
  let client: Client | undefined;
  await withRawServer(async (peer) => {
    await peer.write(await switching(await peer.readHead()));
    assertEquals(await peer.readClose(), { code: 4000, reason: "client bye" });
    assertEquals(await peer.endsWithin(200), false, "the client closed TCP before the echo");
    await peer.write(serverFrame(Opcode.Close, encodeClosePayload(4000)));
    assertEquals(await peer.endsWithin(200), false, "the client closed TCP before the server");
    assertEquals(client?.disconnects, 0, "onDisconnect before the TCP close");
    await peer.conn.closeWrite();
    assert(await peer.endsWithin(TIMEOUT), "no EOF after the server's FIN");
  }, async (server) => {
    client = await connect(server.url, { closeTimeout: 5000 });
    client.close(4000, "client bye");
    await within(client.disconnected.promise, TIMEOUT, "the close");
    assertEquals([client.closeCode, client.disconnects], [4000, 1]);
  });
});

Deno.test("raw: closeTimeout (300 ms) bounds the wait for a server that never closes TCP", async (t) => {
  // "server close": the server sends a close and never closes TCP; "client close": it
  // echoes the client's close and never closes TCP; "no echo": it never answers the close.
  for (const mode of ["server close", "client close", "no echo"] as const) {
    await t.step(mode, async () => {
      let waited = 0;
      await withRawServer(async (peer) => {
        await peer.write(await switching(await peer.readHead()));
        if (mode === "server close") {
          // After the client's message, so that the close does not come with the 101.
          assertEquals((await peer.readFrame())?.payload, encoder.encode("go"));
          await peer.write(serverFrame(Opcode.Close, encodeClosePayload(4002, "done")));
          assertEquals((await peer.readClose()).code, 4002);
        } else {
          assertEquals((await peer.readClose()).code, 1000);
          if (mode === "client close") await peer.write(serverFrame(Opcode.Close, encodeClosePayload(1000)));
        }
        const start = performance.now();
        assert(await peer.endsWithin(TIMEOUT), "the client never closed TCP");
        waited = performance.now() - start;
      }, async (server) => {
        const client = await connect(server.url, { closeTimeout: 300 });
        if (mode === "server close") await client.sendMessage("go");
        else client.close();
        await within(client.disconnected.promise, TIMEOUT, "the close");
        assertEquals(client.disconnects, 1);
        if (mode === "server close") assertEquals(client.closeCode, 4002);
      });
      assert(waited >= 250 && waited < 2000, `the client closed TCP after ${waited.toFixed(0)} ms`);
    });
  }
});

Deno.test("raw: server frames of every length class arrive intact, alone in a read or not", async () => {
  // 0, 1, 125: the 7-bit length; 126, 65535: 16-bit; 65536 and more: 64-bit, and larger
  // than the read buffer. Unmasked frames from the server carry no key to apply.
  const sizes = [0, 1, 2, 3, 125, 126, 1000, 65535, 65536, 100_000];
  const messages = sizes.flatMap((size) => [pattern(size, size), "t".repeat(size)]);
  await withRawServer(async (peer) => {
    await peer.write(await switching(await peer.readHead()));
    // One message at a time, each written after the client's ack: alone in its read.
    for (const msg of messages) {
      await peer.write(serverFrame(typeof msg === "string" ? Opcode.Text : Opcode.Binary, msg));
      const reply = await peer.readFrame();
      if (reply?.opcode === Opcode.Close) {
        throw new Error(
          `the client closed with ${JSON.stringify(decodeClosePayload(reply.payload))} on ${describe(msg)}`,
        );
      }
      assertEquals(reply?.payload, encoder.encode("ack"));
    }
    // Then all at once: many in one read.
    await peer.write(
      concat(...messages.map((msg) => serverFrame(typeof msg === "string" ? Opcode.Text : Opcode.Binary, msg))),
    );
    await answerClose(peer);
  }, async (server) => {
    const client = await connect(server.url);
    for (let i = 1; i <= messages.length; i++) {
      await client.received(i);
      client.sendMessage("ack");
    }
    assertMessages(await client.received(2 * messages.length), [...messages, ...messages]);
    client.close();
    await within(client.disconnected.promise, 2000, "the close");
    assertEquals(client.closeCode, 1000);
  });
});

Deno.test("raw: maxPayload applies to the server's messages: close 1009", async () => {
  let code = 0;
  await withRawServer(async (peer) => {
    await peer.write(await switching(await peer.readHead()));
    await peer.write(serverFrame(Opcode.Binary, pattern(1000)));
    await peer.write(serverFrame(Opcode.Binary, pattern(1001)));
    code = (await peer.readClose()).code;
  }, async (server) => {
    const client = await connect(server.url, { maxPayload: 1000 });
    await within(client.disconnected.promise, TIMEOUT, "the close");
    assertEquals([client.messages.length, client.closeCode], [1, 1009]);
  });
  assertEquals(code, 1009);
});

// ---------------------------------------------------------------- frames in the 101's write

Deno.test("raw: frames in the same write as the 101 are delivered, even one cut across writes", async () => {
  const cut = serverFrame(Opcode.Text, "cut across writes");
  let pong: ClientFrame | null = null;
  await withRawServer(async (peer) => {
    const head = await peer.readHead();
    await peer.write(
      concat(
        await switching(head),
        serverFrame(Opcode.Text, "early"),
        serverFrame(Opcode.Binary, new Uint8Array([1, 2, 3])),
        serverFrame(Opcode.Ping, "ping"),
        cut.subarray(0, 5),
      ),
    );
    pong = await peer.readFrame();
    await peer.write(cut.subarray(5));
    await answerClose(peer);
  }, async (server) => {
    const client = await connect(server.url);
    assertMessages(await client.received(3), ["early", new Uint8Array([1, 2, 3]), "cut across writes"]);
    client.close();
    await within(client.disconnected.promise, 2000, "the close");
    assertEquals([client.closeCode, client.connects, client.disconnects], [1000, 1, 1]);
  });
  const answer = pong as ClientFrame | null;
  assertEquals([answer?.opcode, answer?.payload], [Opcode.Pong, encoder.encode("ping")]);
});

// The server answers the handshake and sends `frames` in the same write, then reads the
// client's close and checks that the client leaves closing TCP to it (RFC 6455 7.1.1); the
// client connects and waits for its disconnect.
interface After101 {
  closeFrame?: { code: number; reason: string }; // the client's close
  client?: Client;
  error?: unknown; // connect's rejection
}

async function framesWith101(frames: Uint8Array): Promise<After101> {
  const result: After101 = {};
  await withRawServer(async (peer) => {
    const head = await peer.readHead();
    await peer.write(concat(await switching(head), frames));
    result.closeFrame = await peer.readClose();
    assertEquals(await peer.endsWithin(200), false, "the client closed TCP before the server");
  }, async (server) => {
    try {
      result.client = await connect(server.url);
      await within(result.client.disconnected.promise, TIMEOUT, "the close");
    } catch (cause) {
      result.error = cause;
    }
  });
  return result;
}

Deno.test("raw: a close in the same write as the 101: connect resolves, the close is echoed, the server closes first", async () => {
  const { closeFrame, client, error } = await framesWith101(
    concat(serverFrame(Opcode.Text, "welcome"), serverFrame(Opcode.Close, encodeClosePayload(4003, "go away"))),
  );
  assertEquals(closeFrame?.code, 4003, "the close was not echoed");
  assertEquals(error, undefined, "connect rejected although the handshake succeeded");
  assertEquals(
    [client?.messages, client?.closeCode, client?.closeReason, client?.connects, client?.disconnects],
    [["welcome"], 4003, "go away", 1, 1],
  );
});

Deno.test("raw: a masked frame in the same write as the 101: connect resolves, not delivered, close 1002", async () => {
  const { closeFrame, client, error } = await framesWith101(encodeFrame(Opcode.Text, "masked", { mask: true }));
  assertEquals(closeFrame?.code, 1002);
  assertEquals(error, undefined, "connect rejected although the handshake succeeded");
  assertEquals([client?.messages, client?.closeCode, client?.connects, client?.disconnects], [[], 1002, 1, 1]);
});

// ---------------------------------------------------------------- permessage-deflate offered

// The echo scenario with the client offering permessage-deflate: the 100 KB binary and
// the 1 MiB text (over the threshold) go compressed both ways, or, when the server
// declines, nothing does.
async function compressedEchoScenario(
  start: () => EchoServer | Promise<EchoServer>,
  compression: ClientOptions["compression"],
  serverCompresses: boolean,
): Promise<void> {
  const before = { ...deflateStats };
  await runEchoScenario(start, { compression });
  const compressed = deflateStats.compressed - before.compressed;
  const inflated = deflateStats.inflated - before.inflated;
  if (serverCompresses) {
    // Two connections; the first sends both large messages, each echoed.
    assert(compressed >= 2, `${compressed} messages sent compressed`);
    assert(inflated >= 2, `${inflated} messages received compressed`);
  } else {
    assertEquals([compressed, inflated], [0, 0], "compressed messages");
  }
}

for (const mode of ["no-context-takeover", "context-takeover"] as const) {
  Deno.test({
    name: `interop deflate: the client (${mode}) with npm ws's server compressing`,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => compressedEchoScenario(() => wsEchoServer({ threshold: 0 }), { mode }, true),
  });
  Deno.test({
    name: `interop deflate: the client (${mode}) with Python websockets's server compressing`,
    ignore: pythonMissing,
    fn: () => compressedEchoScenario(() => pythonEchoServer(true), { mode }, true),
  });
}

Deno.test("interop deflate: Deno.serve declines the client's offer; messages go plain", () =>
  compressedEchoScenario(denoEchoServer, true, false));
