// Topics across nodes over a real redis-server (Debian's), started on a free loopback
// port by each test: RedisBus on its own, then two server.ts processes with real clients.
import { assert, assertEquals, assertMatch, assertRejects, assertStringIncludes } from "@std/assert";
import { encodeBusPacket } from "./bus.ts";
import { RedisBus } from "./redis.ts";
import {
  cleanUp,
  type Client,
  Client as WsClient,
  freePort,
  rawPublish,
  redisMissing,
  RedisServer,
  runBounded,
  ServerProcess,
} from "./testdata/cluster.ts";

const REDIS_TEST = { ignore: redisMissing, sanitizeOps: false, sanitizeResources: false };

function metricValue(text: string, series: string): number {
  const line = text.split("\n").find((candidate) => candidate.startsWith(`${series} `));
  if (line === undefined) throw new Error(`no ${series} in:\n${text}`);
  return Number(line.slice(series.length + 1));
}

async function until(condition: () => boolean | Promise<boolean>, what: string, ms = 5000): Promise<number> {
  const start = Date.now();
  while (!(await condition())) {
    if (Date.now() - start > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return Date.now() - start;
}

// A redis-server and two buses on it, `a` with `options`; all stopped after `body`.
async function withTwoBuses(
  options: Parameters<typeof RedisBus.connect>[1],
  body: (redis: RedisServer, a: RedisBus, b: RedisBus) => Promise<void>,
): Promise<void> {
  const redis = await RedisServer.start();
  const a = await RedisBus.connect(redis.url, options);
  const b = await RedisBus.connect(redis.url);
  try {
    await body(redis, a, b);
  } finally {
    await a.close();
    await b.close();
    await redis.stop();
  }
}

Deno.test({
  name: "RedisBus: two buses deliver both ways, drop their own, keep text and binary, count undecodable messages",
  ...REDIS_TEST,
  async fn() {
    await withTwoBuses({}, async (redis, a, b) => {
      const gotA: [string, string | Uint8Array][] = [];
      const gotB: [string, string | Uint8Array][] = [];
      a.listen((topic, msg) => gotA.push([topic, msg]));
      b.listen((topic, msg) => gotB.push([topic, msg]));
      const binary = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 13) % 256);
      assertEquals(a.publish("/lobby", "héllo ☃"), true);
      assertEquals(a.publish("/lobby", binary), true);
      await rawPublish(redis.port, "twistedws", new TextEncoder().encode("not a bus message"));
      await rawPublish(
        redis.port,
        "twistedws",
        encodeBusPacket({ origin: crypto.randomUUID(), messages: [{ topic: "/", msg: "" }] }).subarray(0, 19),
      );
      assertEquals(b.publish("/", "from b"), true);
      await until(() => gotB.length === 2 && gotA.length === 1, "both messages");
      assertEquals(gotB, [["/lobby", "héllo ☃"], ["/lobby", binary]]);
      assertEquals(gotA, [["/", "from b"]]); // its own two were dropped
      await until(() => a.stats.undecodable === 2 && b.stats.undecodable === 2, "the undecodable counts");
      assertEquals([a.stats.published, a.stats.received, b.stats.published, b.stats.received], [2, 1, 1, 2]);
      assertEquals([a.stats.connected, b.stats.connected], [true, true]);
    });
  },
});

Deno.test({
  name: "RedisBus: Redis unreachable at the start: connect rejects within connectTimeout, naming the address",
  ...REDIS_TEST,
  async fn() {
    const port = freePort(); // nothing listens there
    const started = Date.now();
    const error = await assertRejects(() => RedisBus.connect(`redis://127.0.0.1:${port}`, { connectTimeout: 500 }));
    const elapsed = Date.now() - started;
    assertStringIncludes((error as Error).message, `cannot reach Redis at redis://127.0.0.1:${port}`);
    assert(elapsed >= 400 && elapsed < 3000, `rejected after ${elapsed} ms`);
  },
});

