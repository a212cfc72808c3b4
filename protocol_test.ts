import { assert, assertEquals, assertMatch } from "@std/assert";
import { ProtocolError } from "./errors.ts";
import { encodeFrame, Opcode } from "./frame.ts";
import { computeAcceptKey, Protocol } from "./protocol.ts";
import { sha1 } from "./_http.ts";
import {
  ACCEPT,
  encoder,
  handshake,
  KEY,
  type MemoryEnd,
  memoryPair,
  RawClient,
  Recorder,
  recordingServer,
  TestServer,
  within,
  withServer,
} from "./test_util.ts";

const utf8 = (text: string) => encoder.encode(text);
const pattern = (size: number) => new Uint8Array(size).map((_, i) => (i * 31) & 255);

// ---------------------------------------------------------------- RFC 6455 4.2: opening handshake

Deno.test("RFC 6455 4.2.2: the accept key of the RFC's own example", async () => {
  assertEquals(await computeAcceptKey(KEY), ACCEPT);
});

Deno.test("RFC 6455 4.2.2: the accept key's SHA-1 agrees with WebCrypto's at every padding boundary", async () => {
  // 0-200 bytes: one, two and four blocks, the 55/56 and 63/64 boundaries of FIPS 180-4 5.1.1.
  for (let length = 0; length <= 200; length++) {
    const message = pattern(length).map((byte) => byte ^ length);
    const expected = new Uint8Array(await crypto.subtle.digest("SHA-1", message));
    assertEquals(sha1(message), expected, `${length} bytes`);
  }
  // FIPS 180-2 appendix A.1 ("abc").
  assertEquals(sha1(utf8("abc")).toHex(), "a9993e364706816aba3e25717850c26c9cd0d89d");
});

Deno.test("RFC 6455 4.2.2: a valid handshake is answered 101 without extensions", () =>
  withServer(async (server) => {
    const client = await RawClient.connect(server.port);
    await client.write(handshake({ "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits" }));
    const answer = await client.readAnswer();
    assertEquals(answer.status, 101);
    assertEquals(answer.headers.get("upgrade"), "websocket");
    assertEquals(answer.headers.get("connection"), "Upgrade");
    assertEquals(answer.headers.get("sec-websocket-accept"), ACCEPT);
    assertEquals(answer.headers.get("sec-websocket-extensions"), null);
    assertEquals(answer.headers.get("sec-websocket-protocol"), null);
    const handler = await server.handler(0);
    await handler.connected.promise;
    assertEquals(handler.request?.method, "GET");
    assertEquals(handler.request?.path, "/chat");
    assertEquals(handler.request?.query.get("room"), "1");
    assertEquals(handler.request?.headers.get("sec-websocket-key"), KEY);
    assertMatch(handler.header, /^GET \/chat\?room=1 HTTP\/1\.1\r\nHost: 127\.0\.0\.1\r\n/);
    client.close();
  }));

Deno.test("RFC 6455 4.2.1: header names and tokens are case-insensitive, Connection may be a list", () =>
  withServer(async (server) => {
    const client = await RawClient.connect(server.port);
    await client.write(
      `GET / HTTP/1.1\r\nhost: x\r\nUPGRADE: WebSocket\r\nconnection: keep-alive, Upgrade\r\n` +
        `sec-websocket-key: ${KEY}\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n`,
    );
    assertEquals((await client.readAnswer()).status, 101);
    client.close();
  }));

Deno.test("RFC 6455 4.2.1: a head in 1-byte writes, and a head with a frame in one write", () =>
  withServer(async (server) => {
    const slow = await RawClient.connect(server.port);
    for (const byte of utf8(handshake())) await slow.write(new Uint8Array([byte]));
    assertEquals((await slow.readAnswer()).status, 101);

    const eager = await RawClient.connect(server.port);
    const frame = encodeFrame(Opcode.Text, "already here", { mask: true });
    const head = utf8(handshake());
    const both = new Uint8Array(head.length + frame.length);
    both.set(head);
    both.set(frame, head.length);
    await eager.write(both);
    assertEquals((await eager.readAnswer()).status, 101);
    assertEquals(await (await server.handler(1)).received(1), ["already here"]);
    slow.close();
    eager.close();
  }));

