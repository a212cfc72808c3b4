// End-to-end across nodes: two Chromium pages (Debian's chromium, driven by
// playwright-core) on two server.ts nodes joined by a real redis-server chat in a room;
// a page in another room hears nothing.
import { assertEquals } from "@std/assert";
import { chromium, type Page } from "playwright-core";
import { cleanUp, redisMissing, RedisServer, ServerProcess } from "./testdata/cluster.ts";
import { peerMissing } from "./test_util.ts";

const CHROMIUM = "/usr/bin/chromium";
const ARTIFACTS = new URL("./artifacts/", import.meta.url).pathname;
const chromiumMissing = peerMissing(() => Deno.statSync(CHROMIUM).isFile);

async function waitForLine(page: Page, text: string): Promise<void> {
  const wanted = JSON.stringify(text);
  await page.waitForFunction(
    `[...document.querySelectorAll("#log li")].some((item) => item.textContent === ${wanted})`,
    null,
    { timeout: 10_000 },
  );
}

async function say(page: Page, text: string): Promise<void> {
  await page.fill("#text", text);
  await page.click("#send");
}

Deno.test({
  name: "e2e: two Chromium pages on two nodes chat through Redis; a page of another room hears nothing",
  ignore: chromiumMissing || redisMissing,
  sanitizeOps: false, // Playwright's pipes to the browser outlive the test's own ops
  sanitizeResources: false,
  async fn() {
    const redis = await RedisServer.start();
    const nodes: ServerProcess[] = [];
    let browser;
    try {
      nodes.push(await ServerProcess.start(["--redis", redis.url]));
      nodes.push(await ServerProcess.start(["--redis", redis.url]));
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
      });
      const open = async (url: string) => {
        const page = await (await browser!.newContext()).newPage();
        await page.goto(url);
        await page.waitForFunction('document.getElementById("state").textContent === "open"', null, {
          timeout: 10_000,
        });
        return page;
      };
      const alice = await open(`http://127.0.0.1:${nodes[0].port}/lobby`);
      const bob = await open(`http://127.0.0.1:${nodes[1].port}/lobby`);
      const carol = await open(`http://127.0.0.1:${nodes[1].port}/`);
      await alice.waitForFunction('document.querySelectorAll("#log li.notice").length === 1', null, {
        timeout: 10_000,
      });

      await say(alice, "hello from node one");
      await waitForLine(bob, "hello from node one");
      await say(bob, "hello back from node two");
      await waitForLine(alice, "hello back from node two");
      await waitForLine(bob, "hello back from node two");
      await say(carol, "only for room /");
      await waitForLine(carol, "only for room /");

      const log = (page: Page) => page.locator("#log li:not(.notice)").allTextContents();
      assertEquals(await log(alice), ["hello from node one", "hello back from node two"]);
      assertEquals(await log(bob), ["hello from node one", "hello back from node two"]);
      assertEquals(await log(carol), ["only for room /"]);
      await Deno.mkdir(ARTIFACTS, { recursive: true });
      await alice.screenshot({ path: `${ARTIFACTS}chat-cluster.png` });
    } finally {
      await browser?.close();
      await cleanUp([], [...nodes, redis]);
    }
  },
});
