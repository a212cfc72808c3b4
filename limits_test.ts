import { assert, assertEquals } from "@std/assert";
import { encodeFrame, Opcode } from "./frame.ts";
import { Protocol } from "./protocol.ts";
import { startServer } from "./server.ts";
import {
  handshake,
  RawClient,
  type Recorder,
  recordingServer,
  type TestServer,
  withClient,
  within,
} from "./test_util.ts";

const MESSAGE = new Uint8Array(64 * 1024);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// Broadcasts `count` 64 KiB messages to every user, yielding between them, and
// returns the largest bufferedAmount seen on `watched`.
async function flood(server: TestServer<Recorder>, watched: Protocol, count: number): Promise<number> {
  let highest = 0;
  for (let i = 0; i < count; i++) {
    Protocol.broadcast(server.users.values(), MESSAGE);
    highest = Math.max(highest, watched.bufferedAmount);
    await sleep(0);
  }
  return highest;
}

// Reads `count` binary frames; returns how many arrived.
async function drain(client: RawClient, count: number): Promise<number> {
  let received = 0;
  while (received < count && (await client.readFrame())?.opcode === Opcode.Binary) received++;
  return received;
}

Deno.test("maxBackpressure, policy close: a reader that stalls is closed with 1008, others get everything", async () => {
  const limit = 1024 * 1024;
  const server = recordingServer({ maxBackpressure: limit, closeTimeout: 300 });
  try {
    const stalled = await RawClient.open(server.port);
    const reader = await RawClient.open(server.port);
    const [stalledHandler, readerHandler] = [await server.handler(0), await server.handler(1)];
    await readerHandler.connected.promise;
    // 32 MiB is far more than the kernel's socket buffers can hide.
    const count = 512;
    const [highest, received] = await Promise.all([flood(server, stalledHandler, count), drain(reader, count)]);
    assertEquals(received, count, "the reading client missed messages");
    assert(highest <= limit + MESSAGE.length, `queue reached ${highest} bytes`);
    await within(stalledHandler.disconnected.promise);
    assertEquals(stalledHandler.closeCode, 1008);
    stalled.close();
    reader.close();
  } finally {
    await server.close();
  }
});

Deno.test("maxBackpressure, policy drop: messages over the limit are dropped, the connection stays open", async () => {
  const limit = 1024 * 1024;
  const server = recordingServer({ maxBackpressure: limit, backpressurePolicy: "drop" });
  try {
    const client = await RawClient.open(server.port);
    const handler = await server.handler(0);
    await handler.connected.promise;
    const outcomes: (boolean | undefined)[] = [];
    let highest = 0;
    for (let i = 0; i < 512; i++) {
      handler.sendMessage(MESSAGE).then((written) => outcomes[i] = written);
      highest = Math.max(highest, handler.bufferedAmount);
      await sleep(0);
    }
    assert(highest <= limit + MESSAGE.length, `queue reached ${highest} bytes`);
    const dropped = outcomes.filter((written) => written === false).length;
    assert(dropped > 0, "no message was dropped");
    assertEquals(handler.state, "open");
    // Once the client reads, every accepted message arrives and new ones go through.
    assertEquals(await drain(client, 512 - dropped), 512 - dropped);
    const last = handler.sendMessage("after the drain");
    assertEquals((await client.readFrame())?.message(), "after the drain");
    assertEquals(await last, true);
    assertEquals(outcomes.filter((written) => written === true).length, 512 - dropped);
    client.close();
  } finally {
    await server.close();
  }
});

Deno.test("heartbeat: pings every pingInterval; a silent peer is closed with 1001 after idleTimeout", async () => {
  const server = recordingServer({ pingInterval: 50, idleTimeout: 300, closeTimeout: 200 });
  try {
    const client = await RawClient.open(server.port);
    const ping = await client.readFrame(1000);
    assertEquals(ping?.opcode, Opcode.Ping);
    const started = Date.now();
    const close = await within(client.readUntilClose(), 3000, "the idle close");
    assertEquals(close.code, 1001);
    assert(close.before.every((frame) => frame.opcode === Opcode.Ping));
    assert(Date.now() - started >= 150, "closed well before idleTimeout");
    await client.expectEnd();
    client.close();
  } finally {
    await server.close();
  }
});

