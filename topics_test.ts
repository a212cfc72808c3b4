// Topics on real Protocols over in-memory connections (no sockets): who gets a publish,
// in what order, encoded how often, and what an ended connection leaves behind.
import { assert, assertEquals, assertThrows } from "@std/assert";
import { Protocol } from "./protocol.ts";
import { byteLength, existingRegistry } from "./_topics.ts";
import { closeInMemory, MemoryConnection, openInMemory } from "./testdata/memory_conn.ts";

const OPTIONS = { pingInterval: 0, idleTimeout: 0, closeTimeout: 500 };

// Opens `count` connections sharing one users map.
async function openUsers(count: number, users = new Map<string, Protocol>(), options = {}) {
  const open = [];
  for (let i = 0; i < count; i++) {
    const handler = new Protocol(users, { ...OPTIONS, ...options });
    open.push({ handler, ...await openInMemory(handler) });
  }
  return { users, open };
}

async function closeAll(open: { conn: MemoryConnection; served: Promise<void> }[]): Promise<void> {
  await Promise.all(open.map(closeInMemory));
}

Deno.test("topics: subscribe, unsubscribe and topics keep both sides of the index", () => {
  const users = new Map<string, Protocol>();
  const a = new Protocol(users);
  const b = new Protocol(users);
  assertEquals(a.subscribe("red"), true);
  assertEquals(a.subscribe("red"), false);
  assertEquals(a.subscribe("blue"), true);
  assertEquals(b.subscribe("red"), true);
  assertEquals([...a.topics], ["red", "blue"]);
  assertEquals([...b.topics], ["red"]);
  const registry = existingRegistry(users)!;
  assertEquals(registry.counts(), new Map([["red", 2], ["blue", 1]]));

  assertEquals(a.unsubscribe("red"), true);
  assertEquals(a.unsubscribe("red"), false);
  assertEquals(a.unsubscribe("never"), false);
  assertEquals([...a.topics], ["blue"]);
  assertEquals(registry.counts(), new Map([["red", 1], ["blue", 1]]));
  assertEquals(b.unsubscribe("red"), true);
  assertEquals(registry.counts(), new Map([["blue", 1]])); // an empty topic is forgotten

  // `topics` is a copy: changing it changes nothing.
  (a.topics as Set<string>).add("green");
  assertEquals([...a.topics], ["blue"]);
  assertThrows(() => a.subscribe(42 as unknown as string), TypeError, "A topic must be a string, got number");
});

Deno.test("topics: connections of another users map are other topics", () => {
  const a = new Protocol(new Map());
  const b = new Protocol(new Map());
  a.subscribe("red");
  assertEquals(existingRegistry(b.users), undefined);
  b.subscribe("red");
  assertEquals(existingRegistry(a.users)!.count("red"), 1);
  assertEquals(existingRegistry(b.users)!.count("red"), 1);
});

Deno.test("topics: publish reaches open subscribers of the topic only, the publisher left out by default", async () => {
  const { users, open } = await openUsers(4);
  const [alice, bob, carol, dave] = open;
  try {
    for (const { handler } of [alice, bob, carol]) handler.subscribe("red");
    dave.handler.subscribe("blue");

    assertEquals(alice.handler.publish("red", "to the others"), 2);
    assertEquals(alice.handler.publish("red", "to all", { includeSelf: true }), 3);
    assertEquals(Protocol.publish(users, "red", "from the server"), 3);
    assertEquals(dave.handler.publish("red", "from outside the topic"), 3); // a publisher need not subscribe
    const binary = Uint8Array.from({ length: 70_000 }, (_, i) => i % 251);
    assertEquals(Protocol.publish(users, "blue", binary), 1);
    assertEquals(Protocol.publish(users, "nobody", "lost"), 0);

    assertEquals(await alice.conn.received(3), ["to all", "from the server", "from outside the topic"]);
    for (const { conn } of [bob, carol]) {
      assertEquals(await conn.received(4), ["to the others", "to all", "from the server", "from outside the topic"]);
    }
    assertEquals(await dave.conn.received(1), [binary]);
  } finally {
    await closeAll(open);
  }
});

Deno.test("topics: a publish encodes its frame once for all local subscribers", async () => {
  const { open } = await openUsers(3);
  try {
    for (const { handler } of open) handler.subscribe("red");
    const writesBefore = open.map(({ conn }) => conn.writes.length);
    open[0].handler.publish("red", "once", { includeSelf: true });
    await Promise.all(open.map(({ conn }) => conn.received(1)));
    const frames = open.map(({ conn }, i) => conn.writes[writesBefore[i]]);
    // The very same bytes went to every connection: one encoding, no copy per recipient.
    for (const frame of frames) {
      assertEquals([frame.buffer, frame.byteOffset, frame.length], [frames[0].buffer, frames[0].byteOffset, 6]);
    }
  } finally {
    await closeAll(open);
  }
});