Deno.test({
  name: "RedisBus: Redis killed and restarted: publishes meanwhile are unsent, delivery resumes by itself",
  ...REDIS_TEST,
  async fn() {
    const lines: string[] = [];
    await withTwoBuses({ log: (line) => lines.push(line) }, async (redis, a, b) => {
      const got: (string | Uint8Array)[] = [];
      b.listen((_topic, msg) => got.push(msg));
      a.publish("t", "before");
      await until(() => got.length === 1, "the first message");
      await redis.kill();
      await until(() => !a.stats.connected && !b.stats.connected, "both buses to see the loss");
      assertEquals(a.publish("t", "during"), false);
      assertEquals(a.stats.unsent, 1);
      await redis.restart();
      const resumed = await until(() => a.stats.connected && b.stats.connected, "both buses to reconnect");
      assert(resumed < 5000, `reconnected after ${resumed} ms`);
      a.publish("t", "after");
      await until(() => got.length === 2, "the message after the restart");
      assertEquals(got, ["before", "after"]); // "during" is lost: at most once
      assertEquals([a.stats.reconnects, b.stats.reconnects], [1, 1]);
      assertMatch(lines.join("\n"), /lost Redis at .*; reconnecting\n.*connected to Redis at .* again/);
    });
  },
});

// Two server.ts nodes on one Redis; `body` gets them and always cleans up.
async function withCluster(
  body: (nodes: [ServerProcess, ServerProcess], redis: RedisServer, clients: Client[]) => Promise<void>,
  args: string[] = [],
): Promise<void> {
  const redis = await RedisServer.start();
  const nodes: ServerProcess[] = [];
  const clients: Client[] = [];
  try {
    nodes.push(await ServerProcess.start(["--redis", redis.url, ...args]));
    nodes.push(await ServerProcess.start(["--redis", redis.url, ...args]));
    await body(nodes as [ServerProcess, ServerProcess], redis, clients);
  } finally {
    await cleanUp(clients, [...nodes, redis]);
  }
}

async function open(clients: Client[], url: string): Promise<Client> {
  const client = await WsClient.open(url);
  clients.push(client);
  return client;
}

Deno.test({
  name: "cluster: two nodes on Redis: a room spans both, other rooms hear nothing, notices cross too",
  ...REDIS_TEST,
  async fn() {
    await withCluster(async ([one, two], _redis, clients) => {
      const aliceOne = await open(clients, one.url("/lobby"));
      const bobTwo = await open(clients, two.url("/lobby"));
      const carolTwo = await open(clients, two.url("/"));
      const daveOne = await open(clients, one.url("/other"));
      await aliceOne.notice(/ connected$/); // bob's, from node two
      // One message at a time: two publishers' messages have no order between them.
      aliceOne.socket.send("hello lobby");
      await bobTwo.received(1);
      bobTwo.socket.send(new Uint8Array([1, 2, 3]));
      assertEquals(await aliceOne.received(2), ["hello lobby", new Uint8Array([1, 2, 3])]);
      assertEquals(await bobTwo.received(2), ["hello lobby", new Uint8Array([1, 2, 3])]);
      // Room isolation: a message in another room, then one to carol's room to know all arrived.
      carolTwo.socket.send("root only");
      assertEquals(await carolTwo.received(1), ["root only"]);
      daveOne.socket.send("other only");
      assertEquals(await daveOne.received(1), ["other only"]);
      const marker = await open(clients, one.url("/lobby"));
      marker.socket.send("marker");
      await aliceOne.received(3);
      await bobTwo.received(3);
      assertEquals(bobTwo.messages, ["hello lobby", new Uint8Array([1, 2, 3]), "marker"]);
      assertEquals(carolTwo.messages, ["root only"]);
      assertEquals(daveOne.notices, []);
      assertEquals(carolTwo.notices, []);
      // A disconnect on node one is announced on node two.
      const before = bobTwo.notices.length;
      await marker.close();
      await bobTwo.notice(/ disconnected$/);
      assert(bobTwo.notices.length > before);
    });
  },
});