const REJECTIONS: [string, string, number][] = [
  ["POST", handshake({}, "POST / HTTP/1.1"), 405],
  ["HTTP/1.0", handshake({}, "GET / HTTP/1.0"), 400],
  ["malformed request line", handshake({}, "GET /"), 400],
  ["malformed target", handshake({}, "GET chat HTTP/1.1"), 400],
  ["missing Host", handshake({ Host: null }), 400],
  ["missing Upgrade", handshake({ Upgrade: null }), 400],
  ["Upgrade not websocket", handshake({ Upgrade: "h2c" }), 400],
  ["Connection without upgrade", handshake({ Connection: "keep-alive" }), 400],
  ["missing key", handshake({ "Sec-WebSocket-Key": null }), 400],
  ["key of 15 bytes", handshake({ "Sec-WebSocket-Key": btoa("x".repeat(15)) }), 400],
  ["key not base64", handshake({ "Sec-WebSocket-Key": "not a key at all!!!!!!==" }), 400],
  ["two keys", handshake({ "Sec-WebSocket-Key": `${KEY}, ${KEY}` }), 400],
  ["missing version", handshake({ "Sec-WebSocket-Version": null }), 400],
  ["version 8", handshake({ "Sec-WebSocket-Version": "8" }), 426],
  // RFC 6455 4.2.2: exactly 13, not "13 or above".
  ["version 14", handshake({ "Sec-WebSocket-Version": "14" }), 426],
  ["version abc", handshake({ "Sec-WebSocket-Version": "abc" }), 426],
  ["version list 13, 8", handshake({ "Sec-WebSocket-Version": "13, 8" }), 426],
  ["two version lines, 13 and 8", handshake({ "sec-websocket-version": "8" }), 426],
  ["malformed header line", handshake({ "Bad Header": "x" }), 400],
  ["obsolete line folding", handshake({ "X-A": "a\r\n  folded" }), 400],
  ["head over 16 KiB", handshake({ "X-Big": "x".repeat(17 * 1024) }), 431],
  [
    "101 header lines",
    handshake(Object.fromEntries(Array.from({ length: 96 }, (_, i) => [`X-H${i}`, "1"]))),
    431,
  ],
];

Deno.test("RFC 6455 4.2.1, 4.2.2: bad handshakes get their HTTP status and a closed connection", async (t) => {
  await withServer(async (server) => {
    for (const [name, request, status] of REJECTIONS) {
      await t.step(`${name} → ${status}`, async () => {
        const client = await RawClient.connect(server.port);
        try {
          await client.write(request);
          const answer = await client.readAnswer();
          assertEquals(answer.status, status, answer.body);
          assertEquals(answer.headers.get("connection"), "close");
          if (status === 426) assertEquals(answer.headers.get("sec-websocket-version"), "13");
          if (status === 405) assertEquals(answer.headers.get("allow"), "GET");
          await client.expectEnd();
        } finally {
          client.close();
        }
      });
    }
    assertEquals(server.users.size, 0);
    assert(server.handlers.every((handler) => handler.disconnects === 0), "onDisconnect without onConnect");
  });
});

Deno.test("RFC 6455 4.2.2: onHandshake can refuse with 403, a chosen status, or fail with 500", async (t) => {
  const verdicts: [string, () => boolean | void, number][] = [
    ["returns false", () => false, 403],
    ["throws ProtocolError 401", () => {
      throw new ProtocolError("no token", { status: 401 });
    }, 401],
    ["throws Error", () => {
      throw new Error("bug in the application");
    }, 500],
  ];
  for (const [name, verdict, status] of verdicts) {
    await t.step(name, async () => {
      // Refuses requests for /refuse only, so that a later handshake can get through.
      class Refuser extends Recorder {
        override onHandshake(header: string) {
          super.onHandshake(header);
          return this.request?.path === "/refuse" ? verdict() : undefined;
        }
      }
      const server = new TestServer((users) => new Refuser(users, { pingInterval: 0, idleTimeout: 0 }));
      const originalError = console.error;
      console.error = () => {}; // the 500 case logs the application's error
      try {
        const client = await RawClient.connect(server.port);
        await client.write(handshake({}, "GET /refuse HTTP/1.1"));
        assertEquals((await client.readAnswer()).status, status);
        await client.expectEnd();
        client.close();
        assertEquals(server.users.size, 0);
        // The server keeps serving: a handshake that onHandshake accepts gets through.
        const later = await RawClient.open(server.port);
        await later.send(Opcode.Text, "after a refusal");
        assertEquals(await (await server.handler(1)).received(1), ["after a refusal"]);
        assertEquals(server.users.size, 1);
        later.close();
      } finally {
        console.error = originalError;
        await server.close();
      }
    });
  }
});