Deno.test("topics: with includeSelf the publisher's copy is written after everyone else's", async () => {
  const { open } = await openUsers(3);
  try {
    for (const { handler } of open) handler.subscribe("red");
    const before = open.map(({ conn }) => conn.writes.length);
    open[1].handler.publish("red", "x", { includeSelf: true });
    await Promise.all(open.map(({ conn }) => conn.received(1)));
    const ranks = open.map(({ conn }, i) => conn.writeRanks[before[i]]);
    assert(ranks[1] > ranks[0] && ranks[1] > ranks[2], `write ranks ${ranks}`);
  } finally {
    await closeAll(open);
  }
});

Deno.test("topics: one publisher's messages arrive in order, text and binary unchanged", async () => {
  const { open } = await openUsers(2);
  try {
    open[1].handler.subscribe("red");
    const sent: (string | Uint8Array)[] = [];
    for (let i = 0; i < 200; i++) sent.push(i % 3 === 0 ? new Uint8Array([i, 255 - i]) : `message ${i} ☃`);
    for (const msg of sent) open[0].handler.publish("red", msg);
    assertEquals(await open[1].conn.received(200), sent);
  } finally {
    await closeAll(open);
  }
});

Deno.test("topics: an ended connection leaves all its topics and cannot subscribe again", async () => {
  const { users, open } = await openUsers(2);
  const [alice, bob] = open;
  try {
    alice.handler.subscribe("red");
    alice.handler.subscribe("blue");
    bob.handler.subscribe("red");
    const registry = existingRegistry<Protocol>(users)!;
    await closeInMemory(alice);
    assertEquals(alice.handler.state, "closed");
    assertEquals([...alice.handler.topics], []);
    assertEquals(registry.counts(), new Map([["red", 1]]));
    assertEquals(alice.handler.subscribe("red"), false);
    assertEquals(registry.count("red"), 1);
    assertEquals(Protocol.publish(users, "red", "still here"), 1);
    assertEquals(await bob.conn.received(1), ["still here"]);
  } finally {
    await closeInMemory(bob);
  }
  // A connection whose handshake failed leaves the topics it joined while connecting.
  const refusedUsers = new Map<string, Protocol>();
  const refused = new Protocol(refusedUsers, OPTIONS);
  refused.subscribe("red");
  const conn = new MemoryConnection();
  const serving = refused.serve(conn);
  conn.push(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); // no Upgrade: 400
  await serving;
  assertEquals(existingRegistry(refusedUsers)!.count("red"), 0);
});

Deno.test("topics: a subscriber past its backpressure limit is counted as a drop, the others still get it", async () => {
  const { users, open } = await openUsers(2, new Map(), { maxBackpressure: 1024, backpressurePolicy: "drop" });
  try {
    for (const { handler } of open) handler.subscribe("red");
    const registry = existingRegistry<Protocol>(users)!;
    const big = new Uint8Array(800);
    // Queued in one task: the second 800 bytes would take each queue past 1024.
    assertEquals(Protocol.publish(users, "red", big), 2);
    assertEquals(Protocol.publish(users, "red", big), 0);
    assertEquals(registry.stats.dropped, 2);
    assertEquals(registry.stats.delivered, 2);
    for (const { conn } of open) assertEquals((await conn.received(1)).length, 1);
  } finally {
    await closeAll(open);
  }
});

Deno.test("topics: byteLength counts UTF-8 bytes without a full copy", () => {
  const encoder = new TextEncoder();
  for (
    const text of [
      "",
      "ascii",
      "é",
      "☃",
      "😀",
      "a😀b",
      "\ud800",
      "\udc00x",
      "x".repeat(70_000) + "😀",
      "é".repeat(65_536),
    ]
  ) {
    assertEquals(byteLength(text), encoder.encode(text).length, JSON.stringify(text.slice(0, 10)));
  }
  // A surrogate pair across the 64 Ki-character chunk boundary is one 4-byte character.
  const split = "x".repeat(65_535) + "😀";
  assertEquals(byteLength(split), 65_535 + 4);
  assertEquals(byteLength(new Uint8Array(7)), 7);
});

Deno.test("topics: includeSelf gives the publisher its copy only when it is subscribed", async () => {
  const { open } = await openUsers(2);
  const [alice, bob] = open;
  try {
    bob.handler.subscribe("red");
    assertEquals(alice.handler.publish("red", "not subscribed", { includeSelf: true }), 1);
    alice.handler.subscribe("red");
    assertEquals(alice.handler.publish("red", "subscribed", { includeSelf: true }), 2);
    assertEquals(await alice.conn.received(1), ["subscribed"]);
    assertEquals(await bob.conn.received(2), ["not subscribed", "subscribed"]);
  } finally {
    await closeAll(open);
  }
});

Deno.test("topics: a subscriber whose connection is not open yet is neither a recipient nor a drop", async () => {
  const { users, open } = await openUsers(1);
  try {
    const connecting = new Protocol(users, OPTIONS);
    connecting.subscribe("red");
    open[0].handler.subscribe("red");
    const registry = existingRegistry<Protocol>(users)!;
    assertEquals(Protocol.publish(users, "red", "to the open one"), 1);
    assertEquals(registry.stats, { delivered: 1, dropped: 0 });
    assertEquals(await open[0].conn.received(1), ["to the open one"]);
  } finally {
    await closeAll(open);
  }
});
