// The CLI client (client.ts) as a user runs it: lines piped in, lines read out, exit status.

import { assertEquals, assertMatch } from "@std/assert";
import { startServer } from "./server.ts";
import { within } from "./test_util.ts";

const decoder = new TextDecoder();

function cli(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", "-R", "--config", "deno.json", "client.ts", ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

async function finish(child: Deno.ChildProcess): Promise<{ code: number; stdout: string; stderr: string }> {
  const { code, stdout, stderr } = await within(child.output(), 15_000, "client.ts");
  return { code, stdout: decoder.decode(stdout), stderr: decoder.decode(stderr) };
}

Deno.test("CLI client: lines piped in are sent, messages printed, exit 0 after the close at end of input", async () => {
  const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
  try {
    const child = cli([`ws://127.0.0.1:${server.addr.port}/`]);
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode("first line\nκαλημέρα\r\nlast, no newline"));
    await writer.close();
    const { code, stdout } = await finish(child);
    assertEquals(stdout.split("\n").filter(Boolean), ["first line", "καλημέρα", "last, no newline"]);
    assertEquals(code, 0);
  } finally {
    await server.shutdown();
  }
});

Deno.test("CLI client: a close other than 1000 exits 1 with the code on stderr", async () => {
  const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
  const child = cli([`ws://127.0.0.1:${server.addr.port}/`]);
  try {
    await within(
      (async () => {
        while (server.users.size === 0) await new Promise((resolve) => setTimeout(resolve, 10));
      })(),
      10_000,
      "client to connect",
    );
  } finally {
    await server.shutdown(); // closes every connection with 1001
  }
  const { code, stderr } = await finish(child);
  await child.stdin.close().catch(() => {});
  assertEquals(code, 1);
  assertMatch(stderr, /closed: 1001/);
});

Deno.test("CLI client: a refused connection exits 1 with the error; bad arguments exit 2 with the usage", async (t) => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close(); // nothing listens there now
  await t.step("refused", async () => {
    const child = cli([`ws://127.0.0.1:${port}/`]);
    await child.stdin.close();
    const { code, stderr } = await finish(child);
    assertEquals(code, 1);
    assertMatch(stderr, /^error: .*(refused|Connection)/i);
  });
  for (
    const args of [[], ["http://localhost/"], ["ws://localhost/", "--bogus"], ["ws://localhost/", "--header", "x"]]
  ) {
    await t.step(args.join(" ") || "(none)", async () => {
      const child = cli(args);
      await child.stdin.close();
      const { code, stderr } = await finish(child);
      assertEquals(code, 2);
      assertMatch(stderr, /^error: [\s\S]*Usage: deno run -N client.ts URL/);
    });
  }
});