Deno.test("RFC 6455 4.1: a client that sends no complete head is dropped at the handshake timeout", () =>
  withServer(async (server) => {
    const client = await RawClient.connect(server.port);
    await client.write("GET / HTTP/1.1\r\nHost: x\r\n");
    const started = Date.now();
    await client.expectEnd(3000);
    assert(Date.now() - started >= 150, "closed before the timeout");
    client.close();
  }, { handshakeTimeout: 200 }));

Deno.test("RFC 6455 4.2.2: subprotocol chosen by selectProtocol, none by default", async () => {
  class Chat extends Recorder {
    override selectProtocol(offered: string[]) {
      return offered.find((name) => name === "chat");
    }
  }
  const server = new TestServer((users) => new Chat(users));
  try {
    const client = await RawClient.connect(server.port);
    await client.write(handshake({ "Sec-WebSocket-Protocol": "superchat, chat" }));
    const answer = await client.readAnswer();
    assertEquals(answer.headers.get("sec-websocket-protocol"), "chat");
    assertEquals((await server.handler(0)).protocol, "chat");
    client.close();
  } finally {
    await server.close();
  }
  await withServer(async (plain) => {
    const client = await RawClient.connect(plain.port);
    await client.write(handshake({ "Sec-WebSocket-Protocol": "chat" }));
    assertEquals((await client.readAnswer()).headers.get("sec-websocket-protocol"), null);
    client.close();
  });
});

Deno.test("RFC 6455 4.2.2: a subprotocol that the client did not offer is refused with 500", async () => {
  class Wrong extends Recorder {
    override selectProtocol() {
      return "not-offered";
    }
  }
  const server = new TestServer((users) => new Wrong(users, { pingInterval: 0, idleTimeout: 0 }));
  try {
    const client = await RawClient.connect(server.port);
    await client.write(handshake({ "Sec-WebSocket-Protocol": "chat" }));
    const answer = await client.readAnswer();
    assertEquals(answer.status, 500, answer.body);
    assertEquals(answer.headers.get("sec-websocket-protocol"), null);
    await client.expectEnd();
    client.close();
    assertEquals(server.users.size, 0);
  } finally {
    await server.close();
  }
});

Deno.test("RFC 6455 10.2: allowedOrigins as a list and as a predicate", async () => {
  for (
    const allowedOrigins of [["https://good.example"], (origin: string | null) => origin === "https://good.example"]
  ) {
    await withServer(async (server) => {
      const good = await RawClient.connect(server.port);
      await good.write(handshake({ Origin: "https://good.example" }));
      assertEquals((await good.readAnswer()).status, 101);
      const evil = await RawClient.connect(server.port);
      await evil.write(handshake({ Origin: "https://evil.example" }));
      assertEquals((await evil.readAnswer()).status, 403);
      const none = await RawClient.connect(server.port);
      await none.write(handshake());
      assertEquals((await none.readAnswer()).status, 403);
      good.close();
      evil.close();
      none.close();
    }, { allowedOrigins });
  }
});

// ---------------------------------------------------------------- RFC 6455 5: data frames

Deno.test("RFC 6455 5.6: text arrives as a string, binary as bytes, in order", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const frames = [
      encodeFrame(Opcode.Text, "first", { mask: true }),
      encodeFrame(Opcode.Binary, new Uint8Array([0, 1, 255]), { mask: true }),
      encodeFrame(Opcode.Text, "", { mask: true }),
      encodeFrame(Opcode.Text, "κόσμε", { mask: true }),
    ];
    // All in one write, then the same one byte at a time.
    const all = new Uint8Array(frames.reduce((sum, frame) => sum + frame.length, 0));
    frames.reduce((offset, frame) => (all.set(frame, offset), offset + frame.length), 0);
    await client.write(all);
    for (const byte of all) await client.write(new Uint8Array([byte]));
    const expected = ["first", new Uint8Array([0, 1, 255]), "", "κόσμε"];
    assertEquals(await (await server.handler(0)).received(8), [...expected, ...expected]);
    client.close();
  }));

