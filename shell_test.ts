// The shell around the core (protocol.ts): reading into the core, the partial-write
// loop, coalescing, the promises of sendMessage, the closing handshake's order of
// writes and TCP closes, and handshake callbacks that fail. All over in-memory
// connections (test_util.ts): short writes, slow reads and writes held in flight,
// every call recorded; no sockets, no sleeps.
import { assert, assertEquals } from "@std/assert";
import { encodeClosePayload, encodeFrame, Opcode } from "./frame.ts";
import { ProtocolError } from "./errors.ts";
import { deflateStats } from "./_deflate.ts";
import { type HttpResponse, Protocol, type ProtocolOptions } from "./protocol.ts";
import {
  encoder,
  handshake,
  type MemoryEnd,
  memoryPair,
  RawClient,
  Recorder,
  within,
  withMemoryClient,
} from "./test_util.ts";

const pattern = (size: number, seed = 0) => new Uint8Array(size).map((_, i) => (i * 31 + seed) & 255);

function concat(parts: Uint8Array[]): Uint8Array {
  const joined = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  parts.reduce((offset, part) => (joined.set(part, offset), offset + part.length), 0);
  return joined;
}

// The bytes the server's write calls took, from call `from` on.
const writtenFrom = (server: MemoryEnd, from: number) => concat(server.writes.slice(from).map((call) => call.taken));

// Whether `promise` settles before a timer of 0 ms fires: every microtask and pending
// I/O callback of the memory connection has run by then.
async function settlesNow(promise: Promise<unknown>): Promise<boolean> {
  let settled = false;
  promise.then(() => settled = true, () => settled = true);
  await new Promise((resolve) => setTimeout(resolve, 0));
  return settled;
}

// ---------------------------------------------------------------- reads

Deno.test("shell: frames over 64 KiB are read into buffers of their own and leave the read buffer at 1 KiB", () =>
  withMemoryClient(async (client, handler, server) => {
    const sent = Array.from({ length: 8 }, (_, i) => pattern(100_000, i));
    await client.write(concat(sent.map((message) => encodeFrame(Opcode.Binary, message, { mask: true }))));
    assertEquals(await handler.received(sent.length), sent);
    // Each frame's first read filled the read buffer; growing it for that would only
    // copy more of the next frame's payload into it before its own buffer is made.
    await server.until(() => server.readSizes.length > server.reads.length, "the next read");
    assertEquals(server.readSizes.at(-1), 1024);
    await client.send(Opcode.Binary, pattern(3000, 9));
    assertEquals((await handler.received(sent.length + 1)).at(-1), pattern(3000, 9));
  }));

class Echo extends Recorder {
  override onMessage(msg: string | Uint8Array): void {
    super.onMessage(msg);
    this.sendMessage(msg);
  }
}

Deno.test("shell: the answers to frames read together go in one write, made before the next read", () =>
  withMemoryClient(async (client, _handler, server) => {
    const sent = ["one", "two", "three", "four"];
    await client.write(concat(sent.map((text) => encodeFrame(Opcode.Text, text, { mask: true }))));
    for (const text of sent) assertEquals((await client.readFrame())?.message(), text);
    assertEquals(server.writes.at(-1)?.taken.length, sent.reduce((sum, text) => sum + 2 + text.length, 0));
    // Reading first splits a peer's next batch over more reads, and so the answers over
    // more writes (over TCP: 0.25 -> 0.57 sendto a message, 32 connections x 4 in flight).
    await server.until(() => server.readSizes.length > server.reads.length, "the next read");
    assertEquals(server.writesBeforeRead.at(-1), server.writes.length);
  }, { handler: Echo }));

// ---------------------------------------------------------------- partial writes

Deno.test("shell: a 1 MiB message sent alone through writes of at most 1000 bytes is written whole before it resolves", () =>
  withMemoryClient(async (client, handler, server) => {
    const big = pattern(1 << 20, 1);
    const from = server.writes.length;
    assertEquals(await within(handler.sendMessage(big), 5000, "sendMessage"), true);
    // Resolved means written: the 10-byte header and every byte of the payload.
    assertEquals(writtenFrom(server, from).length, 10 + big.length);
    assert(server.writes.every((call) => call.taken.length <= 1000), "a write took more than the limit");
    const frame = await client.readFrame();
    assertEquals([frame?.opcode, frame?.fin, frame?.payload.length], [Opcode.Binary, true, big.length]);
    assert(frame!.payload.every((byte, i) => byte === big[i]), "payload differs");
    assertEquals(handler.bufferedAmount, 0);
  }, { conn: { writeLimit: 1000 } }));

