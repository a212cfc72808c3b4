import { assert, assertEquals, assertMatch, assertStringIncludes, assertThrows } from "@std/assert";
import WsClient from "ws";
import { Opcode } from "./frame.ts";
import { parseServerArgs, startServer } from "./server.ts";
import { Queue, RawClient, TIMEOUT, within } from "./test_util.ts";
import { type PeerScriptEvent, pythonChild, pythonMissing } from "./testdata/python.ts";
import { freePort, Lines } from "./testdata/cluster.ts";

// ---------------------------------------------------------------- real clients, one scenario

type PeerEvent =
  | { ev: "open" }
  | { ev: "text"; data: string }
  | { ev: "binary"; length: number; sum: number }
  | { ev: "close"; code: number; reason: string };

/** A WebSocket client of some implementation, seen as a stream of events. */
interface Peer {
  next(): Promise<PeerEvent>;
  send(text: string): void;
  sendBinary(size: number): void;
  close(code: number, reason: string): void;
  /** Resolves when the client (and its process, if any) is gone. */
  done(): Promise<void>;
}

const pattern = (size: number) => new Uint8Array(size).map((_, i) => i % 251);
const checksum = (bytes: Uint8Array) => bytes.reduce((sum, byte) => (sum + byte) % 2 ** 32, 0);
const binaryEvent = (bytes: Uint8Array): PeerEvent => ({ ev: "binary", length: bytes.length, sum: checksum(bytes) });

// A Peer over a client object with send(data) and close(code, reason), as both the
// browser-style WebSocket and ws have.
function socketPeer(
  socket: { send(data: string | Uint8Array): void; close(code: number, reason: string): void },
  events: Queue<PeerEvent>,
  closed: Promise<void>,
): Peer {
  return {
    next: () => events.next(),
    send: (text) => socket.send(text),
    sendBinary: (size) => socket.send(pattern(size)),
    close: (code, reason) => socket.close(code, reason),
    done: () => within(closed, TIMEOUT, "the client to close"),
  };
}

function denoPeer(url: string): Peer {
  const events = new Queue<PeerEvent>();
  const closed = Promise.withResolvers<void>();
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => events.push({ ev: "open" });
  socket.onmessage = (event) =>
    events.push(
      typeof event.data === "string" ? { ev: "text", data: event.data } : binaryEvent(new Uint8Array(event.data)),
    );
  socket.onclose = (event) => {
    events.push({ ev: "close", code: event.code, reason: event.reason });
    closed.resolve();
  };
  return socketPeer(socket, events, closed.promise);
}

function nodeWsPeer(url: string): Peer {
  const events = new Queue<PeerEvent>();
  const closed = Promise.withResolvers<void>();
  const socket = new WsClient(url, { perMessageDeflate: false });
  socket.on("open", () => events.push({ ev: "open" }));
  socket.on(
    "message",
    (data: Uint8Array, isBinary: boolean) =>
      events.push(isBinary ? binaryEvent(new Uint8Array(data)) : { ev: "text", data: new TextDecoder().decode(data) }),
  );
  socket.on("close", (code: number, reason: Uint8Array) => {
    events.push({ ev: "close", code, reason: new TextDecoder().decode(reason) });
    closed.resolve();
  });
  return socketPeer(socket, events, closed.promise);
}