Deno.test("heartbeat: a peer that answers pings stays connected past idleTimeout", async () => {
  const server = recordingServer({ pingInterval: 50, idleTimeout: 200 });
  try {
    const client = await RawClient.open(server.port);
    const until = Date.now() + 600;
    while (Date.now() < until) {
      const frame = await client.readFrame(1000);
      assertEquals(frame?.opcode, Opcode.Ping, "expected only pings");
      await client.send(Opcode.Pong, frame!.payload);
    }
    assertEquals((await server.handler(0)).state, "open");
    await client.sendClose(1000);
    assertEquals((await client.readUntilClose()).code, 1000);
    client.close();
  } finally {
    await server.close();
  }
});

Deno.test("heartbeat: connections share a timer; those left keep their pings when one leaves", async () => {
  const server = recordingServer({ pingInterval: 50, idleTimeout: 10_000, closeTimeout: 200 });
  try {
    const [leaving, staying] = [await RawClient.open(server.port), await RawClient.open(server.port)];
    assertEquals((await leaving.readFrame(1000))?.opcode, Opcode.Ping);
    await leaving.sendClose(1000);
    await (await server.handler(0)).disconnected.promise;
    for (let i = 0; i < 4; i++) assertEquals((await staying.readFrame(1000))?.opcode, Opcode.Ping);
    leaving.close();
    staying.close();
  } finally {
    await server.close();
  }
});

Deno.test("heartbeat: pings come every pingInterval, not every idleTimeout, when idleTimeout is shorter", () =>
  withClient(async (client, handler) => {
    // Data every 40 ms keeps the connection alive for 1.7 s (idleTimeout 300 ms leaves
    // room for a loaded machine's pauses); then a close ends the count. The shared timer
    // ticks every 300 ms: pings every pingInterval are 3, every tick would be 5.
    const sending = (async () => {
      for (const until = Date.now() + 1700; Date.now() < until; await sleep(40)) {
        await client.send(Opcode.Text, "alive");
      }
      await client.sendClose(1000);
    })();
    const { before } = await client.readUntilClose();
    await within(sending, 5000, "the sender to finish");
    assertEquals(handler.closeCode, 1000, "closed by the client, not for idleness");
    const pings = before.filter((frame) => frame.opcode === Opcode.Ping).length;
    assert(pings >= 2 && pings <= 4, `${pings} pings in 1.7 s at pingInterval 500 ms`);
  }, { pingInterval: 500, idleTimeout: 300 }));

Deno.test("heartbeat: pingInterval 0 and idleTimeout 0 turn it off", async () => {
  const server = recordingServer({ pingInterval: 0, idleTimeout: 0 });
  try {
    const client = await RawClient.open(server.port);
    assertEquals(await client.readFrame(400).catch(() => "nothing"), "nothing");
    assertEquals((await server.handler(0)).state, "open");
    client.close();
  } finally {
    await server.close();
  }
});

Deno.test("handshake timeout: a one-byte-at-a-time client is dropped without delaying others", async () => {
  const server = recordingServer({ handshakeTimeout: 500 });
  try {
    const slow = await RawClient.connect(server.port);
    const request = new TextEncoder().encode(handshake());
    const dripping = (async () => {
      for (const byte of request.subarray(0, 20)) {
        await slow.write(new Uint8Array([byte])).catch(() => {});
        await sleep(50);
      }
    })();
    await sleep(100);
    const started = Date.now();
    const quick = await RawClient.open(server.port);
    assert(Date.now() - started < 400, "a normal client waited for the slow one");
    await slow.expectEnd(2000);
    await dripping;
    slow.close();
    quick.close();
  } finally {
    await server.close();
  }
});

Deno.test("handshake timeout: silent connections opened in turn are each dropped at their own deadline", async () => {
  // One timer serves every connection with the same timeout: the second must not go
  // with the first, nor wait for a third, and one that completed its handshake stays.
  const server = recordingServer({ handshakeTimeout: 300 });
  try {
    const first = await RawClient.connect(server.port);
    const firstAt = Date.now();
    await sleep(150);
    const second = await RawClient.connect(server.port);
    const secondAt = Date.now();
    const open = await RawClient.open(server.port);
    await first.expectEnd(2000);
    const firstLasted = Date.now() - firstAt;
    await second.expectEnd(2000);
    const secondLasted = Date.now() - secondAt;
    assert(firstLasted >= 250 && secondLasted >= 250, `dropped early: ${firstLasted} and ${secondLasted} ms`);
    assert(Date.now() - firstAt >= 400, "the second went with the first");
    assertEquals((await server.handler(2)).state, "open");
    for (const client of [first, second, open]) client.close();
  } finally {
    await server.close();
  }
});