Deno.test("shell: small frames joined into one write, written 7 bytes a call, arrive whole and in order", () =>
  withMemoryClient(async (client, handler, server) => {
    const from = server.writes.length;
    const sent = Array.from({ length: 100 }, (_, i) => `message ${i}`);
    const written = sent.map((message) => handler.sendMessage(message));
    assertEquals(await within(Promise.all(written)), sent.map(() => true));
    const bytes = writtenFrom(server, from);
    assertEquals(bytes.length, sent.reduce((sum, message) => sum + 2 + message.length, 0));
    assertEquals(server.writes.length - from, Math.ceil(bytes.length / 7));
    const frames = [];
    for (let i = 0; i < sent.length; i++) frames.push((await client.readFrame())?.message());
    assertEquals(frames, sent);
  }, { conn: { writeLimit: 7 } }));

Deno.test("shell: writes of a scripted 1, 2, 3 ... bytes carry the 101 answer and a frame whole", () =>
  withMemoryClient(async (client, handler, server) => {
    // The 101 answer went through the first calls of the script already.
    assertEquals(server.writes.slice(0, 5).map((call) => call.taken.length), [1, 2, 3, 4, 5]);
    const payload = pattern(3000, 2);
    handler.sendMessage(payload);
    assertEquals((await client.readFrame())?.payload, payload);
  }, { conn: { writeLimit: Array.from({ length: 60 }, (_, i) => i + 1) } }));

// ---------------------------------------------------------------- coalescing

Deno.test("shell: 100 messages of 10 bytes sent in one task go out in exactly one write", () =>
  withMemoryClient(async (client, handler, server) => {
    const from = server.writes.length;
    const sent = Array.from({ length: 100 }, (_, i) => new Uint8Array(10).fill(i));
    const written = sent.map((message) => handler.sendMessage(message));
    assertEquals(await within(Promise.all(written)), sent.map(() => true));
    assertEquals(server.writes.slice(from).map((call) => call.taken.length), [100 * 12]);
    for (const message of sent) assertEquals((await client.readFrame())?.payload, message);
  }));

Deno.test("shell: 100 messages of 1000 bytes in one task go out in two writes of at most 64 KiB", () =>
  withMemoryClient(async (client, handler, server) => {
    const from = server.writes.length;
    const sent = Array.from({ length: 100 }, (_, i) => pattern(1000, i));
    await within(Promise.all(sent.map((message) => handler.sendMessage(message))));
    // 65 frames of 1004 bytes fit in 64 KiB, 66 do not.
    assertEquals(server.writes.slice(from).map((call) => call.taken.length), [65 * 1004, 35 * 1004]);
    for (const message of sent) assertEquals((await client.readFrame())?.payload, message);
  }));

Deno.test("shell: messages sent while a write is in flight go out together in the next write", () =>
  withMemoryClient(async (client, handler, server) => {
    const from = server.writes.length;
    const release = server.hold();
    const first = handler.sendMessage("first");
    await server.until(() => server.writesInFlight === 1, "the first write");
    const later = ["second", "third", "fourth"].map((message) => handler.sendMessage(message));
    release();
    assertEquals(await within(Promise.all([first, ...later])), [true, true, true, true]);
    assertEquals(server.writes.slice(from).map((call) => call.taken.length), [7, 8 + 7 + 8]);
    for (const message of ["first", "second", "third", "fourth"]) {
      assertEquals((await client.readFrame())?.message(), message);
    }
  }));

// ---------------------------------------------------------------- slow reads

Deno.test("shell: a handshake and frames arriving 1 to 3 bytes a read work, a ping among them", () =>
  withMemoryClient(async (client, handler, server) => {
    const frames = [
      encodeFrame(Opcode.Text, "κόσμε", { mask: true }),
      encodeFrame(Opcode.Ping, "p", { mask: true }),
      encodeFrame(Opcode.Binary, pattern(300), { mask: true, fin: false }),
      encodeFrame(Opcode.Continuation, pattern(5000, 1), { mask: true }),
    ];
    await client.write(concat([encoder.encode(handshake()), ...frames]));
    assertEquals((await client.readAnswer()).status, 101);
    assertEquals(await handler.received(2), ["κόσμε", concat([pattern(300), pattern(5000, 1)])]);
    const pong = await client.readFrame();
    assertEquals([pong?.opcode, pong?.payload], [Opcode.Pong, encoder.encode("p")]);
    assert(server.reads.every((count) => count === null || (count >= 1 && count <= 3)), "a read over 3 bytes");
  }, { open: false, conn: { readLimit: [1, 2, 3] } }));