Deno.test({
  name: "cluster: 200 pipelined messages arrive in order on the other node; a 70 KB binary message intact",
  ...REDIS_TEST,
  async fn() {
    await withCluster(async ([one, two], _redis, clients) => {
      const sender = await open(clients, one.url("/pipe"));
      const receiver = await open(clients, two.url("/pipe"));
      await sender.notice(/ connected$/);
      const sent: (string | Uint8Array)[] = [];
      for (let i = 0; i < 200; i++) sent.push(i % 10 === 9 ? Uint8Array.of(i, 0, 255) : `message ${i} ✓`);
      const large = Uint8Array.from({ length: 70 * 1024 }, (_, i) => (i * 31 + 7) % 256);
      sent.push(large);
      for (const msg of sent) sender.socket.send(msg); // all in one go, not waiting
      assertEquals(await receiver.received(201, 10_000), sent);
      assertEquals(await sender.received(201, 10_000), sent);
    });
  },
});

Deno.test({
  name: "cluster: Redis killed and restarted mid-run: nodes keep serving locally, cross-node delivery resumes < 5 s",
  ...REDIS_TEST,
  async fn() {
    await withCluster(async ([one, two], redis, clients) => {
      const aliceOne = await open(clients, one.url("/"));
      const bobOne = await open(clients, one.url("/"));
      const carolTwo = await open(clients, two.url("/"));
      await aliceOne.notice(/ connected$/);
      aliceOne.socket.send("before");
      await carolTwo.received(1);
      await bobOne.received(1);

      await redis.kill();
      await until(async () => metricValue(await one.metrics(), "twistedws_bus_connected") === 0, "node one's bus down");
      await one.stdout.waitFor(/^\[BUS\] lost Redis at /);
      aliceOne.socket.send("during"); // local delivery goes on
      assertEquals(await bobOne.received(2), ["before", "during"]);
      assertEquals(await aliceOne.received(2), ["before", "during"]);

      await redis.restart();
      const restarted = Date.now();
      // Resumed once a message from node one reaches node two; "during" never does.
      let probes = 0;
      await until(
        () => {
          if (carolTwo.messages.some((msg) => typeof msg === "string" && msg.startsWith("probe"))) return true;
          aliceOne.socket.send(`probe ${probes++}`);
          return false;
        },
        "cross-node delivery to resume",
        5000,
      );
      const resumed = Date.now() - restarted;
      assert(resumed < 5000, `resumed after ${resumed} ms`);
      assertEquals(carolTwo.messages[0], "before");
      assert(!carolTwo.messages.includes("during"), "a message of the outage was delivered late");
      const metrics = await one.metrics();
      assertEquals(metricValue(metrics, "twistedws_bus_connected"), 1);
      assertEquals(metricValue(metrics, "twistedws_bus_reconnects_total"), 1);
      assert(metricValue(metrics, "twistedws_bus_unsent_total") >= 1, metrics);
    }, ["--metrics"]);
  },
});

Deno.test({
  name: "cluster: an undecodable Redis message is dropped and counted; the node keeps serving",
  ...REDIS_TEST,
  async fn() {
    await withCluster(async ([one, two], redis, clients) => {
      const aliceOne = await open(clients, one.url("/"));
      const bobTwo = await open(clients, two.url("/"));
      await rawPublish(redis.port, "twistedws", new Uint8Array([1, 9, 9, 9]));
      aliceOne.socket.send("still fine");
      assertEquals(await bobTwo.received(1), ["still fine"]);
      for (const node of [one, two]) {
        assertEquals(metricValue(await node.metrics(), "twistedws_bus_undecodable_total"), 1);
      }
      assertEquals(metricValue(await two.metrics(), `twistedws_connections{room="/"}`), 1);
    }, ["--metrics"]);
  },
});