Deno.test("maxConnections: past the limit the handshake gets 503; a freed place is taken again", async () => {
  const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true, maxConnections: 2 });
  try {
    const port = server.addr.port;
    const first = await RawClient.open(port);
    const second = await RawClient.open(port);
    const third = await RawClient.connect(port);
    await third.write(handshake());
    assertEquals((await third.readAnswer()).status, 503);
    third.close();
    await first.sendClose(1000);
    await first.readUntilClose();
    first.close();
    const deadline = Date.now() + 5000;
    while (server.users.size > 1 && Date.now() < deadline) await sleep(10);
    await sleep(50); // the handler leaves the server's set just after users
    const fourth = await RawClient.open(port);
    second.close();
    fourth.close();
  } finally {
    await server.shutdown();
  }
});

Deno.test("maxFragments: one fragment too many is 1009", async () => {
  const server = recordingServer({ maxFragments: 10 });
  try {
    const within10 = await RawClient.open(server.port);
    for (let i = 0; i < 9; i++) await within10.send(i === 0 ? Opcode.Text : Opcode.Continuation, "", false);
    await within10.send(Opcode.Continuation, "done");
    assertEquals(await (await server.handler(0)).received(1), ["done"]);

    const over = await RawClient.open(server.port);
    for (let i = 0; i < 11; i++) await over.send(i === 0 ? Opcode.Binary : Opcode.Continuation, "", false);
    assertEquals((await over.readUntilClose()).code, 1009);
    within10.close();
    over.close();
  } finally {
    await server.close();
  }
});

Deno.test("maxPayload: a 2^62-byte frame header is refused before any payload", async () => {
  const server = recordingServer({});
  try {
    const client = await RawClient.open(server.port);
    await client.write(new Uint8Array([0x82, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]));
    assertEquals((await client.readUntilClose()).code, 1009);
    await client.expectEnd();
    client.close();
  } finally {
    await server.close();
  }
});

Deno.test("fragments are bounded by maxPayload in total, refused before the rest is sent", async () => {
  const server = recordingServer({ maxPayload: 100_000 });
  try {
    const client = await RawClient.open(server.port);
    await client.send(Opcode.Binary, new Uint8Array(60_000), false);
    // Only the header of the second fragment: 60,000 + 50,000 is over the limit.
    await client.write(encodeFrame(Opcode.Continuation, new Uint8Array(50_000), { mask: true }).subarray(0, 8));
    assertEquals((await client.readUntilClose()).code, 1009);
    client.close();
  } finally {
    await server.close();
  }
});

Deno.test("maxPayload: fragments may sum to exactly the limit; one byte more is 1009", async () => {
  // The frames fit the per-frame limit (a continuation may always carry 125 bytes), so
  // only the sum of the fragments is over.
  const server = recordingServer({ maxPayload: 1000, closeTimeout: 300 });
  try {
    const exact = await RawClient.open(server.port);
    await exact.send(Opcode.Binary, new Uint8Array(990).fill(1), false);
    await exact.send(Opcode.Continuation, new Uint8Array(10).fill(2));
    const [message] = await (await server.handler(0)).received(1);
    assertEquals((message as Uint8Array).length, 1000);

    const over = await RawClient.open(server.port);
    await over.send(Opcode.Binary, new Uint8Array(990), false);
    await over.send(Opcode.Continuation, new Uint8Array(11));
    assertEquals((await over.readUntilClose()).code, 1009);
    const handler = await server.handler(1);
    await within(handler.disconnected.promise);
    assertEquals([handler.closeCode, handler.messages], [1009, []]);
    exact.close();
    over.close();
  } finally {
    await server.close();
  }
});

Deno.test("maxFragments: the count starts again with each message", () =>
  withClient(async (client, handler) => {
    for (const text of ["first", "second"]) {
      for (let i = 0; i < 5; i++) await client.send(i === 0 ? Opcode.Text : Opcode.Continuation, "", false);
      await client.send(Opcode.Continuation, text);
    }
    assertEquals(await handler.received(2), ["first", "second"]);
  }, { maxFragments: 10 }));