Deno.test("shell: a handshake arriving in 16-byte reads, each a timer tick later, is answered", () =>
  withMemoryClient(async (client, handler) => {
    await client.write(handshake());
    assertEquals((await client.readAnswer()).status, 101);
    await handler.connected.promise;
  }, { open: false, conn: { readLimit: 16, readDelay: () => new Promise((resolve) => setTimeout(resolve, 0)) } }));

Deno.test("shell: frames in the same read as the request head are handled after the handshake", () =>
  withMemoryClient(async (client, handler, server) => {
    const head = encoder.encode(handshake());
    const frames = [
      encodeFrame(Opcode.Text, "one", { mask: true }),
      encodeFrame(Opcode.Ping, "in the same read", { mask: true }),
      encodeFrame(Opcode.Binary, new Uint8Array([2]), { mask: true }),
    ];
    const all = concat([head, ...frames]);
    await client.write(all);
    assertEquals((await client.readAnswer()).status, 101);
    assertEquals(await handler.received(2), ["one", new Uint8Array([2])]);
    const pong = await client.readFrame();
    assertEquals([pong?.opcode, pong?.message()], [Opcode.Pong, encoder.encode("in the same read")]);
    assertEquals(server.reads.slice(0, 1), [all.length], "the head and the frames came in one read");
  }, { open: false }));

// ---------------------------------------------------------------- sendMessage's promise

Deno.test("shell: sendMessage resolves true only once its write has completed", () =>
  withMemoryClient(async (client, handler, server) => {
    const release = server.hold();
    const written = handler.sendMessage("held");
    await server.until(() => server.writesInFlight === 1, "the write to start");
    assertEquals(await settlesNow(written), false, "resolved while its write was in flight");
    assertEquals(handler.bufferedAmount, 6);
    release();
    assertEquals(await within(written), true);
    assertEquals(handler.bufferedAmount, 0);
    assertEquals((await client.readFrame())?.message(), "held");
  }));

Deno.test("shell: a message sent while a write is in flight resolves after its own write, not the earlier one", () =>
  withMemoryClient(async (client, handler, server) => {
    const releaseFirst = server.hold();
    const first = handler.sendMessage("first");
    await server.until(() => server.writesInFlight === 1, "the first write to start");
    const second = handler.sendMessage("second");
    const releaseSecond = server.hold(); // holds the next write call
    releaseFirst();
    assertEquals(await within(first), true);
    await server.until(() => server.writesInFlight === 1, "the second write to start");
    assertEquals(await settlesNow(second), false, "resolved with the first message's write");
    releaseSecond();
    assertEquals(await within(second), true);
    assertEquals([(await client.readFrame())?.message(), (await client.readFrame())?.message()], ["first", "second"]);
  }));

Deno.test("shell: sendMessage resolves false once close() is called and once the connection has ended", async () => {
  let ended: Recorder | undefined;
  await withMemoryClient(async (client, handler) => {
    handler.close(1000);
    assertEquals(await handler.sendMessage("after close()"), false);
    assertEquals((await client.readUntilClose()).code, 1000);
    await client.sendClose(1000);
    await client.expectEnd();
    ended = handler;
  });
  assertEquals(ended?.state, "closed");
  assertEquals(await ended!.sendMessage("after the end"), false);
});

Deno.test("shell: a send whose write never completes resolves false when the connection is cut off", () =>
  withMemoryClient(async (client, handler, server) => {
    const release = server.hold();
    const written = handler.sendMessage("never written");
    await server.until(() => server.writesInFlight === 1, "the write to start");
    client.close(); // EOF for the server, which gives up on the held write after closeTimeout
    assertEquals(await within(written, 3000, "the send to resolve"), false);
    assert(server.closed, "the server did not close its end");
    release();
    await within(handler.disconnected.promise);
    assertEquals(handler.disconnects, 1);
  }, { options: { closeTimeout: 100 } }));