Deno.test({
  name: "cluster: server.ts --redis exits 1 with a clear message when Redis is unreachable at the start",
  ignore: redisMissing,
  async fn() {
    const port = freePort();
    const server = new URL("./server.ts", import.meta.url).pathname;
    const output = await runBounded(Deno.execPath(), [
      "run",
      "-N",
      "-E",
      server,
      "0",
      "--redis",
      `redis://127.0.0.1:${port}`,
    ]);
    assertEquals(output.code, 1);
    assertStringIncludes(output.stderr, `error: cannot reach Redis at redis://127.0.0.1:${port}`);
  },
});

// One command over a raw RESP connection; resolves with the start of the answer.
async function redisCommand(port: number, ...args: string[]): Promise<string> {
  const encoder = new TextEncoder();
  const request = `*${args.length}\r\n` + args.map((arg) => `$${encoder.encode(arg).length}\r\n${arg}\r\n`).join("");
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(encoder.encode(request));
    const answer = new Uint8Array(256);
    const count = await conn.read(answer);
    return new TextDecoder().decode(answer.subarray(0, count ?? 0));
  } finally {
    conn.close();
  }
}

Deno.test({
  name: "RedisBus: a packet flushed just after the loss is counted unsent and never delivered late (at most once)",
  ...REDIS_TEST,
  async fn() {
    await withTwoBuses({}, async (redis, a, b) => {
      const got: (string | Uint8Array)[] = [];
      b.listen((_topic, msg) => got.push(msg));
      await redis.kill();
      await until(() => !a.stats.connected, "the loss");
      // What a publish's packet meets when it is flushed after the connection dropped and
      // before the bus noticed: node-redis refuses it at once instead of queueing it.
      const packet = encodeBusPacket({ origin: crypto.randomUUID(), messages: [{ topic: "t", msg: "raced" }] });
      const before = { ...a.stats };
      (a as unknown as { send(bytes: Uint8Array, count: number): void }).send(packet, 1);
      await until(() => a.stats.unsent === before.unsent + 1, "the refused packet to be counted unsent");
      assertEquals(a.stats.published, before.published - 1);
      await redis.restart();
      await until(() => a.stats.connected && b.stats.connected, "both buses to reconnect");
      a.publish("t", "after");
      await until(() => got.length > 0, "the message after the restart");
      assertEquals(got, ["after"]);
    });
  },
});

Deno.test({
  name: "RedisBus: after a 2 s outage it reconnects within maxReconnectDelay, past its connectTimeout",
  ...REDIS_TEST,
  async fn() {
    const redis = await RedisServer.start();
    const bus = await RedisBus.connect(redis.url, { maxReconnectDelay: 100, connectTimeout: 1000 });
    try {
      await redis.kill();
      await until(() => !bus.stats.connected, "the loss");
      // Long enough for an unbounded backoff to wait over a second between tries, and past
      // connectTimeout, which bounds only the first connection.
      await new Promise((resolve) => setTimeout(resolve, 2000));
      await redis.restart();
      const resumed = await until(() => bus.stats.connected, "the reconnect");
      assert(resumed < 700, `reconnected ${resumed} ms after Redis came back`);
      assertEquals(bus.stats.reconnects, 1);
    } finally {
      await bus.close();
      await redis.stop();
    }
  },
});

Deno.test({
  name: "RedisBus: its subscriber's connection lost alone is a loss, and its return a reconnect",
  ...REDIS_TEST,
  async fn() {
    const redis = await RedisServer.start();
    const lines: string[] = [];
    const bus = await RedisBus.connect(redis.url, { log: (line) => lines.push(line) });
    try {
      assertMatch(await redisCommand(redis.port, "CLIENT", "KILL", "TYPE", "pubsub"), /^:1\r\n/);
      await until(() => bus.stats.reconnects === 1, "the subscriber to reconnect");
      assertEquals(bus.stats.connected, true);
      assertMatch(lines.join("\n"), /lost Redis at .*; reconnecting\n.*connected to Redis at .* again/);
    } finally {
      await bus.close();
      await redis.stop();
    }
  },
});