Deno.test("RFC 6455 5.4: fragments are reassembled; a ping between them is answered", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    await client.send(Opcode.Text, "Hel", false);
    await client.send(Opcode.Ping, "are you there");
    await client.send(Opcode.Continuation, "lo ", false);
    await client.send(Opcode.Pong, "unsolicited");
    await client.send(Opcode.Continuation, "world");
    await client.send(Opcode.Binary, new Uint8Array([1]), false);
    await client.send(Opcode.Continuation, new Uint8Array([2, 3]));
    const pong = await client.readFrame();
    assertEquals([pong?.opcode, pong?.message()], [Opcode.Pong, new TextEncoder().encode("are you there")]);
    assertEquals(await (await server.handler(0)).received(2), ["Hello world", new Uint8Array([1, 2, 3])]);
    client.close();
  }));

Deno.test("RFC 6455 5.6: binary messages are not UTF-8, whole or fragmented", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    await client.send(Opcode.Binary, new Uint8Array([0xff, 0xc3, 0x28]));
    await client.send(Opcode.Binary, new Uint8Array([0xff]), false);
    await client.send(Opcode.Continuation, new Uint8Array([0xc3, 0x28]));
    const expected = new Uint8Array([0xff, 0xc3, 0x28]);
    assertEquals(await (await server.handler(0)).received(2), [expected, expected]);
    client.close();
  }));

Deno.test("RFC 6455 8.1: UTF-8 split inside a character across fragments is reassembled", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const bytes = utf8("κόσμε");
    for (let cut = 1; cut < bytes.length; cut++) {
      await client.send(Opcode.Text, bytes.subarray(0, cut), false);
      await client.send(Opcode.Continuation, bytes.subarray(cut));
    }
    const messages = await (await server.handler(0)).received(bytes.length - 1);
    assert(messages.every((message) => message === "κόσμε"));
    client.close();
  }));

Deno.test("RFC 6455 5.5.2: a ping is answered with a pong carrying the same data", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const data = new Uint8Array(125).map((_, i) => i);
    await client.send(Opcode.Ping, data);
    const pong = await client.readFrame();
    assertEquals([pong?.opcode, pong?.payload], [Opcode.Pong, data]);
    client.close();
  }));

Deno.test("a 16 MiB binary message arrives intact; one byte more is 1009", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const big = new Uint8Array(16 * 1024 * 1024).map((_, i) => (i * 13) & 255);
    await client.send(Opcode.Binary, big);
    const received = (await (await server.handler(0)).received(1))[0] as Uint8Array;
    assert(received instanceof Uint8Array);
    assertEquals(received.length, big.length);
    assert(received.every((byte, i) => byte === big[i]), "payload differs");
    await client.write(encodeFrame(Opcode.Binary, new Uint8Array(16 * 1024 * 1024 + 1), { mask: true }));
    assertEquals((await client.readUntilClose()).code, 1009);
    await client.expectEnd();
    client.close();
  }));

// A sequence of frames (sent one by one) and the close code the server must fail with.
const VIOLATIONS: [string, Uint8Array[], number][] = [
  ["unmasked client frame", [encodeFrame(Opcode.Text, "hi")], 1002],
  ["RSV1 set", [new Uint8Array([0xc1, 0x80, 0, 0, 0, 0])], 1002],
  ["reserved opcode 3", [new Uint8Array([0x83, 0x80, 0, 0, 0, 0])], 1002],
  ["reserved opcode 11", [new Uint8Array([0x8b, 0x80, 0, 0, 0, 0])], 1002],
  ["control frame over 125 bytes", [new Uint8Array([0x89, 0xfe, 0, 126])], 1002],
  ["fragmented ping", [encodeFrame(Opcode.Ping, "x", { fin: false, mask: true })], 1002],
  ["continuation without a message", [encodeFrame(Opcode.Continuation, "x", { mask: true })], 1002],
  [
    "new message inside a fragmented one",
    [encodeFrame(Opcode.Text, "a", { fin: false, mask: true }), encodeFrame(Opcode.Text, "b", { mask: true })],
    1002,
  ],
  ["invalid UTF-8 in one frame", [encodeFrame(Opcode.Text, new Uint8Array([0xc3, 0x28]), { mask: true })], 1007],
  [
    "invalid UTF-8 in the first fragment, before the rest arrives",
    [encodeFrame(Opcode.Text, new Uint8Array([0x61, 0xff]), { fin: false, mask: true })],
    1007,
  ],
  [
    "UTF-8 truncated at the final fragment",
    [
      encodeFrame(Opcode.Text, new Uint8Array([0x61]), { fin: false, mask: true }),
      encodeFrame(Opcode.Continuation, new Uint8Array([0xce]), { mask: true }),
    ],
    1007,
  ],
  [
    "declared length over maxPayload, payload never sent",
    [new Uint8Array([0x82, 0xff, 0, 0, 0, 0, 0, 0x20, 0, 0])],
    1009,
  ],
  [
    "fragments summing over maxPayload",
    [
      encodeFrame(Opcode.Binary, new Uint8Array(600_000), { fin: false, mask: true }),
      encodeFrame(Opcode.Continuation, new Uint8Array(600_000), { fin: false, mask: true }),
    ],
    1009,
  ],
  ["close with a 1-byte payload", [encodeFrame(Opcode.Close, new Uint8Array([3]), { mask: true })], 1002],
  [
    "close reason that is not UTF-8",
    [encodeFrame(Opcode.Close, new Uint8Array([3, 232, 0xff]), { mask: true })],
    1007,
  ],
];