Deno.test("shell: a peer gone in the middle of a large write: the send resolves false, onDisconnect once, 1006", () =>
  withMemoryClient(async (client, handler, server) => {
    const written = handler.sendMessage(pattern(1 << 20));
    await server.until(() => server.writes.length > 20, "the write to be under way");
    client.close(); // the server's next write fails as on a reset socket
    assertEquals(await within(written, 3000, "the send to resolve"), false);
    await within(handler.disconnected.promise);
    assert(server.bytesWritten < (1 << 20), "all of it was written");
    assertEquals([handler.closeCode, handler.disconnects, handler.bufferedAmount], [1006, 1, 0]);
  }, { conn: { writeLimit: 1000 } }));

Deno.test("shell: ping() sends its data and resolves true once written; over 125 bytes throws; false once closed", () =>
  withMemoryClient(async (client, handler) => {
    const data = encoder.encode("are you there");
    assertEquals(await within(handler.ping(data)), true);
    const ping = await client.readFrame();
    assertEquals([ping?.opcode, ping?.payload], [Opcode.Ping, data]);
    let thrown: unknown;
    try {
      handler.ping(new Uint8Array(126));
    } catch (error) {
      thrown = error;
    }
    assert(thrown instanceof RangeError, `expected a RangeError, got ${thrown}`);
    handler.close(1000);
    assertEquals(await handler.ping(), false);
    assertEquals((await client.readUntilClose()).before, []);
  }));

// ---------------------------------------------------------------- the closing handshake

Deno.test("shell: close() writes its frame after queued data; closeWrite comes after the last byte of it, close after the peer's EOF", () =>
  withMemoryClient(async (client, handler, server) => {
    const sent = ["a", pattern(5000), "c"];
    for (const message of sent) handler.sendMessage(message);
    handler.close(4000, "bye");
    const close = await client.readUntilClose();
    assertEquals([close.code, close.reason], [4000, "bye"]);
    assertEquals(close.before.map((frame) => frame.message()), sent);
    assertEquals(server.log.includes("closeWrite"), false, "half-closed before the peer's close");
    await client.sendClose(4000);
    // RFC 6455 7.1.1: the server closes TCP first: EOF while the client is still open.
    await client.expectEnd();
    assertEquals(server.log.at(-1), "closeWrite");
    const closeFrame = encodeFrame(Opcode.Close, encodeClosePayload(4000, "bye"));
    const bytes = writtenFrom(server, 0);
    assertEquals(bytes.subarray(bytes.length - closeFrame.length), closeFrame, "the close frame is not last");
    client.close();
    await within(handler.disconnected.promise);
    assertEquals(server.log.slice(-2), ["closeWrite", "close"]);
    assertEquals([handler.closeCode, handler.disconnects], [4000, 1]);
  }, { conn: { writeLimit: 3 } }));

Deno.test("shell: the peer's close is echoed through 1-byte writes, then closeWrite, then close", () =>
  withMemoryClient(async (client, handler, server) => {
    const from = server.log.length;
    await client.sendClose(1001, "going");
    const echo = await client.readFrame();
    assertEquals([echo?.opcode, echo?.payload], [Opcode.Close, encodeClosePayload(1001)]);
    await client.expectEnd();
    assertEquals(server.log.slice(from), ["write", "write", "write", "write", "closeWrite"]);
    client.close();
    await within(handler.disconnected.promise);
    assertEquals(server.log.at(-1), "close");
    assertEquals([handler.closeCode, handler.closeReason, handler.disconnects], [1001, "going", 1]);
  }, { conn: { writeLimit: 1 } }));

Deno.test("shell: a peer that never answers close() is cut off after closeTimeout, onDisconnect once", () =>
  withMemoryClient(async (client, handler, server) => {
    handler.close(1000);
    assertEquals((await client.readUntilClose()).code, 1000);
    await client.expectEnd(3000);
    assert(server.closed, "the server did not close its end");
    await within(handler.disconnected.promise);
    assertEquals([handler.closeCode, handler.disconnects, handler.users.size], [1000, 1, 0]);
  }, { options: { closeTimeout: 50 } }));

// ---------------------------------------------------------------- pongs

Deno.test("shell: ten pings in one read get ten pongs with their data, in order", () =>
  withMemoryClient(async (client) => {
    const payloads = Array.from({ length: 10 }, (_, i) => encoder.encode(`ping ${i}`));
    await client.write(concat(payloads.map((data) => encodeFrame(Opcode.Ping, data, { mask: true }))));
    for (const data of payloads) {
      const pong = await client.readFrame();
      assertEquals([pong?.opcode, pong?.payload], [Opcode.Pong, data]);
    }
  }));