// A valid request head of exactly `size` bytes, padded with a header.
function headOfSize(size: number): string {
  const padding = size - handshake({ "X-Pad": "" }).length;
  assert(padding >= 0, `a head cannot be as small as ${size} bytes`);
  return handshake({ "X-Pad": "p".repeat(padding) });
}

Deno.test("maxHeaderSize: a head of exactly the limit is accepted, one byte more is 431", async () => {
  const server = recordingServer({ maxHeaderSize: 1024 });
  try {
    const exact = await RawClient.connect(server.port);
    await exact.write(headOfSize(1024));
    assertEquals((await exact.readAnswer()).status, 101);
    // In one write: the whole head may arrive in one read, with its end inside it.
    const over = await RawClient.connect(server.port);
    await over.write(headOfSize(1025));
    const answer = await over.readAnswer();
    assertEquals(answer.status, 431, answer.body);
    await over.expectEnd();
    exact.close();
    over.close();
  } finally {
    await server.close();
  }
});

Deno.test("maxHeaderSize: a head that never ends is answered 431 once it passes the limit", async () => {
  // A handshake timeout far away: the answer must come from the size limit.
  const server = recordingServer({ handshakeTimeout: 60_000 });
  try {
    const client = await RawClient.connect(server.port);
    await client.write(`GET / HTTP/1.1\r\nHost: x\r\nX-Long: ${"x".repeat(20 * 1024)}`);
    const answer = await client.readAnswer();
    assertEquals(answer.status, 431, answer.body);
    await client.expectEnd();
    client.close();
  } finally {
    await server.close();
  }
});

Deno.test("maxHeaders: exactly the limit of header lines is accepted, one more is 431", async () => {
  const server = recordingServer({ maxHeaders: 20 });
  try {
    // handshake() has 5 header lines of its own.
    const extra = (count: number) => Object.fromEntries(Array.from({ length: count }, (_, i) => [`X-H${i}`, "1"]));
    const exact = await RawClient.connect(server.port);
    await exact.write(handshake(extra(15)));
    assertEquals((await exact.readAnswer()).status, 101);
    const over = await RawClient.connect(server.port);
    await over.write(handshake(extra(16)));
    assertEquals((await over.readAnswer()).status, 431);
    await over.expectEnd();
    exact.close();
    over.close();
  } finally {
    await server.close();
  }
});

Deno.test("heartbeat: idleTimeout 0 keeps a silent peer connected while pings go on", () =>
  withClient(async (client, handler) => {
    for (let i = 0; i < 5; i++) assertEquals((await client.readFrame(1000))?.opcode, Opcode.Ping, `frame ${i}`);
    assertEquals(handler.state, "open");
    await client.sendClose(1000);
    assertEquals((await client.readUntilClose()).code, 1000);
  }, { pingInterval: 50, idleTimeout: 0 }));

Deno.test("heartbeat: pingInterval 0 sends no pings while idleTimeout still closes with 1001", () =>
  withClient(async (client) => {
    // Busy for over two idle periods: the idle check runs, and must not ping. A frame
    // every 50 ms against a 1 s idleTimeout: margin for a loaded machine (100 ms against
    // 500 ms failed once in CI while a mutation audit shared both cores).
    for (let i = 0; i < 45; i++) {
      await client.send(Opcode.Text, `busy ${i}`);
      await sleep(50);
    }
    const close = await within(client.readUntilClose(), 5000, "the idle close");
    assertEquals(close.code, 1001);
    assertEquals(close.before.map((frame) => frame.opcode), []);
  }, { pingInterval: 0, idleTimeout: 1000, closeTimeout: 200 }));

