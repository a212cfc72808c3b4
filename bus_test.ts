// Buses without sockets: the wire format byte by byte, LocalBus within this realm, and
// PortBus within this thread and between it and a real Worker. Real Protocols over in-memory
// connections are the subscribers.
import { assert, assertEquals, assertThrows } from "@std/assert";
import { attachBus, type Bus, BusPacketError, decodeBusPacket, encodeBusPacket, LocalBus, PortBus } from "./bus.ts";
import { Protocol } from "./protocol.ts";
import { closeInMemory, openInMemory } from "./testdata/memory_conn.ts";
import { within } from "./test_util.ts";

const OPTIONS = { pingInterval: 0, idleTimeout: 0, closeTimeout: 500 };
const ORIGIN = "0123abcd-4567-4890-9abc-def012345678";

Deno.test("bus wire format: the bytes of a packet of a text and a binary message", () => {
  const bytes = encodeBusPacket({
    origin: ORIGIN,
    messages: [{ topic: "/é", msg: "hi☃" }, { topic: "", msg: new Uint8Array([0, 255]) }],
  });
  assertEquals(
    [...bytes],
    [
      1, // version
      ...[0x01, 0x23, 0xab, 0xcd, 0x45, 0x67, 0x48, 0x90, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78], // origin
      1, // text
      ...[0, 3], // topic length
      ...[0, 0, 0, 5], // payload length
      ...[0x2f, 0xc3, 0xa9], // "/é"
      ...[0x68, 0x69, 0xe2, 0x98, 0x83], // "hi☃"
      2, // binary
      ...[0, 0],
      ...[0, 0, 0, 2],
      ...[0, 255],
    ],
  );
  assertEquals(bytes.byteOffset, 0);
  assertEquals(bytes.buffer.byteLength, bytes.length); // a buffer of its own
});

Deno.test("bus wire format: a message of an empty topic and an empty text is its 7-byte head alone", () => {
  const bytes = encodeBusPacket({ origin: ORIGIN, messages: [{ topic: "", msg: "" }] });
  assertEquals([...bytes.subarray(17)], [1, 0, 0, 0, 0, 0, 0]);
  assertEquals(bytes.length, 24);
  assertEquals(decodeBusPacket(bytes), { origin: ORIGIN, messages: [{ topic: "", msg: "" }] });
});

Deno.test("bus wire format: round trips keep text, binary, empty and large messages, in order", () => {
  const large = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 7) % 256);
  const messages = [
    { topic: "/", msg: "" },
    { topic: "/", msg: new Uint8Array(0) },
    { topic: "/lobby", msg: "\uFEFFleading BOM kept, 😀" },
    { topic: "t".repeat(65_535), msg: large },
    // A head and nothing else, last in the packet.
    { topic: "", msg: "" },
    { topic: "", msg: new Uint8Array(0) },
  ];
  for (const message of messages) {
    assertEquals(decodeBusPacket(encodeBusPacket({ origin: ORIGIN, messages: [message] })).messages, [message]);
  }
  const origin = crypto.randomUUID();
  assertEquals(decodeBusPacket(encodeBusPacket({ origin, messages })), { origin, messages });
  // Text and binary stay apart even when their bytes are equal.
  const [text, binary] = decodeBusPacket(
    encodeBusPacket({ origin, messages: [{ topic: "", msg: "ab" }, { topic: "", msg: new Uint8Array([97, 98]) }] }),
  ).messages;
  assertEquals(typeof text.msg, "string");
  assert(binary.msg instanceof Uint8Array);
});