Deno.test("RFC 6455 5.5.3: pings arriving together past maxBackpressure: the queued pong is replaced, the last pong carries the newest ping's data", () =>
  withMemoryClient(async (client) => {
    // A pong is 8 bytes: two fit in the 20-byte limit; each later one replaces the second.
    const payloads = Array.from({ length: 10 }, (_, i) => encoder.encode(`ping ${i}`));
    await client.write(concat(payloads.map((data) => encodeFrame(Opcode.Ping, data, { mask: true }))));
    const pongs = [await client.readFrame(), await client.readFrame()];
    assertEquals(pongs.map((pong) => pong?.opcode), [Opcode.Pong, Opcode.Pong]);
    assertEquals(pongs.map((pong) => pong?.payload), [payloads[0], payloads[9]]);
    await client.send(Opcode.Ping, "after");
    assertEquals((await client.readFrame())?.payload, encoder.encode("after"));
  }, { options: { maxBackpressure: 20 } }));

// ---------------------------------------------------------------- handshake callbacks that fail

class ThrowsInSelect extends Recorder {
  override selectProtocol(): string | undefined {
    throw new Error("bug in selectProtocol");
  }
}
class ThrowsInHandshake extends Recorder {
  override onHandshake(): boolean {
    throw new Error("bug in onHandshake");
  }
}
class RejectsInHandshake extends Recorder {
  override onHandshake(): Promise<boolean> {
    return Promise.reject(new Error("bug in an async onHandshake"));
  }
}
class ThrowsInHttp extends Recorder {
  override onHttpRequest(): HttpResponse | undefined {
    throw new Error("bug in onHttpRequest");
  }
}
class RefusesWithStatus extends Recorder {
  override selectProtocol(): string | undefined {
    throw new ProtocolError("no such room", { status: 404 });
  }
}

Deno.test("shell: a handshake callback that throws gets a 500 answer and a closed connection, logged once", async (t) => {
  const withProtocol = handshake({ "Sec-WebSocket-Protocol": "chat" });
  const plain = "GET /page HTTP/1.1\r\nHost: x\r\n\r\n";
  const cases: [string, typeof Recorder, string, number, number][] = [
    ["selectProtocol throws", ThrowsInSelect, withProtocol, 500, 1],
    ["onHandshake throws", ThrowsInHandshake, withProtocol, 500, 1],
    ["onHandshake rejects", RejectsInHandshake, withProtocol, 500, 1],
    ["onHttpRequest throws", ThrowsInHttp, plain, 500, 1],
    ["selectProtocol throws a ProtocolError with 404: its status, not logged", RefusesWithStatus, withProtocol, 404, 0],
  ];
  for (const [name, handler, request, status, logs] of cases) {
    await t.step(name, async () => {
      const ends: MemoryEnd[] = [];
      const originalError = console.error;
      const logged: unknown[][] = [];
      console.error = (...args: unknown[]) => logged.push(args);
      try {
        await withMemoryClient(async (client, recorder, server) => {
          await client.write(request);
          const answer = await client.readAnswer();
          assertEquals(answer.status, status, answer.body);
          assertEquals(answer.headers.get("connection"), "close");
          await client.expectEnd();
          assertEquals([recorder.state, recorder.disconnects, recorder.users.size], ["closed", 0, 0]);
          ends.push(server);
        }, { handler, open: false });
      } finally {
        console.error = originalError;
      }
      assertEquals(logged.length, logs, `logged: ${logged.map((args) => args.join(" ")).join("; ")}`);
      assertEquals(ends.map((end) => end.log.slice(-2)), [["closeWrite", "close"]]);
    });
  }
});

// Decides the handshake only when the test says so.
class Deciding extends Recorder {
  entered = Promise.withResolvers<void>();
  decide = Promise.withResolvers<void>();
  override async onHandshake(header: string): Promise<void> {
    super.onHandshake(header);
    this.entered.resolve();
    await this.decide.promise;
  }
}

Deno.test("shell: a handshake accepted after the connection was dropped (timeout, close()) is not answered, nothing logged", async (t) => {
  const ways: [string, (handler: Deciding) => void, number][] = [
    ["the handshake timeout fired", () => {}, 30],
    ["close() was called", (handler) => handler.close(), 10_000],
  ];
  for (const [name, drop, handshakeTimeout] of ways) {
    await t.step(name, async () => {
      const originalError = console.error;
      const logged: unknown[][] = [];
      console.error = (...args: unknown[]) => logged.push(args);
      try {
        await withMemoryClient(async (client, handler, server) => {
          await client.write(handshake());
          await within(handler.entered.promise, 2000, "onHandshake");
          drop(handler);
          await client.expectEnd(2000);
          handler.decide.resolve(); // onHandshake accepts, too late
          await server.until(() => server.closed, "the server end to close");
          assertEquals([handler.state, handler.disconnects, handler.users.size], ["closed", 0, 0]);
        }, { handler: Deciding, open: false, options: { handshakeTimeout } });
      } finally {
        console.error = originalError;
      }
      assertEquals(logged.map((args) => args.join(" ")), []);
    });
  }
});