// next() reports python_peer.py's events as the other peers do (binary by length and sum).
function pythonPeer(url: string): Peer {
  const python = pythonChild<PeerScriptEvent>("./python_peer.py", [url]);
  return {
    async next() {
      const event = await python.events.next("client event");
      if (event.ev === "open") return { ev: "open" };
      if (event.ev === "binary") return binaryEvent(Uint8Array.fromBase64(event.b64));
      return event;
    },
    send: (text) => python.send({ op: "send", text }),
    sendBinary: (size) => python.send({ op: "sendBinary", b64: pattern(size).toBase64() }),
    close: (code, reason) => python.send({ op: "close", code, reason }),
    async done() {
      await python.endInput();
      await within(python.reading, TIMEOUT, "the python client's output to end");
      assertEquals((await within(python.process.status, TIMEOUT, "python client to exit")).code, 0);
    },
  };
}

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + TIMEOUT;
  while (!condition()) {
    assert(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function expectEvent(peer: Peer, expected: PeerEvent): Promise<void> {
  assertEquals(await peer.next(), expected);
}

// Two clients of one implementation on the broadcast server: notices, text, binary,
// a client's close with its code, the server's shutdown with 1001.
async function broadcastScenario(makePeer: (url: string) => Peer): Promise<void> {
  const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
  const url = `ws://127.0.0.1:${server.addr.port}/`;
  try {
    const a = makePeer(url);
    await expectEvent(a, { ev: "open" });
    await until(() => server.users.size === 1, "the first user");
    const b = makePeer(url);
    await expectEvent(b, { ev: "open" });

    const notice = await a.next();
    if (notice.ev !== "text") throw new Error(`expected a connect notice, got ${JSON.stringify(notice)}`);
    assertMatch(notice.data, /^[0-9a-f-]{36} connected$/);
    const bId = notice.data.split(" ")[0];
    assert(server.users.has(bId));

    a.send("hello from a");
    await expectEvent(a, { ev: "text", data: "hello from a" });
    await expectEvent(b, { ev: "text", data: "hello from a" }); // b never saw its own notice

    b.sendBinary(70_000);
    const binary = binaryEvent(pattern(70_000));
    await expectEvent(a, binary);
    await expectEvent(b, binary);

    b.close(4000, "bye");
    const closed = await b.next();
    assertEquals(closed.ev === "close" && closed.code, 4000);
    await expectEvent(a, { ev: "text", data: `${bId} disconnected` });
    await b.done();
    await until(() => server.users.size === 1, "the user to leave");

    await server.shutdown();
    const shutdown = await a.next();
    assertEquals(shutdown.ev === "close" && [shutdown.code, shutdown.reason], [1001, "Server shutting down"]);
    await a.done();
    assertEquals(server.users.size, 0);
  } finally {
    await server.shutdown();
  }
}

Deno.test("interop: Deno's WebSocket client", () => broadcastScenario(denoPeer));

Deno.test({
  name: "interop: the npm ws client",
  // ws keeps Node-compat timers and sockets that settle after the test.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () => broadcastScenario(nodeWsPeer),
});

Deno.test({
  name: "interop: Python websockets (Debian python3-websockets)",
  ignore: pythonMissing,
  fn: () => broadcastScenario(pythonPeer),
});

// ---------------------------------------------------------------- the README example

Deno.test("README: the ported TwistedWebsocket example runs as written", async () => {
  const readme = await Deno.readTextFile(new URL("./README.md", import.meta.url));
  const section = readme.slice(readme.indexOf("## Example: TwistedWebsocket's broadcast server"));
  // The fence says `ts ignore` so that `deno test --doc` does not start a server that never ends; this test runs it.
  const start = section.indexOf("\n", section.indexOf("```ts")) + 1;
  const code = section.slice(start, section.indexOf("\n```", start));
  assertStringIncludes(code, "class WebSocketHandler extends Protocol");
  const file = new URL("./.example_test_tmp.ts", import.meta.url).pathname;
  await Deno.writeTextFile(file, code);
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", file, String(port)],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    let socket: WebSocket | undefined;
    const deadline = Date.now() + 20_000; // the first run may type-check
    while (!socket) {
      assert(Date.now() < deadline, "the example never accepted a connection");
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port })).close();
        socket = new WebSocket(`ws://127.0.0.1:${port}/`);
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    const sockets = [socket, new WebSocket(`ws://127.0.0.1:${port}/`)];
    const received = sockets.map(() => [] as string[]);
    const enough = sockets.map(() => Promise.withResolvers<void>());
    sockets.forEach((ws, i) =>
      ws.onmessage = (event) => {
        received[i].push(event.data);
        if (received[i].includes("hi all")) enough[i].resolve();
      }
    );
    await within(Promise.all(sockets.map((ws) => new Promise((resolve) => ws.onopen = resolve))));
    await new Promise((resolve) => setTimeout(resolve, 100));
    sockets[1].send("hi all");
    await within(Promise.all(enough.map((signal) => signal.promise)));
    assert(received[0].some((message) => / connected$/.test(message)), "no connect notice");
    const closed = sockets.map((ws) => new Promise((resolve) => ws.onclose = resolve));
    sockets.forEach((ws) => ws.close());
    await within(Promise.all(closed));
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await child.stdout.cancel();
    await Deno.remove(file);
  }
});

// ---------------------------------------------------------------- the command line