Deno.test("RFC 6455 5, 7.1.7: protocol violations fail the connection with their close code", async (t) => {
  await withServer(async (server) => {
    for (const [index, [name, frames, code]] of VIOLATIONS.entries()) {
      await t.step(`${name} → ${code}`, async () => {
        const client = await RawClient.open(server.port);
        for (const frame of frames) await client.write(frame);
        const close = await client.readUntilClose();
        assertEquals(close.code, code, close.reason);
        await client.expectEnd();
        client.close();
        const handler = await server.handler(index);
        await within(handler.disconnected.promise);
        assertEquals(handler.closeCode, code);
        assertEquals(handler.messages, []);
      });
    }
  }, { maxPayload: 1024 * 1024 });
});

// ---------------------------------------------------------------- RFC 6455 5.5.1, 7: closing

Deno.test("RFC 6455 5.5.1: a client close is echoed, then TCP is closed and the user removed", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const handler = await server.handler(0);
    await handler.connected.promise;
    assertEquals(server.users.get(handler.id), handler);
    await client.sendClose(1000, "bye");
    const close = await client.readUntilClose();
    assertEquals(close.code, 1000);
    await client.expectEnd();
    client.close();
    await within(handler.disconnected.promise);
    assertEquals([handler.closeCode, handler.closeReason, handler.disconnects], [1000, "bye", 1]);
    assertEquals(server.users.size, 0);
    assertEquals(handler.state, "closed");
  }));

Deno.test("RFC 6455 5.5.1: an empty close is answered with an empty close, code 1005", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    await client.send(Opcode.Close);
    const frame = await client.readFrame();
    assertEquals([frame?.opcode, frame?.payload.length], [Opcode.Close, 0]);
    await client.expectEnd();
    client.close();
    const handler = await server.handler(0);
    await within(handler.disconnected.promise);
    assertEquals(handler.closeCode, 1005);
  }));

Deno.test("RFC 6455 7.4: close codes that may not be sent are 1002, the others are echoed", async (t) => {
  await withServer(async (server) => {
    const cases = [
      ...[0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000].map((code) => [code, 1002]),
      ...[1000, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 4999].map((code) => [code, code]),
    ];
    for (const [sent, answered] of cases) {
      await t.step(`${sent} → ${answered}`, async () => {
        const client = await RawClient.open(server.port);
        await client.send(Opcode.Close, new Uint8Array([sent >> 8, sent & 255]));
        assertEquals((await client.readUntilClose()).code, answered);
        await client.expectEnd();
        client.close();
      });
    }
  });
});

Deno.test("RFC 6455 7.1.2: close() from the server; queued messages first, nothing after", async () => {
  class Closer extends Recorder {
    sentAfterClose: Promise<boolean> | undefined;
    override onMessage(msg: string | Uint8Array) {
      super.onMessage(msg);
      for (let i = 0; i < 100; i++) this.sendMessage(`queued ${i}`);
      this.close(4001, "done");
      this.sentAfterClose = this.sendMessage("after close");
    }
  }
  const server = new TestServer((users) => new Closer(users, { pingInterval: 0, idleTimeout: 0, closeTimeout: 1000 }));
  try {
    const client = await RawClient.open(server.port);
    await client.send(Opcode.Text, "go");
    const close = await client.readUntilClose();
    assertEquals([close.code, close.reason], [4001, "done"]);
    assertEquals(close.before.map((frame) => frame.message()), Array.from({ length: 100 }, (_, i) => `queued ${i}`));
    const handler = await server.handler(0);
    assertEquals(handler.state, "closing");
    assertEquals(await handler.sentAfterClose, false);
    await client.sendClose(4001);
    await client.expectEnd();
    client.close();
    await within(handler.disconnected.promise);
    assertEquals(handler.closeCode, 4001);
  } finally {
    await server.close();
  }
});