Deno.test("bus wire format: what does not encode or decode is refused with a precise error", () => {
  const encodeOne = (topic: string, origin = ORIGIN) => encodeBusPacket({ origin, messages: [{ topic, msg: "" }] });
  assertThrows(() => encodeOne("t".repeat(65_536)), RangeError, "at most 65535 bytes, got 65536");
  assertThrows(() => encodeOne("", "node-1"), RangeError, "must be a UUID");
  assertThrows(() => encodeBusPacket({ origin: ORIGIN, messages: [] }), RangeError, "at least one message");
  // 17 bytes of packet head, then kind, topic length 2, payload length 2, "ab", "cd".
  const good = encodeBusPacket({ origin: ORIGIN, messages: [{ topic: "ab", msg: "cd" }] });
  assertEquals(good.length, 28);
  const with_ = (index: number, value: number) => good.map((byte, i) => i === index ? value : byte);
  const cases: [unknown, string][] = [
    ["a string", "must be bytes, got string"],
    [good.subarray(0, 23), "at least 24 bytes, got 23"],
    [with_(0, 2), "Unknown bus packet version 2"],
    [with_(17, 0), "Unknown bus message kind 0 at byte 17"],
    [with_(17, 9), "Unknown bus message kind 9 at byte 17"],
    [with_(19, 5), "Bus message ends at byte 31, past the packet's 28"], // topic length 5
    [with_(23, 3), "Bus message ends at byte 29, past the packet's 28"], // payload length 3
    [with_(24, 0xff), "not valid UTF-8"], // in the topic
    [with_(27, 0xc3), "not valid UTF-8"], // a cut character in the text
    [Uint8Array.of(...good, 1, 0), "ends inside a message head at byte 28 of 30"],
  ];
  for (const [bytes, message] of cases) {
    assertThrows(() => decodeBusPacket(bytes as Uint8Array), BusPacketError, message);
  }
  // A binary payload is not checked: any bytes are a binary message.
  assertEquals(
    decodeBusPacket(with_(17, 2).map((byte, i) => i === 27 ? 0xc3 : byte)).messages[0].msg,
    Uint8Array.of(99, 0xc3),
  );
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

// Two PortBuses joined by a MessageChannel, as two workers' are.
function portBuses(): () => Bus {
  const { port1, port2 } = new MessageChannel();
  let made = 0;
  return () => {
    const bus = new PortBus();
    bus.connect("peer", made++ === 0 ? port1 : port2);
    return bus;
  };
}

// PortBus first: its deliveries are tasks, so that an echo loop fails the test rather than spinning in microtasks.
for (const [name, makeBus] of [["PortBus", portBuses()], ["LocalBus", () => new LocalBus("bus-test")]] as const) {
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
  const atC = Promise.withResolvers<void>();
  b.listen((_topic, msg) => received.push(`b ${msg}`));
  c.listen((_topic, msg) => {
    received.push(`c ${msg}`);
    atC.resolve();
  });
  assertEquals(a.publish("t", "one"), true);
  await within(atC.promise, 1000, "the message at c"); // b would have had it in the same round
  assertEquals(received, ["c one"]);
  await a.close();
  assertEquals(a.publish("t", "two"), false);
  assertEquals(a.stats.unsent, 1);
  assertEquals(a.stats.connected, false);
  await b.close();
  await c.close();
});

Deno.test("PortBus: a bus drops its own messages when they come back", async () => {
  const { port1, port2 } = new MessageChannel();
  const bus = new PortBus();
  bus.connect("raw", port1);
  try {
    const received: (string | Uint8Array)[] = [];
    const marker = Promise.withResolvers<void>();
    bus.listen((_topic, msg) => {
      received.push(msg);
      if (msg === "marker") marker.resolve();
    });
    const own = Promise.withResolvers<Uint8Array>();
    port2.onmessage = (event) => own.resolve(event.data);
    bus.publish("t", "mine");
    port2.postMessage(await within(own.promise, 2000, "the bus's bytes")); // as Redis hands a node its own publish
    port2.postMessage(encodeBusPacket({ origin: crypto.randomUUID(), messages: [{ topic: "t", msg: "marker" }] }));
    await within(marker.promise, 2000, "the marker");
    assertEquals(received, ["marker"]);
    assertEquals(bus.stats.received, 1);
    assertEquals(bus.stats.undecodable, 0);
  } finally {
    port2.close();
    await bus.close();
  }
});

Deno.test("PortBus: an undecodable message is dropped and counted; the next one still arrives", async () => {
  const { port1, port2 } = new MessageChannel();
  const bus = new PortBus();
  bus.connect("raw", port1);
  try {
    const received = Promise.withResolvers<string | Uint8Array>();
    bus.listen((_topic, msg) => received.resolve(msg));
    port2.postMessage("not bytes");
    port2.postMessage(new Uint8Array([1, 1, 2, 3]));
    port2.postMessage(
      encodeBusPacket({ origin: crypto.randomUUID(), messages: [{ topic: "t", msg: "after the garbage" }] }),
    );
    assertEquals(await within(received.promise, 2000, "the good message"), "after the garbage");
    assertEquals(bus.stats.undecodable, 2);
    assertEquals(bus.stats.received, 1);
  } finally {
    port2.close();
    await bus.close();
  }
});

Deno.test("PortBus: a lagging peer loses nothing (where a BroadcastChannel keeps 256)", async () => {
  const { port1, port2 } = new MessageChannel();
  const sender = new PortBus();
  const receiver = new PortBus();
  sender.connect("receiver", port1);
  receiver.connect("sender", port2);
  try {
    let count = 0;
    const all = Promise.withResolvers<void>();
    receiver.listen(() => ++count === 5000 && all.resolve());
    // All queued in one task, before the receiver reads any.
    for (let i = 0; i < 5000; i++) sender.publish("t", `m${i}`);
    await within(all.promise, 5000, "5000 messages");
    assertEquals(receiver.stats.received, 5000);
  } finally {
    await sender.close();
    await receiver.close();
  }
});

Deno.test("PortBus: connect replaces a peer's port; disconnect removes it", async () => {
  const bus = new PortBus();
  const first = new MessageChannel();
  const second = new MessageChannel();
  bus.connect("w1", first.port1);
  bus.connect("w1", second.port1); // a restarted worker's new port
  assertEquals(bus.peers, ["w1"]);
  const got = Promise.withResolvers<unknown>();
  second.port2.onmessage = (event) => got.resolve(event.data);
  first.port2.onmessage = () => got.reject(new Error("the replaced port got a message"));
  bus.publish("t", "x");
  assert((await within(got.promise, 2000, "the message")) instanceof Uint8Array);
  bus.disconnect("w1");
  assertEquals(bus.peers, []);
  first.port2.close();
  second.port2.close();
  await bus.close();
});

Deno.test("PortBus: a real Worker's subscribers get this thread's publishes, and its publishes come back", async () => {
  const worker = new Worker(new URL("./testdata/port_worker.ts", import.meta.url), { type: "module" });
  const { port1, port2 } = new MessageChannel();
  const users = new Map<string, Protocol>();
  const bus = new PortBus();
  bus.connect("worker", port1);
  attachBus(users, bus);
  const subscriber = new Protocol(users, OPTIONS);
  const open = await openInMemory(subscriber);
  try {
    const ready = Promise.withResolvers<void>();
    worker.onmessage = () => ready.resolve();
    worker.postMessage(port2, [port2]);
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

Deno.test("attachBus: a bus replaced or detached no longer delivers to the users map", async () => {
  const users = new Map<string, Protocol>();
  const [first, firstPeer, second, secondPeer] = ["attach-1", "attach-1", "attach-2", "attach-2"].map((name) =>
    new LocalBus(name)
  );
  attachBus(users, first);
  attachBus(users, second);
  const subscriber = new Protocol(users, OPTIONS);
  const open = await openInMemory(subscriber);
  try {
    subscriber.subscribe("red");
    // Sent first, so it would arrive first.
    firstPeer.publish("red", "through the replaced bus");
    secondPeer.publish("red", "through the new bus");
    assertEquals(await open.conn.received(1), ["through the new bus"]);
    attachBus(users, undefined);
    secondPeer.publish("red", "after the detach");
    firstPeer.publish("red", "marker");
    const marker = Promise.withResolvers<void>();
    first.listen(() => marker.resolve()); // the old bus still gets packets, for itself only
    await within(marker.promise, 2000, "the marker");
    assertEquals(await open.conn.received(1), ["through the new bus"]);
    assertEquals(second.stats.received, 2);
  } finally {
    await closeInMemory(open);
    for (const bus of [first, firstPeer, second, secondPeer]) await bus.close();
  }
});

Deno.test("EncodedBus: the publishes of the task that closes a bus still go out; then it takes none", async () => {
  const a = new LocalBus("closing");
  const b = new LocalBus("closing");
  const got = Promise.withResolvers<string | Uint8Array>();
  b.listen((_topic, msg) => got.resolve(msg));
  assertEquals(a.publish("t", "last words"), true);
  await a.close();
  assertEquals(await within(got.promise, 2000, "the last publish"), "last words");
  assertEquals([a.stats.published, a.stats.unsent, b.stats.received], [1, 0, 1]);
  await b.close();
});

Deno.test("EncodedBus: a bus closed while a packet is on its way counts nothing received", async () => {
  const a = new LocalBus("closed-receiver");
  const b = new LocalBus("closed-receiver");
  const c = new LocalBus("closed-receiver");
  const atC = Promise.withResolvers<void>();
  c.listen(() => atC.resolve());
  a.publish("t", "x");
  // Microtasks run in order: a's packet goes out (a receive is queued for b and c), then b closes.
  queueMicrotask(() => b.close());
  await within(atC.promise, 2000, "the packet at c");
  assertEquals([b.stats.received, c.stats.received], [0, 1]);
  await a.close();
  await c.close();
});

Deno.test("PortBus: one task's publishes go in one packet, and a new packet past about 1 MiB", async () => {
  const { port1, port2 } = new MessageChannel();
  const bus = new PortBus();
  bus.connect("raw", port1);
  try {
    const packets: Uint8Array[] = [];
    const three = Promise.withResolvers<void>();
    port2.onmessage = (event) => {
      packets.push(event.data);
      if (packets.flatMap((packet) => decodeBusPacket(packet).messages).length === 5) three.resolve();
    };
    const big = "x".repeat(600 * 1024);
    bus.publish("t", "small 1");
    bus.publish("t", "small 2");
    bus.publish("t", big); // past 1 MiB? not yet: 600 KiB and 14 bytes
    bus.publish("t", big); // now: these four go at once
    bus.publish("t", "small 3"); // at the end of the task
    await within(three.promise, 5000, "five messages");
    assertEquals(packets.map((packet) => decodeBusPacket(packet).messages.length), [4, 1]);
  } finally {
    port2.close();
    await bus.close();
  }
});

Deno.test("PortBus: a replaced port's messages are no longer taken", async () => {
  const bus = new PortBus();
  const first = new MessageChannel();
  const second = new MessageChannel();
  bus.connect("w1", first.port1);
  bus.connect("w1", second.port1);
  try {
    const got: (string | Uint8Array)[] = [];
    const marker = Promise.withResolvers<void>();
    bus.listen((_topic, msg) => {
      got.push(msg);
      if (msg === "from the new port") marker.resolve();
    });
    const packet = (msg: string) => encodeBusPacket({ origin: crypto.randomUUID(), messages: [{ topic: "t", msg }] });
    first.port2.postMessage(packet("from the replaced port"));
    // A round trip on the replaced port first: had it been open, its message would be in.
    await new Promise((resolve) => setTimeout(resolve, 50));
    second.port2.postMessage(packet("from the new port"));
    await within(marker.promise, 2000, "the new port's message");
    assertEquals(got, ["from the new port"]);
  } finally {
    first.port2.close();
    second.port2.close();
    await bus.close();
  }
});
