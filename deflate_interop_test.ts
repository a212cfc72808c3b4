// permessage-deflate with real clients that compress: Chromium (Debian's, through
// playwright-core), npm ws, Python websockets. An echo server counts the bytes on the
// wire; every message goes both ways compressed, with and without context takeover.
import { assert, assertEquals } from "@std/assert";
import { type Browser, chromium } from "playwright-core";
import WsClient from "ws";
import { deflateStats } from "./_deflate.ts";
import { type CompressionMode, type Connection, type HttpResponse, Protocol } from "./protocol.ts";
import { startServer } from "./server.ts";
import { encoder, jsonText, peerMissing, Queue, TIMEOUT, within } from "./test_util.ts";
import { type PeerScriptEvent, pythonChild, pythonMissing } from "./testdata/python.ts";

const SHARED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

type Message = string | Uint8Array;

/** A compressing client, seen as what it was answered and the messages it receives. */
interface DeflatePeer {
  /** The server's Sec-WebSocket-Extensions, as the client received it. */
  extensions: string | null;
  send(msg: Message): void;
  /** Sends one message in several frames; undefined when the client cannot. */
  sendFragments?(parts: string[]): void;
  next(): Promise<Message>;
  close(): Promise<void>;
}

/**
 * "default": the client's own offer; "no-context": it asks for no context takeover both
 * ways; "window-10": it asks the server for a 1 KiB window, which its inflater then has.
 */
type Offer = "default" | "no-context" | "window-10";

// Counts what goes over one connection, as the server reads and writes it.
class CountingConnection implements Connection {
  constructor(readonly conn: Deno.TcpConn, readonly counts: { read: number; written: number }) {}
  async read(buffer: Uint8Array): Promise<number | null> {
    const count = await this.conn.read(buffer);
    if (count !== null) this.counts.read += count;
    return count;
  }
  async write(bytes: Uint8Array): Promise<number> {
    const count = await this.conn.write(bytes);
    this.counts.written += count;
    return count;
  }
  close(): void {
    this.conn.close();
  }
  closeWrite(): Promise<void> {
    return this.conn.closeWrite();
  }
  setNoDelay(): void {
    this.conn.setNoDelay(true);
  }
}

class Echo extends Protocol {
  override onMessage(msg: Message): void {
    this.sendMessage(msg);
  }
  // A blank page, for a browser to open its socket from.
  override onHttpRequest(): HttpResponse {
    return { status: 200, headers: { "Content-Type": "text/html" }, body: "<!doctype html><title>echo</title>" };
  }
}

async function withEchoServer(
  mode: CompressionMode,
  body: (url: string, counts: { read: number; written: number }) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const counts = { read: 0, written: 0 };
  const served: Promise<void>[] = [];
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        const options = { compression: { mode }, pingInterval: 0, idleTimeout: 0, closeTimeout: 1000 };
        served.push(new Echo(new Map(), options).serve(new CountingConnection(conn, counts)));
      }
    } catch {
      // The listener was closed.
    }
  })();
  try {
    await body(`ws://127.0.0.1:${listener.addr.port}/`, counts);
  } finally {
    listener.close();
    await accepting;
    await within(Promise.all(served), 10_000, "connections to end");
  }
}

const byteLength = (msg: Message) => typeof msg === "string" ? encoder.encode(msg).length : msg.length;

// Text (one of them twice, for a window to help), binary, and a fragmented message,
// each echoed intact; every message was compressed both ways, and the wire carried a
// fraction of the bytes.
async function echoScenario(makePeer: (url: string) => Promise<DeflatePeer>, mode: CompressionMode, expected: string) {
  await withEchoServer(mode, async (url, counts) => {
    const peer = await makePeer(url);
    try {
      assertEquals(peer.extensions, expected);
      const before = { ...deflateStats };
      const messages: Message[] = [
        jsonText(40_000, 1),
        jsonText(40_000, 2),
        jsonText(40_000, 1),
        encoder.encode(jsonText(40_000, 3)),
      ];
      messages.push("κόσμε, " + jsonText(20_000, 4)); // not ASCII
      for (const msg of messages) {
        peer.send(msg);
        assertEquals(await peer.next(), msg);
      }
      if (peer.sendFragments) {
        const parts = [jsonText(10_000, 5), jsonText(10_000, 6), jsonText(10_000, 7)];
        peer.sendFragments(parts);
        const joined = parts.join("");
        assertEquals(await peer.next(), joined);
        messages.push(joined);
      }
      assertEquals(deflateStats.inflated - before.inflated, messages.length, "messages received compressed");
      assertEquals(deflateStats.compressed - before.compressed, messages.length, "messages sent compressed");
      const raw = messages.reduce((sum, msg) => sum + byteLength(msg), 0);
      assert(counts.read < raw / 3, `${counts.read} bytes read for ${raw} bytes of messages`);
      assert(counts.written < raw / 3, `${counts.written} bytes written for ${raw} bytes of messages`);
    } finally {
      await peer.close();
    }
  });
}

// The cases every client with a choice of offer runs: [server mode, offer, answer].
const CASES: [CompressionMode, Offer, string][] = [
  ["no-context-takeover", "default", SHARED],
  ["context-takeover", "default", "permessage-deflate"],
  ["context-takeover", "no-context", SHARED],
  ["no-context-takeover", "window-10", `${SHARED}; server_max_window_bits=10`],
  ["context-takeover", "window-10", "permessage-deflate; server_max_window_bits=10"],
];

// ---------------------------------------------------------------- npm ws