const SERVER = new URL("./server.ts", import.meta.url).pathname;

async function runServer(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(Deno.execPath(), { args: ["run", "-N", "-R", SERVER, ...args] }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: output.code, stdout: decode(output.stdout), stderr: decode(output.stderr) };
}

Deno.test("CLI: bad arguments print the error and the usage and exit 2", async (t) => {
  const cases: [string[], string][] = [
    [["--bogus"], "Unknown option --bogus"],
    [["70000"], "PORT must be an integer from 0 to 65535"],
    [["abc"], "PORT must be an integer"],
    [["1", "2"], "at most one PORT"],
    [["--max-payload", "0"], "--max-payload must be"],
    [["--cert", "cert.pem"], "--cert and --key go together"],
    [["--cert", "/nonexistent.pem", "--key", "/nonexistent.pem"], "--cert /nonexistent.pem"],
  ];
  for (const [args, message] of cases) {
    await t.step(args.join(" "), async () => {
      const { code, stderr } = await runServer(...args);
      assertEquals(code, 2, stderr);
      assertStringIncludes(stderr, message);
      assertStringIncludes(stderr, "Usage:");
      assert(!/^\s+at /m.test(stderr), "a stack trace was printed");
    });
  }
  const help = await runServer("--help");
  assertEquals(help.code, 0);
  assertStringIncludes(help.stdout, "Usage: deno run -N server.ts [PORT]");
});

Deno.test("CLI: flags become options", () => {
  assertEquals(parseServerArgs([]), { port: 9999, quiet: false, verbose: false, page: true });
  const options = parseServerArgs(["8080", "--hostname", "::1", "--max-payload", "1024", "--no-page", "--quiet"]);
  assertEquals(options, { port: 8080, hostname: "::1", maxPayload: 1024, page: false, quiet: true, verbose: false });
  assertEquals(parseServerArgs(["--origin", "https://a.example", "--origin", "https://b.example"])?.allowedOrigins, [
    "https://a.example",
    "https://b.example",
  ]);
  assertEquals(parseServerArgs(["--help"]), undefined);
});

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.test(`CLI: logs events; on ${signal} closes clients with 1001 and exits 0`, async () => {
    const port = freePort();
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-N", SERVER, String(port), "--hostname", "127.0.0.1", "--verbose"],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const log = new Lines(child.stdout);
    try {
      await log.waitFor(/^Listening on ws:\/\/127\.0\.0\.1:\d+\/$/);
      const client = await RawClient.open(port, { Origin: "http://example.test" });
      const handshake = await log.waitFor(/^\[HANDSHAKE\] /);
      const id = handshake.split(" ")[1];
      assertEquals(handshake, `[HANDSHAKE] ${id} origin: http://example.test`);
      await log.waitFor(new RegExp(`^\\[CONNECTION\\] ${id} connected$`));
      await client.send(Opcode.Text, "logged");
      assertEquals((await client.readFrame())?.message(), "logged");
      await log.waitFor(/^\[MESSAGE\] from .* to 1 users: logged$/);
      child.kill(signal);
      const close = await client.readUntilClose();
      assertEquals(close.code, 1001);
      await client.sendClose(1001);
      await client.expectEnd();
      client.close();
      assertEquals((await within(child.status, 10_000, "the server to exit")).code, 0);
    } finally {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already exited.
      }
      await child.status;
      await log.done;
    }
  });
}

// ---------------------------------------------------------------- the chat page

Deno.test("chat page: GET / and room paths are the page, file paths 404, other methods 405, --no-page 400", async () => {
  const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
  const plain = startServer({ port: 0, hostname: "127.0.0.1", quiet: true, page: false });
  try {
    const base = `http://127.0.0.1:${server.addr.port}`;
    // Each request, body included, is aborted after TIMEOUT rather than waited for.
    const signal = AbortSignal.timeout(TIMEOUT);
    const page = await fetch(`${base}/`, { signal });
    assertEquals(page.status, 200);
    assertEquals(page.headers.get("content-type"), "text/html; charset=utf-8");
    assertStringIncludes(await page.text(), "<!doctype html>");
    // Rooms are paths: the page at /lobby joins room /lobby.
    const room = await fetch(`${base}/lobby`, { signal });
    assertEquals(room.status, 200);
    assertStringIncludes(await room.text(), "location.pathname");
    const missing = await fetch(`${base}/favicon.ico`, { signal });
    assertEquals(missing.status, 404);
    await missing.body?.cancel();
    const post = await fetch(`${base}/`, { method: "POST", body: "x", signal });
    assertEquals(post.status, 405);
    await post.body?.cancel();
    const refused = await fetch(`http://127.0.0.1:${plain.addr.port}/`, { signal });
    assertEquals(refused.status, 400);
    await refused.body?.cancel();
  } finally {
    await server.shutdown();
    await plain.shutdown();
  }
});