Deno.test("RFC 6455 5.5.1: after its close frame the server sends nothing, not even a pong", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const handler = await server.handler(0);
    await handler.connected.promise;
    handler.close(4000, "bye");
    const close = await client.readUntilClose();
    assertEquals([close.code, close.before.length], [4000, 0]);
    await client.send(Opcode.Ping, "still there?");
    await client.sendClose(4000);
    await client.expectEnd();
    client.close();
    await within(handler.disconnected.promise);
    assertEquals(handler.closeCode, 4000);
  }));

Deno.test("RFC 6455 7.1.1: a peer that never answers our close is cut off after closeTimeout", async () => {
  const server = recordingServer({ closeTimeout: 200 });
  try {
    const client = await RawClient.open(server.port);
    const handler = await server.handler(0);
    await handler.connected.promise;
    const started = Date.now();
    handler.close(1000);
    assertEquals((await client.readUntilClose()).code, 1000);
    await client.expectEnd(3000);
    assert(Date.now() - started >= 150, "closed before the timeout");
    await within(handler.disconnected.promise);
    client.close();
  } finally {
    await server.close();
  }
});

Deno.test("RFC 6455 7.1.5: an abrupt TCP close is 1006, onDisconnect once, user removed", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    await client.send(Opcode.Text, "half a message", false);
    const handler = await server.handler(0);
    await handler.connected.promise;
    client.close();
    await within(handler.disconnected.promise);
    assertEquals([handler.closeCode, handler.disconnects, server.users.size], [1006, 1, 0]);
  }));

// ---------------------------------------------------------------- the TwistedWebsocket API