async function wsPeer(url: string, offer: Offer): Promise<DeflatePeer> {
  const inbox = new Queue<Message>();
  const perMessageDeflate = offer === "no-context"
    ? { threshold: 0, serverNoContextTakeover: true, clientNoContextTakeover: true }
    : offer === "window-10"
    ? { threshold: 0, serverMaxWindowBits: 10 }
    : { threshold: 0 };
  const socket = new WsClient(url, { perMessageDeflate });
  let extensions: string | null = null;
  const closed = Promise.withResolvers<void>();
  socket.on("upgrade", (response: { headers: Record<string, string> }) => {
    extensions = response.headers["sec-websocket-extensions"] ?? null;
  });
  socket.on("message", (data: Uint8Array, isBinary: boolean) => {
    inbox.push(isBinary ? new Uint8Array(data) : new TextDecoder().decode(data));
  });
  socket.on("close", () => closed.resolve());
  await within(new Promise((resolve, reject) => (socket.on("open", resolve), socket.on("error", reject))));
  return {
    extensions,
    send: (msg) => socket.send(msg),
    sendFragments: (parts) => parts.forEach((part, i) => socket.send(part, { fin: i === parts.length - 1 })),
    next: () => inbox.next("a message"),
    async close() {
      socket.close(1000);
      await within(closed.promise);
    },
  };
}

for (const [mode, offer, answer] of CASES) {
  Deno.test({
    name: `interop deflate: npm ws, server ${mode}, client offer ${offer}`,
    // ws keeps Node-compat timers and sockets that settle after the test.
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => echoScenario((url) => wsPeer(url, offer), mode, answer),
  });
}

// ---------------------------------------------------------------- Python websockets

async function pythonPeer(url: string, offer: Offer): Promise<DeflatePeer> {
  const python = pythonChild<PeerScriptEvent>("./python_peer.py", [url, offer]);
  const open = await python.events.next("the python client to connect", 10_000);
  if (open.ev !== "open") throw new Error(`expected the open event, got ${JSON.stringify(open)}`);
  return {
    extensions: open.extensions,
    send: (msg) =>
      python.send(typeof msg === "string" ? { op: "send", text: msg } : { op: "sendBinary", b64: msg.toBase64() }),
    sendFragments: (parts) => python.send({ op: "sendFragments", parts }),
    async next() {
      const event = await python.events.next("a message");
      if (event.ev === "text") return event.data;
      if (event.ev === "binary") return Uint8Array.fromBase64(event.b64);
      throw new Error(`expected a message, got ${JSON.stringify(event)}`);
    },
    async close() {
      python.send({ op: "close" });
      await python.endInput();
      await python.reading;
      assertEquals((await within(python.process.status, TIMEOUT, "the python client to exit")).code, 0);
    },
  };
}

for (const [mode, offer, answer] of CASES) {
  Deno.test({
    name: `interop deflate: Python websockets, server ${mode}, client offer ${offer}`,
    ignore: pythonMissing,
    fn: () => echoScenario((url) => pythonPeer(url, offer), mode, answer),
  });
}

// ---------------------------------------------------------------- Chromium

const CHROMIUM = "/usr/bin/chromium";
const chromiumMissing = peerMissing(() => Deno.statSync(CHROMIUM).isFile);

function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
}

// In-page code (a string: it runs in Chromium, where the DOM is). Binary crosses as base64.
const PAGE_CLIENT = `(url) => new Promise((resolve, reject) => {
  const toBase64 = (bytes) => { let s = ""; for (const b of bytes) s += String.fromCharCode(b); return btoa(s); };
  window.inbox = []; window.waiters = [];
  window.socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => {
    const msg = typeof event.data === "string" ? { text: event.data } : { b64: toBase64(new Uint8Array(event.data)) };
    const waiter = waiters.shift();
    if (waiter) waiter(msg); else inbox.push(msg);
  };
  window.nextMessage = () => inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => waiters.push(r));
  socket.onopen = () => resolve(socket.extensions);
  socket.onerror = () => reject(new Error("WebSocket error"));
})`;

async function chromiumPeer(browser: Browser, url: string): Promise<DeflatePeer> {
  const page = await browser.newPage();
  await page.goto(url.replace("ws:", "http:"));
  const extensions = await page.evaluate(`(${PAGE_CLIENT})(${JSON.stringify(url)})`) as string;
  return {
    extensions,
    send(msg) {
      const data = typeof msg === "string"
        ? JSON.stringify(msg)
        : `Uint8Array.from(atob(${JSON.stringify(msg.toBase64())}), (c) => c.charCodeAt(0))`;
      void page.evaluate(`socket.send(${data})`);
    },
    async next() {
      const msg = await within(page.evaluate("nextMessage()") as Promise<{ text?: string; b64?: string }>);
      return msg.text ?? Uint8Array.fromBase64(msg.b64!);
    },
    async close() {
      await page.evaluate("new Promise((resolve) => { socket.onclose = resolve; socket.close(1000); })");
      await page.close();
    },
  };
}

Deno.test({
  name: "interop deflate: Chromium, server with and without context takeover; the chat page negotiates deflate",
  ignore: chromiumMissing,
  async fn() {
    const browser = await launch();
    try {
      // Chromium offers "permessage-deflate; client_max_window_bits".
      await echoScenario((url) => chromiumPeer(browser, url), "no-context-takeover", SHARED);
      await echoScenario((url) => chromiumPeer(browser, url), "context-takeover", "permessage-deflate");
      // server.ts accepts it by default; its chat page's socket shows it.
      const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
      try {
        const page = await browser.newPage();
        await page.goto(`http://127.0.0.1:${server.addr.port}/`);
        await page.waitForFunction('document.getElementById("state").textContent === "open"', null, {
          timeout: 10_000,
        });
        assertEquals(await page.evaluate("socket.extensions"), SHARED);
        await page.close();
      } finally {
        await server.shutdown();
      }
    } finally {
      await browser.close();
    }
  },
});