Deno.test("maxBackpressure: the queue fills exactly to the limit; the next message meets the policy", async (t) => {
  const frameLength = MESSAGE.length + 10; // a 64-bit length header
  for (const backpressurePolicy of ["drop", "close"] as const) {
    await t.step(backpressurePolicy, async () => {
      const server = recordingServer({ maxBackpressure: 3 * frameLength, backpressurePolicy, closeTimeout: 300 });
      try {
        const client = await RawClient.open(server.port);
        const handler = await server.handler(0);
        await handler.connected.promise;
        // Queued in one task: nothing is written before the fourth.
        const outcomes = Array.from({ length: 4 }, () => handler.sendMessage(MESSAGE));
        if (backpressurePolicy === "drop") {
          assertEquals(handler.bufferedAmount, 3 * frameLength);
        } else {
          // The three messages and the close frame (at most 2 + 125 bytes) after them.
          assert(handler.bufferedAmount <= 3 * frameLength + 127, `${handler.bufferedAmount} bytes queued`);
        }
        assertEquals(await drain(client, 3), 3);
        assertEquals(await Promise.all(outcomes), [true, true, true, false]);
        if (backpressurePolicy === "close") {
          assertEquals((await client.readUntilClose()).code, 1008);
        } else {
          assertEquals(handler.state, "open");
          handler.sendMessage("after");
          assertEquals((await client.readFrame())?.message(), "after");
        }
        client.close();
      } finally {
        await server.close();
      }
    });
  }
});

Deno.test("maxBackpressure: a message larger than the limit still goes out when nothing is queued", () =>
  withClient(async (client, handler) => {
    const big = new Uint8Array(4096).fill(9);
    const written = handler.sendMessage(big);
    assertEquals((await client.readFrame())?.payload, big);
    assertEquals(await written, true);
    assertEquals(handler.state, "open");
  }, { maxBackpressure: 1000 }));

Deno.test("RFC 6455 5.5.3: a peer that pings without reading its pongs cannot grow the send queue; the last ping is answered", () =>
  withClient(async (client, handler) => {
    // 8 MiB of pongs to answer, far more than the socket buffers take; the client reads none.
    const flood = new Uint8Array(24);
    const ping = encodeFrame(Opcode.Ping, flood, { mask: true });
    const pings = new Uint8Array(64 * 1024 * ping.length);
    for (let offset = 0; offset < pings.length; offset += ping.length) pings.set(ping, offset);
    // The last round ends with a ping of its own data, read with the flood pings before
    // it: their pongs fill the queue, and its pong must replace the one queued, not be
    // dropped for that stale one.
    const last = new TextEncoder().encode("the last ping");
    const lastRound = new Uint8Array(pings.length + 2 + 4 + last.length);
    lastRound.set(pings);
    lastRound.set(encodeFrame(Opcode.Ping, last, { mask: true }), pings.length);
    let highest = 0;
    for (let round = 0; round < 5; round++) {
      await client.write(round < 4 ? pings : lastRound);
      await sleep(20);
      highest = Math.max(highest, handler.bufferedAmount);
    }
    // Pongs are replaced only past maxBackpressure: one pong (26 bytes) over it at most.
    assert(highest <= 1024 + 26, `send queue reached ${highest} bytes`);
    await client.send(Opcode.Text, "still there");
    assertEquals(await handler.received(1), ["still there"]);
    assertEquals(handler.state, "open");
    // Now read: flood pongs, then the last ping's, then the pong of a ping sent after it.
    let floodPongs = 0;
    for (let frame = await client.readFrame();; frame = await client.readFrame()) {
      assertEquals(frame?.opcode, Opcode.Pong);
      if (frame!.payload.length === last.length) {
        assertEquals(frame!.payload, last);
        break;
      }
      assertEquals(frame!.payload, flood);
      floodPongs++;
    }
    assert(floodPongs > 0, "no flood pong arrived");
    await client.send(Opcode.Ping, "after");
    assertEquals((await client.readFrame())?.payload, new TextEncoder().encode("after"));
  }, { closeTimeout: 300, maxBackpressure: 1024 }));

Deno.test("maxPayload under 125: a whole data frame over the limit is 1009; a 125-byte ping still passes", () =>
  withClient(async (client, handler) => {
    await client.send(Opcode.Ping, new Uint8Array(125));
    assertEquals((await client.readFrame())?.opcode, Opcode.Pong);
    await client.send(Opcode.Binary, new Uint8Array(10));
    await client.send(Opcode.Binary, new Uint8Array(11));
    assertEquals((await client.readUntilClose()).code, 1009);
    assertEquals(handler.messages, [new Uint8Array(10)]);
  }, { maxPayload: 10, closeTimeout: 300 }));
