// server.ts --workers: one port served by several workers, rooms across them over a
// PortBus, shutdown on SIGTERM; and the pool's restart of a crashed worker.
import { assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { parseServerArgs } from "./server.ts";
import { WorkerPool } from "./_workers.ts";
import { cleanUp, type Client, Client as WsClient, runBounded, ServerProcess } from "./testdata/cluster.ts";
import { within } from "./test_util.ts";

const SERVER = new URL("./server.ts", import.meta.url).pathname;

function sumOf(metrics: string, family: string): Map<string, number> {
  const perWorker = new Map<string, number>();
  for (const line of metrics.split("\n")) {
    const match = new RegExp(`^${family}\\{.*worker="(\\d+)".*\\} (\\d+)$`).exec(line);
    if (match) perWorker.set(match[1], (perWorker.get(match[1]) ?? 0) + Number(match[2]));
  }
  return perWorker;
}

Deno.test({
  name:
    "workers: --workers 2 serves 20 clients on one port, every message to every client; SIGTERM: 1001 to all, exit 0",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const server = await ServerProcess.start(["--workers", "2", "--metrics"], ["--unstable-net"]);
    const clients: Client[] = [];
    try {
      for (let i = 0; i < 20; i++) clients.push(await WsClient.open(server.url("/")));
      // Both workers have clients (SO_REUSEPORT spreads connections by their addresses):
      // the metrics of both, shared once a second, count 20 connections in room /.
      const deadline = Date.now() + 5000;
      let connections = new Map<string, number>();
      while (Date.now() < deadline) {
        connections = sumOf(await server.metrics(), "twistedws_connections");
        if ([...connections.values()].reduce((sum, count) => sum + count, 0) === 20) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assertEquals([...connections.keys()].sort(), ["0", "1"], `connections by worker: ${[...connections]}`);
      assertEquals(connections.get("0")! + connections.get("1")!, 20);

      clients.forEach((client, i) => client.socket.send(`from ${i}`));
      const expected = clients.map((_, i) => `from ${i}`).sort();
      for (const client of clients) assertEquals([...await client.received(20)].sort(), expected);

      const closes = clients.map((client) => client.closed);
      assertEquals(await server.stop("SIGTERM"), 0);
      for (const event of await within(Promise.all(closes), 10_000, "the clients to be closed")) {
        assertEquals([event.code, event.reason], [1001, "Server shutting down"]);
      }
    } finally {
      await cleanUp(clients, [server]);
    }
  },
});

Deno.test("CLI: --redis, --workers and --metrics become options; bad values are refused", () => {
  assertEquals(parseServerArgs(["--redis", "redis://127.0.0.1:6379", "--workers", "4", "--metrics"]), {
    port: 9999,
    quiet: false,
    verbose: false,
    page: true,
    redis: "redis://127.0.0.1:6379",
    workers: 4,
    metrics: true,
  });
  assertThrows(() => parseServerArgs(["--redis", "http://127.0.0.1:6379"]), Error, "--redis must be a URL such as");
  assertThrows(() => parseServerArgs(["--redis", "127.0.0.1:6379"]), Error, "--redis must be a URL such as");
  assertThrows(() => parseServerArgs(["--workers", "0"]), Error, "--workers must be an integer from 1 to 256");
  assertThrows(() => parseServerArgs(["--workers", "two"]), Error, "--workers must be an integer from 1 to 256");
});

Deno.test("workers: --workers without --unstable-net, or without -R, exits 2 and says why", async () => {
  const run = (flags: string[]) => runBounded(Deno.execPath(), ["run", "-N", ...flags, SERVER, "0", "--workers", "2"]);
  const unstable = await run(["-R"]);
  assertEquals(unstable.code, 2);
  assertStringIncludes(unstable.stderr, "error: --workers needs --unstable-net");
  const read = await run(["--unstable-net"]);
  assertEquals(read.code, 2);
  assertStringIncludes(read.stderr, "error: --workers needs read access");
});

Deno.test("workers: a crashed worker is restarted and logged, with new ports to the others; they keep serving", async () => {
  const lines: string[] = [];
  const logged = Promise.withResolvers<void>();
  let generation = 0;
  const pongs: ((started: string) => void)[] = [];
  const pool = new WorkerPool({
    onMessage: (_index, message) => pongs.shift()?.((message as { started: string }).started),
    module: new URL("./testdata/crash_worker.ts", import.meta.url),
    count: 2,
    init: (index) => ({ index, generation: generation++ }),
    log: (line) => {
      lines.push(line);
      if (/restarted$/.test(line)) logged.resolve();
    },
    restartDelay: 10,
    mesh: true,
  });
  try {
    await pool.start();
    pool.post(1, { type: "crash" });
    await within(logged.promise, 5000, "the restart");
    assertEquals(lines, [
      "[WORKER] 1 crashed (Uncaught Error: told to crash); restarting in 10 ms",
      "[WORKER] 1 restarted",
    ]);
    assertEquals(pool.restarts, 1);
    const ping = (index: number) => {
      const answer = Promise.withResolvers<string>();
      pongs.push(answer.resolve);
      pool.post(index, { type: "ping" });
      return within(answer.promise, 2000, "a pong");
    };
    // Worker 0 never stopped (its first start) and got a port to worker 1 each time that
    // started; worker 1 is a new one (a third start) with a port to worker 0.
    assertEquals(await ping(0), "0:0 peers 1,1");
    assertEquals(await ping(1), "1:2 peers 0");
  } finally {
    await pool.shutdown(2000);
  }
});