// ---------------------------------------------------------------- broadcast

/** A Recorder served over a memory connection whose raw client has completed the handshake. */
async function openOverMemory(users: Map<string, Protocol>, options: ProtocolOptions, headers = {}) {
  const [server, peer] = memoryPair();
  const handler = new Recorder(users, { pingInterval: 0, idleTimeout: 0, closeTimeout: 1000, ...options });
  const served = handler.serve(server);
  const client = RawClient.over(peer);
  await client.write(handshake(headers));
  assertEquals((await client.readAnswer()).status, 101);
  return { handler, client, served };
}

Deno.test("shell: broadcast skips a recipient that has ended, without encoding for it (its compressor is gone)", async () => {
  const users = new Map<string, Protocol>();
  // With context takeover each connection compresses its own copy.
  const options = { compression: { mode: "context-takeover" as const } };
  const offer = { "Sec-WebSocket-Extensions": "permessage-deflate" };
  const [gone, open] = [await openOverMemory(users, options, offer), await openOverMemory(users, options, offer)];
  await gone.client.sendClose(1000);
  assertEquals((await gone.client.readUntilClose()).code, 1000);
  gone.client.close();
  await within(gone.handler.disconnected.promise);
  await within(gone.served);
  assertEquals(gone.handler.state, "closed");
  const before = deflateStats.compressed;
  assertEquals(Protocol.broadcast([gone.handler, open.handler], "x".repeat(1000)), 1);
  assertEquals(deflateStats.compressed - before, 1, "compressed for the recipient that has ended");
  open.client.close();
  await within(open.served);
});

// ---------------------------------------------------------------- heartbeat groups

Deno.test("shell: once its connections have ended, a heartbeat group leaves no timer: the process exits", async () => {
  // The op sanitizer does not see intervals; a child process that cannot exit does.
  const script = `
    import { handshake, memoryPair, RawClient, Recorder } from ${JSON.stringify(import.meta.resolve("./test_util.ts"))};
    const [server, peer] = memoryPair();
    const handler = new Recorder(new Map(), { pingInterval: 100, idleTimeout: 1000, closeTimeout: 100 });
    const served = handler.serve(server);
    const client = RawClient.over(peer);
    await client.write(handshake());
    await client.readAnswer();
    await client.sendClose(1000);
    await client.readUntilClose();
    client.close();
    await served;
    console.log("ended");`;
  const path = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(path, script);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-check", "--config", new URL("./deno.json", import.meta.url).pathname, path],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(15_000),
    });
    const { code, stdout, stderr } = await child.output();
    const out = new TextDecoder().decode(stdout).trim();
    assertEquals([code, out], [0, "ended"], new TextDecoder().decode(stderr));
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("shell: a write that fails cuts the connection off at once: the send resolves false while the peer is still there", async () => {
  const [server, peer] = memoryPair();
  let writes = 0;
  // The 101 answer goes out; the next write fails as on a reset socket, while reads stay pending.
  const failing = {
    read: (into: Uint8Array) => server.read(into),
    write: (bytes: Uint8Array) =>
      ++writes === 1 ? server.write(bytes) : Promise.reject(new Deno.errors.ConnectionReset("reset by peer")),
    closeWrite: () => server.closeWrite(),
    close: () => server.close(),
  };
  const handler = new Recorder(new Map(), { pingInterval: 0, idleTimeout: 0, closeTimeout: 1000 });
  const served = handler.serve(failing);
  const client = RawClient.over(peer);
  try {
    await client.write(handshake());
    assertEquals((await client.readAnswer()).status, 101);
    await within(handler.connected.promise);
    assertEquals(await within(handler.sendMessage("lost"), 2000, "the send to resolve"), false);
    await within(handler.disconnected.promise, 2000);
    assertEquals([handler.state, handler.closeCode, server.closed], ["closed", 1006, true]);
  } finally {
    client.close();
    await within(served);
  }
});
