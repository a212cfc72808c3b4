// End-to-end: the chat page in headless Chromium (Debian's), over ws:// and wss://.
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { type Browser, chromium, type Page } from "playwright-core";
import { type BroadcastServer, startServer } from "./server.ts";
import { peerMissing } from "./test_util.ts";

const CHROMIUM = "/usr/bin/chromium";
const ARTIFACTS = new URL("./artifacts/", import.meta.url).pathname;
const chromiumMissing = peerMissing(() => Deno.statSync(CHROMIUM).isFile);

async function launch(): Promise<Browser> {
  return await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--ignore-certificate-errors", // the wss test's self-signed certificate
    ],
  });
}

async function openChat(browser: Browser, url: string): Promise<Page> {
  const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
  await page.goto(url);
  await page.waitForFunction('document.getElementById("state").textContent === "open"', null, { timeout: 10_000 });
  return page;
}

const logOf = (page: Page) => page.locator("#log li").allTextContents();

// In-page checks are strings: they run in Chromium, where the DOM is.
async function waitForLine(page: Page, text: string): Promise<void> {
  const wanted = JSON.stringify(text);
  await page.waitForFunction(
    `[...document.querySelectorAll("#log li")].some((item) => item.textContent === ${wanted})`,
    null,
    {
      timeout: 10_000,
    },
  );
}

async function say(page: Page, text: string): Promise<void> {
  await page.fill("#text", text);
  await page.click("#send");
}

// Two pages chat through the server; markup in a message stays text.
async function chat(server: BroadcastServer, url: string, screenshot: string): Promise<void> {
  const browser = await launch();
  try {
    const alice = await openChat(browser, url);
    const bob = await openChat(browser, url);
    const bobId = [...server.users.keys()].at(-1)!;
    await waitForLine(alice, `${bobId} connected`);

    await say(alice, "hello from alice");
    await waitForLine(alice, "hello from alice");
    await waitForLine(bob, "hello from alice");

    const markup = "<script>window.pwned = 1</script><b>bold?</b>";
    await say(bob, markup);
    for (const page of [alice, bob]) {
      await waitForLine(page, markup);
      assertEquals(await page.locator("#log b").count(), 0, "a message was rendered as HTML");
      assertEquals(await page.evaluate("typeof window.pwned"), "undefined");
    }
    assertEquals(await logOf(bob), ["hello from alice", markup]); // no notice of its own arrival

    // Chromium offers permessage-deflate; the server accepts it, keeping no window.
    const offered = [...server.users.values()].map((user) => user.request?.headers.get("sec-websocket-extensions"));
    assert(offered.every((header) => header?.includes("permessage-deflate")), `offered ${offered}`);
    assertEquals(
      await alice.evaluate("socket.extensions"),
      "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    );

    await Deno.mkdir(ARTIFACTS, { recursive: true });
    await alice.screenshot({ path: `${ARTIFACTS}${screenshot}` });
    if (Deno.env.get("UPDATE_DOCS_SCREENSHOT")) {
      await alice.setViewportSize({ width: 720, height: 520 });
      await alice.screenshot({ path: new URL("./docs/chat.png", import.meta.url).pathname });
    }

    await bob.close();
    await waitForLine(alice, `${bobId} disconnected`);
  } finally {
    await browser.close();
  }
}

Deno.test({
  name: "e2e: two Chromium pages chat over ws://",
  ignore: chromiumMissing,
  sanitizeOps: false, // Playwright's pipes to the browser outlive the test's own ops
  sanitizeResources: false,
  async fn() {
    const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
    try {
      await chat(server, `http://127.0.0.1:${server.addr.port}/`, "chat-ws.png");
    } finally {
      await server.shutdown();
    }
  },
});

/** Makes a self-signed certificate for localhost with openssl, as the README shows. */
async function makeCertificate(dir: string): Promise<{ cert: string; key: string }> {
  const { success, stderr } = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-keyout",
      `${dir}/key.pem`,
      "-out",
      `${dir}/cert.pem`,
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-addext",
      "basicConstraints=critical,CA:FALSE",
    ],
    stdout: "null",
  }).output();
  assert(success, new TextDecoder().decode(stderr));
  return { cert: await Deno.readTextFile(`${dir}/cert.pem`), key: await Deno.readTextFile(`${dir}/key.pem`) };
}

Deno.test({
  name: "e2e: two Chromium pages chat over wss:// with a self-signed certificate",
  ignore: chromiumMissing,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true, ...await makeCertificate(dir) });
    try {
      const page = await fetch(`https://localhost:${server.addr.port}/`, {
        client: Deno.createHttpClient({ caCerts: [await Deno.readTextFile(`${dir}/cert.pem`)] }),
        signal: AbortSignal.timeout(10_000),
      });
      assertStringIncludes(await page.text(), "<!doctype html>");
      await chat(server, `https://localhost:${server.addr.port}/`, "chat-wss.png");
    } finally {
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