// ---------------------------------------------------------------- options and flags, in process

/** Opens a client on `port`, sends `text`, reads its echo and closes cleanly. */
async function echoOnce(port: number, text: string): Promise<void> {
  const client = await RawClient.open(port);
  try {
    await client.send(Opcode.Text, text);
    assertEquals((await client.readFrame())?.message(), text);
    await client.sendClose(1000);
    assertEquals((await client.readUntilClose()).code, 1000);
    await client.expectEnd();
  } finally {
    client.close();
  }
}

Deno.test("startServer: events are logged, messages only with verbose: true, nothing with quiet: true", async () => {
  const logs: Record<string, string[]> = { plain: [], verbose: [], quiet: [] };
  const options = { port: 0, hostname: "127.0.0.1" };
  const servers = {
    plain: startServer({ ...options, log: (line) => logs.plain.push(line) }),
    verbose: startServer({ ...options, verbose: true, log: (line) => logs.verbose.push(line) }),
    quiet: startServer({ ...options, quiet: true, verbose: true, log: (line) => logs.quiet.push(line) }),
  };
  try {
    for (const [name, server] of Object.entries(servers)) await echoOnce(server.addr.port, `to ${name}`);
  } finally {
    for (const server of Object.values(servers)) await server.shutdown();
  }
  const kinds = (lines: string[]) => lines.map((line) => line.split(" ")[0]);
  assertEquals(kinds(logs.plain), ["[HANDSHAKE]", "[CONNECTION]", "[DISCONNECTION]"]);
  assertEquals(kinds(logs.verbose), ["[HANDSHAKE]", "[CONNECTION]", "[MESSAGE]", "[DISCONNECTION]"]);
  assertStringIncludes(logs.verbose[2], "to 1 users: to verbose");
  assertEquals(logs.quiet, []);
});

Deno.test("startServer: without a hostname it listens on every IPv4 address, 0.0.0.0", async () => {
  const server = startServer({ port: 0, quiet: true });
  try {
    assertEquals(server.addr.hostname, "0.0.0.0");
    await echoOnce(server.addr.port, "over loopback");
  } finally {
    await server.shutdown();
  }
});

Deno.test("startServer: /metrics answers GET and refuses other methods with 405 and Allow: GET", async () => {
  const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true, metrics: true });
  try {
    const url = `http://127.0.0.1:${server.addr.port}/metrics`;
    const signal = AbortSignal.timeout(TIMEOUT);
    const get = await fetch(url, { signal });
    assertEquals(get.status, 200);
    await get.body?.cancel();
    const post = await fetch(url, { method: "POST", body: "x", signal });
    assertEquals([post.status, post.headers.get("allow")], [405, "GET"]);
    await post.body?.cancel();
  } finally {
    await server.shutdown();
  }
});

Deno.test("CLI: integers are decimal digits only; --max-connections sets maxConnections", () => {
  for (const text of ["1e3", "0x10", "12.5", "", " 80", "+80", "-1"]) {
    assertThrows(() => parseServerArgs([`--max-connections=${text}`]), Error, "--max-connections must be an integer");
    assertThrows(() => parseServerArgs([`--workers=${text}`]), Error, "--workers must be an integer");
  }
  const options = parseServerArgs(["--max-connections", "5"]);
  assertEquals([options?.maxConnections, options?.maxPayload], [5, undefined]);
  assertEquals(parseServerArgs(["--max-payload", "007"])?.maxPayload, 7);
});

Deno.test("CLI: a port in use exits 1, not 2 (the usage error)", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const { code, stderr } = await runServer(String(taken.addr.port), "--hostname", "127.0.0.1", "--quiet");
    assertEquals(code, 1, stderr);
    assertStringIncludes(stderr, "cannot listen");
  } finally {
    taken.close();
  }
});
