// Buses without sockets: the wire format byte by byte, LocalBus within this realm, and
// ChannelBus between this thread and a real Worker. Real Protocols over in-memory
// connections are the subscribers.
import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  attachBus,
  type Bus,
  BusMessageError,
  ChannelBus,
  decodeBusMessage,
  encodeBusMessage,
  LocalBus,
} from "./bus.ts";
import { Protocol } from "./protocol.ts";
import { closeInMemory, openInMemory } from "./testdata/memory_conn.ts";
import { within } from "./test_util.ts";

const OPTIONS = { pingInterval: 0, idleTimeout: 0, closeTimeout: 500 };
const ORIGIN = "0123abcd-4567-4890-9abc-def012345678";

Deno.test("bus wire format: the bytes of a text and a binary message", () => {
  const text = encodeBusMessage({ topic: "/é", msg: "hi☃", origin: ORIGIN });
  assertEquals(
    [...text],
    [
      1, // version
      1, // text
      ...[0x01, 0x23, 0xab, 0xcd, 0x45, 0x67, 0x48, 0x90, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78], // origin
      0,
      3, // topic length
      0x2f,
      0xc3,
      0xa9, // "/é"
      0x68,
      0x69,
      0xe2,
      0x98,
      0x83, // "hi☃"
    ],
  );
  const binary = encodeBusMessage({ topic: "", msg: new Uint8Array([0, 255]), origin: ORIGIN });
  assertEquals([...binary.subarray(0, 2)], [1, 2]);
  assertEquals([...binary.subarray(18)], [0, 0, 0, 255]);
  assertEquals(binary.byteOffset, 0);
  assertEquals(binary.buffer.byteLength, binary.length); // a buffer of its own
});

Deno.test("bus wire format: round trips keep text, binary, empty and large messages", () => {
  const large = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 7) % 256);
  const cases = [
    { topic: "/", msg: "", origin: ORIGIN },
    { topic: "/", msg: new Uint8Array(0), origin: ORIGIN },
    { topic: "/lobby", msg: "\uFEFFleading BOM kept, 😀", origin: ORIGIN },
    { topic: "t".repeat(65_535), msg: large, origin: crypto.randomUUID() },
  ];
  for (const message of cases) assertEquals(decodeBusMessage(encodeBusMessage(message)), message);
  // Text and binary stay apart even when their bytes are equal.
  assertEquals(typeof decodeBusMessage(encodeBusMessage({ topic: "", msg: "ab", origin: ORIGIN })).msg, "string");
  assert(
    decodeBusMessage(encodeBusMessage({ topic: "", msg: new Uint8Array([97, 98]), origin: ORIGIN })).msg instanceof
      Uint8Array,
  );
});

Deno.test("bus wire format: what does not encode or decode is refused with a precise error", () => {
  assertThrows(
    () => encodeBusMessage({ topic: "t".repeat(65_536), msg: "", origin: ORIGIN }),
    RangeError,
    "at most 65535 bytes, got 65536",
  );
  assertThrows(() => encodeBusMessage({ topic: "", msg: "", origin: "node-1" }), RangeError, "must be a UUID");
  const good = encodeBusMessage({ topic: "ab", msg: "cd", origin: ORIGIN });
  const with_ = (index: number, value: number) => good.map((byte, i) => i === index ? value : byte);
  const cases: [unknown, string][] = [
    ["a string", "must be bytes, got string"],
    [good.subarray(0, 19), "at least 20 bytes, got 19"],
    [with_(0, 2), "Unknown bus message version 2"],
    [with_(1, 0), "Unknown bus message kind 0"],
    [with_(1, 9), "Unknown bus message kind 9"],
    [with_(19, 5), "topic ends at byte 25, past its 24 bytes"],
    [with_(20, 0xff), "not valid UTF-8"], // in the topic
    [with_(23, 0xc3), "not valid UTF-8"], // a cut character in the text
  ];
  for (const [bytes, message] of cases) {
    assertThrows(() => decodeBusMessage(bytes as Uint8Array), BusMessageError, message);
  }
  // A binary payload is not checked: any bytes are a binary message.
  assertEquals(decodeBusMessage(with_(1, 2).map((byte, i) => i === 23 ? 0xc3 : byte)).msg, new Uint8Array([99, 0xc3]));
});

// Two users maps ("nodes"), each with a subscriber of "red", joined by two buses.
async function twoNodes(makeBus: () => Bus) {
  const nodes = [0, 1].map(() => {
    const users = new Map<string, Protocol>();
    const bus = makeBus();
    attachBus(users, bus);
    return { users, bus, handler: new Protocol(users, OPTIONS) };
  });
  const open = await Promise.all(nodes.map(({ handler }) => openInMemory(handler)));
  for (const { handler } of nodes) handler.subscribe("red");
  return {
    nodes,
    open,
    async close() {
      await Promise.all(open.map(closeInMemory));
      await Promise.all(nodes.map(({ bus }) => bus.close()));
    },
  };
}