Deno.test("API: ids are UUID v4, users holds each connection under its id while open", () =>
  withServer(async (server) => {
    const clients = [await RawClient.open(server.port), await RawClient.open(server.port)];
    const handlers = [await server.handler(0), await server.handler(1)];
    await Promise.all(handlers.map((handler) => handler.connected.promise));
    for (const handler of handlers) {
      assertMatch(handler.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      assertEquals(handler.users.get(handler.id), handler);
    }
    assertEquals(server.users.size, 2);
    assertEquals(handlers[0].bufferedAmount, 0);
    clients[0].close();
    await within(handlers[0].disconnected.promise);
    assertEquals([...server.users.keys()], [handlers[1].id]);
    clients[1].close();
  }));

Deno.test("API: sendMessage resolves true once written, false once closed", () =>
  withServer(async (server) => {
    const client = await RawClient.open(server.port);
    const handler = await server.handler(0);
    await handler.connected.promise;
    assertEquals(await within(handler.sendMessage("text")), true);
    assertEquals(await within(handler.sendMessage(new Uint8Array([1, 2]))), true);
    assertEquals((await client.readFrame())?.message(), "text");
    assertEquals((await client.readFrame())?.message(), new Uint8Array([1, 2]));
    await client.sendClose(1000);
    await client.readUntilClose();
    await client.expectEnd();
    client.close();
    await within(handler.disconnected.promise);
    assertEquals(await handler.sendMessage("too late"), false);
  }));

Deno.test("API: Protocol.broadcast encodes once: every open user is handed the very same bytes objects", async () => {
  // Three users on memory connections, which record the buffers written; one is closing.
  const users = new Map<string, Protocol>();
  const pairs = [memoryPair(), memoryPair(), memoryPair()];
  const servers = pairs.map(([server]) => server);
  const handlers = pairs.map(() => new Recorder(users, { pingInterval: 0, idleTimeout: 0, closeTimeout: 300 }));
  const served = handlers.map((handler, i) => handler.serve(servers[i]));
  const clients = pairs.map(([, peer]) => RawClient.over(peer));
  try {
    for (const client of clients) {
      await client.write(handshake());
      assertEquals((await client.readAnswer()).status, 101);
    }
    await Promise.all(handlers.map((handler) => handler.connected.promise));
    handlers[2].close(1000);
    assertEquals((await clients[2].readUntilClose()).code, 1000);
    const open = servers.slice(0, 2);
    // A small text frame, written alone; a large binary: its header, then the caller's bytes.
    for (const [message, writesEach] of [["x".repeat(300), 1], [pattern(100_000), 2]] as const) {
      const from = open.map((server) => server.writes.length);
      const sentTo = servers.map((server) => server.writes.length);
      assertEquals(Protocol.broadcast(users.values(), message), 2);
      await open[0].until(() => open.every((server, i) => server.writes.length === from[i] + writesEach), "writes");
      const [first, second] = open.map((server, i) => server.writes.slice(from[i]).map((call) => call.given));
      for (let i = 0; i < writesEach; i++) assert(first[i] === second[i], `write ${i}: not the same bytes object`);
      if (message instanceof Uint8Array) assert(first[1] === message, "the payload was copied");
      for (const client of clients.slice(0, 2)) assertEquals((await client.readFrame())?.message(), message);
      assertEquals(servers[2].writes.length, sentTo[2], "sent to a closing user");
    }
  } finally {
    clients.forEach((client) => client.close());
    await within(Promise.all(served));
  }
});

Deno.test("API: a broadcast to 250 users starts only some writes in the turn it is sent, then all, once each", async () => {
  const users = new Map<string, Protocol>();
  const pairs = Array.from({ length: 250 }, () => memoryPair());
  const servers = pairs.map(([server]) => server);
  const handlers = pairs.map(() => new Recorder(users, { pingInterval: 0, idleTimeout: 0, closeTimeout: 300 }));
  const served = handlers.map((handler, i) => handler.serve(servers[i]));
  const clients = pairs.map(([, peer]) => RawClient.over(peer));
  const writeCalls = (server: MemoryEnd) => server.log.filter((call) => call === "write").length;
  try {
    for (const client of clients) await client.write(handshake());
    for (const client of clients) assertEquals((await client.readAnswer()).status, 101);
    await Promise.all(handlers.map((handler) => handler.connected.promise));
    const before = servers.map(writeCalls);
    assertEquals(Protocol.broadcast(users.values(), "to all"), 250);
    for (let i = 0; i < 10; i++) await Promise.resolve(); // this turn's microtasks, no later turn
    const started = servers.filter((server, i) => writeCalls(server) > before[i]).length;
    assert(started > 0 && started < 250, `${started} of 250 writes started in the broadcast's turn`);
    // Each pair signals its own activity only: poll, bounded.
    const deadline = Date.now() + 2000;
    while (!servers.every((server, i) => server.writes.length === before[i] + 1)) {
      assert(Date.now() < deadline, "not every write was made within 2 s");
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    for (const client of clients) assertEquals((await client.readFrame())?.message(), "to all");
    assertEquals(servers.map((server, i) => writeCalls(server) - before[i]), servers.map(() => 1));
  } finally {
    clients.forEach((client) => client.close());
    await within(Promise.all(served));
  }
});

Deno.test("API: a throwing or rejecting callback closes only its connection with 1011", async (t) => {
  for (const mode of ["throws", "rejects"]) {
    await t.step(mode, async () => {
      class Faulty extends Recorder {
        override onMessage(msg: string | Uint8Array) {
          super.onMessage(msg);
          if (msg !== "boom") return;
          if (mode === "throws") throw new Error("application bug");
          return Promise.reject(new Error("application bug"));
        }
      }
      const server = new TestServer((users) => new Faulty(users, { pingInterval: 0, idleTimeout: 0 }));
      const originalError = console.error;
      const logged: unknown[] = [];
      console.error = (...args: unknown[]) => logged.push(args);
      try {
        const [victim, bystander] = [await RawClient.open(server.port), await RawClient.open(server.port)];
        await victim.send(Opcode.Text, "boom");
        assertEquals((await victim.readUntilClose()).code, 1011);
        await bystander.send(Opcode.Text, "still here");
        assertEquals(await (await server.handler(1)).received(1), ["still here"]);
        assert(logged.length > 0, "the error was not logged");
        await victim.sendClose(1011);
        victim.close();
        bystander.close();
      } finally {
        console.error = originalError;
        await server.close();
      }
    });
  }
});