for (
  const [name, makeBus] of [["LocalBus", () => new LocalBus("bus-test")], [
    "ChannelBus",
    () => new ChannelBus("bus-test"),
  ]] as const
) {
  Deno.test(`${name}: a publish reaches every node's subscribers exactly once, in order, unchanged`, async () => {
    const { nodes, open, close } = await twoNodes(makeBus);
    try {
      const sent: (string | Uint8Array)[] = [];
      for (let i = 0; i < 100; i++) sent.push(i % 2 ? `text ${i} ☃` : Uint8Array.of(i, 0, 255));
      for (const msg of sent) nodes[0].handler.publish("red", msg, { includeSelf: true });
      Protocol.publish(nodes[0].users, "blue", "to no one");
      assertEquals(await open[1].conn.received(100), sent);
      // A message back from node 1 comes after anything else on the bus: node 0 got
      // its own messages once (locally), none echoed.
      Protocol.publish(nodes[1].users, "red", "from node 1");
      assertEquals(await open[0].conn.received(101), [...sent, "from node 1"]);
      assertEquals(await open[1].conn.received(101), [...sent, "from node 1"]);
      assertEquals(nodes[0].bus.stats.published, 101);
      assertEquals(nodes[1].bus.stats.received, 101); // "blue" arrives too; it has no subscriber there
      assertEquals(nodes[0].bus.stats.received, 1);
    } finally {
      await close();
    }
  });
}

Deno.test("LocalBus: buses of another name are another cluster; a closed bus sends nothing", async () => {
  const a = new LocalBus("cluster-a");
  const b = new LocalBus("cluster-b");
  const c = new LocalBus("cluster-a");
  const received: string[] = [];
  b.listen((_topic, msg) => received.push(`b ${msg}`));
  c.listen((_topic, msg) => received.push(`c ${msg}`));
  assertEquals(a.publish("t", "one"), true);
  await Promise.resolve(); // LocalBus delivers in a microtask
  assertEquals(received, ["c one"]);
  await a.close();
  assertEquals(a.publish("t", "two"), false);
  assertEquals(a.stats.unsent, 1);
  assertEquals(a.stats.connected, false);
  await b.close();
  await c.close();
});

Deno.test("ChannelBus: a bus drops its own messages when they come back", async () => {
  const bus = new ChannelBus("bus-test-echo");
  const raw = new BroadcastChannel("bus-test-echo");
  try {
    const received: (string | Uint8Array)[] = [];
    const marker = Promise.withResolvers<void>();
    bus.listen((_topic, msg) => {
      received.push(msg);
      if (msg === "marker") marker.resolve();
    });
    const own = Promise.withResolvers<Uint8Array>();
    raw.onmessage = (event) => own.resolve(event.data);
    bus.publish("t", "mine");
    raw.postMessage(await within(own.promise, 2000, "the bus's bytes")); // as Redis hands a node its own publish
    // From the same sender, so after it (BroadcastChannel keeps each sender's order).
    raw.postMessage(encodeBusMessage({ topic: "t", msg: "marker", origin: crypto.randomUUID() }));
    await within(marker.promise, 2000, "the marker");
    assertEquals(received, ["marker"]);
    assertEquals(bus.stats.received, 1);
    assertEquals(bus.stats.undecodable, 0);
  } finally {
    raw.close();
    await bus.close();
  }
});

Deno.test("ChannelBus: an undecodable message is dropped and counted; the next one still arrives", async () => {
  const bus = new ChannelBus("bus-test-undecodable");
  const raw = new BroadcastChannel("bus-test-undecodable");
  const other = new ChannelBus("bus-test-undecodable");
  try {
    const received = Promise.withResolvers<string | Uint8Array>();
    bus.listen((_topic, msg) => received.resolve(msg));
    raw.postMessage("not bytes");
    raw.postMessage(new Uint8Array([1, 1, 2, 3]));
    other.publish("t", "after the garbage");
    assertEquals(await within(received.promise, 2000, "the good message"), "after the garbage");
    assertEquals(bus.stats.undecodable, 2);
    assertEquals(bus.stats.received, 1);
  } finally {
    raw.close();
    await bus.close();
    await other.close();
  }
});

Deno.test("ChannelBus: a real Worker's subscribers get this thread's publishes, and its publishes come back", async () => {
  const name = `bus-test-worker-${crypto.randomUUID()}`;
  const worker = new Worker(new URL("./testdata/channel_worker.ts", import.meta.url), { type: "module", name });
  const users = new Map<string, Protocol>();
  const bus = new ChannelBus(name);
  attachBus(users, bus);
  const subscriber = new Protocol(users, OPTIONS);
  const open = await openInMemory(subscriber);
  try {
    const ready = Promise.withResolvers<void>();
    worker.onmessage = () => ready.resolve();
    await within(ready.promise, 10_000, "the worker");
    subscriber.subscribe("pong");
    const binary = Uint8Array.from({ length: 70_000 }, (_, i) => i % 253);
    Protocol.publish(users, "ping", "hello worker");
    Protocol.publish(users, "ping", binary);
    // The worker's subscriber got both and published them back on "pong".
    assertEquals(await open.conn.received(2, 5000), ["hello worker", binary]);
  } finally {
    const closed = Promise.withResolvers<void>();
    worker.onmessage = () => closed.resolve();
    worker.postMessage("close");
    await within(closed.promise, 5000, "the worker to close").catch(() => {});
    worker.terminate();
    await closeInMemory(open);
    await bus.close();
  }
});
