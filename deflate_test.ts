// permessage-deflate (RFC 7692) with byte arrays: negotiation, the RFC's examples byte
// for byte, RSV1 rules, bad data, the bomb; then the broadcast over loopback.
import { assert, assertEquals, assertMatch, assertStringIncludes, assertThrows } from "@std/assert";
import { constants, deflateRawSync, inflateRawSync } from "node:zlib";
import { Core, resolveOptions } from "./_core.ts";
import {
  acceptAnswer,
  type DeflateParams,
  deflateResponse,
  deflateStats,
  deflateSupported,
  negotiateDeflate,
  parseExtensions,
  ZlibStream,
} from "./_deflate.ts";
import type { DataFrame } from "./_outbox.ts";
import { FrameError, ProtocolError } from "./errors.ts";
import { CloseCode, decodeClosePayload, decodeHeader, encodeFrame, Frame, Opcode } from "./frame.ts";
import fc from "fast-check";
import { Protocol, type ProtocolOptions } from "./protocol.ts";
import { parseServerArgs, startServer } from "./server.ts";
import { ACCEPT, encoder, handshake, jsonText, RawClient, Recorder, TestServer, within } from "./test_util.ts";

const hex = (text: string) => new Uint8Array(text.trim().split(/\s+/).map((byte) => parseInt(byte, 16)));
const MASK = new Uint8Array([0x37, 0xfa, 0x21, 0x3d]);
const TAIL = hex("00 00 ff ff");

// A client's frame: masked, RSV1 set unless `rsv1` is false.
function clientFrame(opcode: Opcode, payload: Uint8Array | string, { fin = true, rsv1 = true } = {}): Uint8Array {
  const frame = encodeFrame(opcode, payload, { fin, maskKey: MASK });
  if (rsv1) frame[0] |= 0x40;
  return frame;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const bytes = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    bytes.set(part, offset);
    offset += part.length;
  }
  return bytes;
}

const flatten = (frame: DataFrame) => Array.isArray(frame) ? concat(frame) : frame;

// What the core has queued, as if written.
function sent(core: Core): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let bytes = core.outbox.next(); bytes !== undefined; bytes = core.outbox.next()) {
    parts.push(bytes.slice());
    core.outbox.written(bytes.length);
  }
  return concat(parts);
}

// A server core past the handshake; `offer` is the client's Sec-WebSocket-Extensions.
function open(
  offer: string | null,
  compression: ProtocolOptions["compression"] = true,
  options: ProtocolOptions = {},
): { core: Core; extensions: string | null } {
  const core = new Core(resolveOptions({ compression, ...options }));
  core.receiveData(encoder.encode(handshake(offer === null ? {} : { "Sec-WebSocket-Extensions": offer })));
  assertEquals(core.takeEvents().map((event) => event.type), ["upgrade"]);
  core.accept(ACCEPT, "", 0);
  const answer = new TextDecoder().decode(sent(core));
  assertMatch(answer, /^HTTP\/1\.1 101 /);
  return { core, extensions: /^Sec-WebSocket-Extensions: (.*)\r$/m.exec(answer)?.[1] ?? null };
}

function messages(core: Core): (string | Uint8Array)[] {
  return core.takeEvents().flatMap((event) => event.type === "message" ? [event.data] : []);
}

// The close frame a failed core sent: its code and reason.
function closeSent(core: Core): { code: number; reason: string } {
  const frame = new Frame(sent(core), { masked: false });
  assertEquals(frame.opcode, Opcode.Close);
  return decodeClosePayload(frame.payload);
}

function compress(bytes: Uint8Array | string): Uint8Array {
  const data = typeof bytes === "string" ? encoder.encode(bytes) : bytes;
  const compressed = deflateRawSync(data, { finishFlush: constants.Z_SYNC_FLUSH });
  return compressed.subarray(0, compressed.length - 4); // RFC 7692 7.2.1
}

function inflate(payload: Uint8Array): Uint8Array {
  return new Uint8Array(inflateRawSync(concat([payload, TAIL]), { finishFlush: constants.Z_SYNC_FLUSH }));
}

// Compressible bytes that are not one repeated pattern.
function jsonLike(size: number, seed = 1): Uint8Array {
  return encoder.encode(jsonText(size, seed));
}

Deno.test("node:zlib's synchronous handle works in this Deno (else compression is declined)", () => {
  assert(deflateSupported());
});

// ---------------------------------------------------------------- negotiation

Deno.test("Sec-WebSocket-Extensions parses offers, parameters and quoted values (RFC 6455 9.1)", () => {
  assertEquals(
    parseExtensions('x-foo; a="b,c;d", permessage-deflate ; client_max_window_bits ; server_max_window_bits="1\\0", ,'),
    [
      { name: "permessage-deflate", params: [["client_max_window_bits", undefined], ["server_max_window_bits", "10"]] },
    ],
  );
  // A quoted value that is not a token once unquoted, an unterminated quote, a bad name: dropped.
  assertEquals(parseExtensions('permessage-deflate; a="b c", permessage-deflate; a="b'), []);
  assertEquals(parseExtensions("per message, PerMessage-Deflate; Server_No_Context_Takeover"), [
    { name: "permessage-deflate", params: [["server_no_context_takeover", undefined]] },
  ]);
});

Deno.test("negotiation: the first offer that can be honoured, answered with exactly the parameters in force", async (t) => {
  const shared = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
  const cases: [string, string | null, string | undefined, string | undefined][] = [
    // [what, offer, answer in no-context-takeover mode, answer in context-takeover mode]
    ["no offer", null, undefined, undefined],
    ["another extension only", "x-webkit-deflate-frame", undefined, undefined],
    ["a browser's offer", "permessage-deflate; client_max_window_bits", shared, "permessage-deflate"],
    ["a bare offer", "permessage-deflate", shared, "permessage-deflate"],
    [
      "both no_context_takeover asked for",
      "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
      shared,
      shared,
    ],
    [
      "server_no_context_takeover asked for",
      "permessage-deflate; server_no_context_takeover",
      shared,
      "permessage-deflate; server_no_context_takeover",
    ],
    [
      "server_max_window_bits",
      "permessage-deflate; server_max_window_bits=10",
      `${shared}; server_max_window_bits=10`,
      "permessage-deflate; server_max_window_bits=10",
    ],
    [
      "a quoted value",
      'permessage-deflate; server_max_window_bits="9"',
      `${shared}; server_max_window_bits=9`,
      "permessage-deflate; server_max_window_bits=9",
    ],
    [
      "client_max_window_bits with a value",
      "permessage-deflate; client_max_window_bits=8",
      shared,
      "permessage-deflate",
    ],
    // Offers that are declined, so the next one is taken.
    [
      "an unknown parameter",
      "permessage-deflate; foo, permessage-deflate; server_max_window_bits=12",
      `${shared}; server_max_window_bits=12`,
      "permessage-deflate; server_max_window_bits=12",
    ],
    [
      "a repeated parameter",
      "permessage-deflate; client_max_window_bits; client_max_window_bits, permessage-deflate",
      shared,
      "permessage-deflate",
    ],
    [
      "a repeated window, then a bare offer",
      "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10, permessage-deflate",
      shared,
      "permessage-deflate",
    ],
    ["a no_context_takeover with a value", "permessage-deflate; server_no_context_takeover=1", undefined, undefined],
    ["server_max_window_bits without a value", "permessage-deflate; server_max_window_bits", undefined, undefined],
    [
      "server_max_window_bits=8 (zlib cannot)",
      "permessage-deflate; server_max_window_bits=8, permessage-deflate",
      shared,
      "permessage-deflate",
    ],
    ["a window of 16", "permessage-deflate; server_max_window_bits=16", undefined, undefined],
    ["a window with a leading zero", "permessage-deflate; client_max_window_bits=09", undefined, undefined],
    ["a window of 7", "permessage-deflate; client_max_window_bits=7", undefined, undefined],
  ];
  for (const [what, offer, sharedAnswer, contextAnswer] of cases) {
    await t.step(what, () => {
      const answer = (mode: "no-context-takeover" | "context-takeover") => {
        const params = negotiateDeflate(offer, mode);
        return params && deflateResponse(params);
      };
      assertEquals(answer("no-context-takeover"), sharedAnswer);
      assertEquals(answer("context-takeover"), contextAnswer);
    });
  }
});

Deno.test("handshake: the 101 carries the answer; no offer, or compression off, leaves it out", () => {
  assertEquals(
    open("permessage-deflate; client_max_window_bits").extensions,
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
  );
  assertEquals(open("permessage-deflate", { mode: "context-takeover" }).extensions, "permessage-deflate");
  assertEquals(open(null).extensions, null);
  assertEquals(open("permessage-deflate", false).extensions, null);
  assertEquals(open("permessage-deflate").extensions !== null, true);
  // Offers over several header lines are one list (RFC 7230 3.2.2).
  const core = new Core(resolveOptions({ compression: true }));
  const head = handshake().replace(
    "\r\n\r\n",
    "\r\nSec-WebSocket-Extensions: x-foo\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
  );
  core.receiveData(encoder.encode(head));
  core.takeEvents();
  core.accept(ACCEPT, "", 0);
  assertStringIncludes(new TextDecoder().decode(sent(core)), "Sec-WebSocket-Extensions: permessage-deflate; server_no");
});

Deno.test("compression options are checked", () => {
  assertThrows(() => resolveOptions({ compression: { level: 10 } }), RangeError, "compression.level");
  assertThrows(() => resolveOptions({ compression: { level: -1 } }), RangeError, "compression.level");
  assertThrows(() => resolveOptions({ compression: { threshold: -1 } }), RangeError, "compression.threshold");
  // deno-lint-ignore no-explicit-any
  assertThrows(() => resolveOptions({ compression: { mode: "always" as any } }), RangeError, "compression.mode");
  assertEquals(resolveOptions({}).compression, undefined);
  assertEquals(resolveOptions({ compression: true }).compression, {
    mode: "no-context-takeover",
    threshold: 256,
    level: 6,
  });
});

// ---------------------------------------------------------------- RFC 7692 7.2.3: receiving

Deno.test('RFC 7692 7.2.3.1: "Hello" in one compressed frame, and in two fragments', () => {
  const { core } = open("permessage-deflate");
  core.receiveData(clientFrame(Opcode.Text, hex("f2 48 cd c9 c9 07 00")));
  assertEquals(messages(core), ["Hello"]);
  // RSV1 only on the first fragment (RFC 7692 6.1).
  core.receiveData(clientFrame(Opcode.Text, hex("f2 48 cd"), { fin: false }));
  assertEquals(messages(core), []);
  core.receiveData(clientFrame(Opcode.Continuation, hex("c9 c9 07 00"), { rsv1: false }));
  assertEquals(messages(core), ["Hello"]);
});

Deno.test("RFC 7692 7.2.3.2: two messages sharing a window, with client context takeover", () => {
  const { core, extensions } = open("permessage-deflate", { mode: "context-takeover" });
  assertEquals(extensions, "permessage-deflate");
  core.receiveData(clientFrame(Opcode.Text, hex("f2 48 cd c9 c9 07 00")));
  core.receiveData(clientFrame(Opcode.Text, hex("f2 00 11 00 00")));
  assertEquals(messages(core), ["Hello", "Hello"]);
});

Deno.test("RFC 7692 7.2.3.2: without client context takeover, a message cannot refer to the last one: 1007", () => {
  const { core } = open("permessage-deflate");
  core.receiveData(clientFrame(Opcode.Text, hex("f2 48 cd c9 c9 07 00")));
  core.receiveData(clientFrame(Opcode.Text, hex("f2 00 11 00 00")));
  assertEquals(messages(core), ["Hello"]);
  assertEquals(closeSent(core).code, CloseCode.InvalidPayload);
});

Deno.test("RFC 7692 7.2.3.3-7.2.3.6: a stored block, BFINAL, two blocks, an empty fragment", () => {
  for (const mode of ["no-context-takeover", "context-takeover"] as const) {
    const { core } = open("permessage-deflate", { mode });
    core.receiveData(clientFrame(Opcode.Text, hex("00 05 00 fa ff 48 65 6c 6c 6f 00"))); // 7.2.3.3
    core.receiveData(clientFrame(Opcode.Text, hex("f3 48 cd c9 c9 07 00 00"))); // 7.2.3.4: BFINAL set
    // After a final block the stream starts again: a new message is read with a new window.
    core.receiveData(clientFrame(Opcode.Text, hex("f2 48 cd c9 c9 07 00")));
    core.receiveData(clientFrame(Opcode.Text, hex("f2 48 05 00 00 00 ff ff ca c9 c9 07 00"))); // 7.2.3.5
    core.receiveData(clientFrame(Opcode.Text, hex("f2 48 cd c9 c9 07 00 00 00 ff ff"), { fin: false })); // 7.2.3.6
    core.receiveData(clientFrame(Opcode.Continuation, hex("00"), { rsv1: false }));
    assertEquals(messages(core), ["Hello", "Hello", "Hello", "Hello", "Hello"]);
    assertEquals(core.state, "open", mode);
  }
});

Deno.test("empty compressed messages: an empty payload, or an empty stored block (7.2.3.6), between others", () => {
  for (const mode of ["no-context-takeover", "context-takeover"] as const) {
    const { core } = open("permessage-deflate", { mode });
    core.receiveData(clientFrame(Opcode.Text, hex("f2 48 cd c9 c9 07 00")));
    core.receiveData(clientFrame(Opcode.Binary, new Uint8Array(0)));
    core.receiveData(clientFrame(Opcode.Text, hex("00")));
    core.receiveData(clientFrame(Opcode.Text, new Uint8Array(0)));
    // The window is still the first message's.
    if (mode === "context-takeover") core.receiveData(clientFrame(Opcode.Text, hex("f2 00 11 00 00")));
    assertEquals(messages(core), [
      "Hello",
      new Uint8Array(0),
      "",
      "",
      ...(mode === "context-takeover" ? ["Hello"] : []),
    ]);
    assertEquals(core.state, "open");
  }
});

Deno.test("an uncompressed message (RSV1 clear) passes as it is when the extension is in force", () => {
  const { core } = open("permessage-deflate");
  core.receiveData(clientFrame(Opcode.Text, "plain", { rsv1: false }));
  core.receiveData(clientFrame(Opcode.Binary, new Uint8Array([1, 2, 3]), { rsv1: false }));
  assertEquals(messages(core), ["plain", new Uint8Array([1, 2, 3])]);
});

Deno.test("compressed binary and text larger than the read buffer, fed in small pieces, and fragmented", () => {
  for (const mode of ["no-context-takeover", "context-takeover"] as const) {
    const { core } = open("permessage-deflate", { mode });
    const data = jsonLike(300_000);
    const frame = clientFrame(Opcode.Binary, compress(data));
    for (let offset = 0; offset < frame.length; offset += 1000) core.receiveData(frame.subarray(offset, offset + 1000));
    // Characters of 2 to 4 bytes, cut where the inflated pieces (64 KiB) end.
    const text = new TextDecoder().decode(jsonLike(50_000, 2)) + "κόσμε 😀 ".repeat(20_000);
    const compressed = compress(text);
    const third = Math.floor(compressed.length / 3);
    core.receiveData(clientFrame(Opcode.Text, compressed.subarray(0, third), { fin: false }));
    core.receiveData(
      clientFrame(Opcode.Continuation, compressed.subarray(third, 2 * third), { fin: false, rsv1: false }),
    );
    core.receiveData(clientFrame(Opcode.Continuation, compressed.subarray(2 * third), { rsv1: false }));
    assertEquals(messages(core), [data, text], mode);
  }
});

// ---------------------------------------------------------------- RFC 7692 7.2.3: sending

Deno.test('RFC 7692 7.2.3.1-7.2.3.2: "Hello" sent compressed, then sharing the window', () => {
  const { core } = open("permessage-deflate", { mode: "context-takeover", threshold: 0 });
  assertEquals(flatten(core.encode("Hello")), hex("c1 07 f2 48 cd c9 c9 07 00"));
  assertEquals(flatten(core.encode("Hello")), hex("c1 05 f2 00 11 00 00"));
});

Deno.test("without server context takeover, each message is compressed alone; one that would grow goes plain", () => {
  const { core } = open("permessage-deflate", { threshold: 0 });
  // "Hello" compresses to 7 bytes (7.2.3.1): more than its 5.
  assertEquals(flatten(core.encode("Hello")), hex("81 05 48 65 6c 6c 6f"));
  const text = "Hello, Hello, Hello, Hello!";
  const first = flatten(core.encode(text));
  assertEquals(first.subarray(0, 1), hex("c1"));
  // The same bytes again: nothing of the first message is referred to.
  assertEquals(flatten(core.encode(text)), first);
  assertEquals(new TextDecoder().decode(inflate(first.subarray(2))), text);
});

Deno.test("RFC 7692 7.2.3.3: level 0 sends a stored block", () => {
  const { core } = open("permessage-deflate", { mode: "context-takeover", threshold: 0, level: 0 });
  assertEquals(flatten(core.encode("Hello")), hex("c1 0b 00 05 00 fa ff 48 65 6c 6c 6f 00"));
});

Deno.test("sending: the threshold, incompressible data, and large messages", () => {
  const { core } = open("permessage-deflate");
  assertEquals(flatten(core.encode("x".repeat(255))).subarray(0, 2), hex("81 7e")); // under 256: plain
  const random = crypto.getRandomValues(new Uint8Array(1000));
  assertEquals(flatten(core.encode(random))[0], 0x82); // would grow: sent plain
  for (const size of [256, 70_000, 2_000_000]) {
    const data = jsonLike(size);
    const frame = new Frame(flatten(core.encode(data)), { masked: false, rsv1: true });
    assert(frame.rsv1 && frame.fin && frame.opcode === Opcode.Binary);
    assert(frame.payload.length < data.length / 2, `${size} bytes compressed to ${frame.payload.length}`);
    assertEquals(inflate(frame.payload), data);
  }
  const text = "κόσμε ".repeat(20_000);
  const frame = new Frame(flatten(core.encode(text)), { masked: false, rsv1: true });
  assertEquals(new TextDecoder().decode(inflate(frame.payload)), text);
  // With context takeover, incompressible data still goes compressed: the window holds it.
  const own = open("permessage-deflate", { mode: "context-takeover" }).core;
  assertEquals(flatten(own.encode(random))[0], 0xc2);
});

Deno.test("sending: an empty message goes uncompressed, even with threshold 0 and a window", () => {
  const { core } = open("permessage-deflate", { mode: "context-takeover", threshold: 0 });
  assertEquals(flatten(core.encode("")), hex("81 00"));
  assertEquals(flatten(core.encode(new Uint8Array(0))), hex("82 00"));
});

Deno.test("sending: compressed frames queued before any is written keep their own bytes", () => {
  // Incompressible: the compressed payloads (over 4 KiB) are as long as the messages.
  const { core } = open("permessage-deflate", { mode: "context-takeover" });
  const first = crypto.getRandomValues(new Uint8Array(10_000));
  const second = crypto.getRandomValues(new Uint8Array(10_000));
  const frames = [core.encode(first), core.encode(second)].map(flatten);
  const payload = new Frame(frames[0], { masked: false, rsv1: true }).payload;
  assert(payload.length >= 4096, `${payload.length} bytes`);
  assertEquals(inflate(payload), first);
});

// Hex text of random bytes, twice: the second copy is 1,200 bytes back, past a 512-byte window.
function repeatedAtDistance(): Uint8Array {
  const random = crypto.getRandomValues(new Uint8Array(600));
  const text = Array.from(random, (byte) => byte.toString(16).padStart(2, "0")).join("");
  return encoder.encode(text + text);
}

Deno.test("sending: server_max_window_bits=9 is honoured: what is sent inflates with a 512-byte window", () => {
  const data = repeatedAtDistance();
  for (const mode of ["no-context-takeover", "context-takeover"] as const) {
    // A connection with the default window compresses first, so that its compressor exists.
    const wide = open("permessage-deflate", { mode }).core;
    const widePayload = new Frame(flatten(wide.encode(data)), { masked: false, rsv1: true }).payload;
    const { core, extensions } = open("permessage-deflate; server_max_window_bits=9", { mode });
    assertStringIncludes(extensions ?? "", "server_max_window_bits=9");
    const frame = new Frame(flatten(core.encode(data)), { masked: false, rsv1: true });
    assert(frame.rsv1, mode);
    // 64-byte output pieces: a distance past the window cannot be served from the output buffer.
    const inflated = inflateRawSync(concat([frame.payload, TAIL]), {
      windowBits: 9,
      chunkSize: 64,
      finishFlush: constants.Z_SYNC_FLUSH,
    });
    assertEquals(new Uint8Array(inflated), data, mode);
    // The wide window did find the repeat.
    assert(widePayload.length < frame.payload.length * 0.7, `${widePayload.length} vs ${frame.payload.length}`);
  }
});

Deno.test("sending: compression.level applies to the compressor shared by connections", () => {
  const data = jsonLike(20_000);
  const payloads = [1, 9].map((level) => {
    const { core } = open("permessage-deflate", { level });
    const frame = new Frame(flatten(core.encode(data)), { masked: false, rsv1: true });
    assertEquals(inflate(frame.payload), data);
    return frame.payload.length;
  });
  assert(payloads[0] > payloads[1], `level 1: ${payloads[0]} bytes, level 9: ${payloads[1]}`);
});

// ---------------------------------------------------------------- RSV1 misuse, bad data

Deno.test("decodeHeader: RSV1 only with the option, and only on a data message's first frame", async (t) => {
  const cases: [string, string, boolean, string | null][] = [
    ["RSV1 on text, allowed", "c1 00", true, null],
    ["RSV1 on binary, allowed", "c2 00", true, null],
    ["RSV1 on text without the extension", "c1 00", false, "Reserved bits must be 0, got 0x40"],
    ["RSV1 on a continuation frame", "c0 00", true, "RSV1 must be 0 on a continuation frame"],
    ["RSV1 on a ping", "c9 00", true, "RSV1 must be 0 on a control frame"],
    ["RSV1 on a close", "c8 00", true, "RSV1 must be 0 on a control frame"],
    ["RSV2", "a1 00", true, "Reserved bits must be 0, got 0x20"],
    ["RSV1 and RSV3", "d1 00", true, "Reserved bits must be 0, got 0x50"],
  ];
  for (const [what, bytes, rsv1, error] of cases) {
    await t.step(what, () => {
      if (error === null) return assertEquals(decodeHeader(hex(bytes), { rsv1 })?.rsv1, true);
      const thrown = assertThrows(() => decodeHeader(hex(bytes), { rsv1 }), FrameError, error);
      assertEquals([thrown.closeCode, thrown.code], [1002, "WS_ERR_UNEXPECTED_RSV"]);
    });
  }
});

Deno.test("RSV1 misuse fails the connection with 1002", async (t) => {
  const cases: [string, string | null, Uint8Array[]][] = [
    ["without the extension offered", null, [clientFrame(Opcode.Text, compress("Hello"))]],
    ["on a ping", "permessage-deflate", [clientFrame(Opcode.Ping, "")]],
    ["on a continuation frame", "permessage-deflate", [
      clientFrame(Opcode.Text, compress("Hello").subarray(0, 2), { fin: false }),
      clientFrame(Opcode.Continuation, compress("Hello").subarray(2)),
    ]],
    ["on a continuation of an uncompressed message", "permessage-deflate", [
      clientFrame(Opcode.Text, "He", { fin: false, rsv1: false }),
      clientFrame(Opcode.Continuation, "llo"),
    ]],
  ];
  for (const [what, offer, frames] of cases) {
    await t.step(what, () => {
      const { core } = open(offer);
      for (const frame of frames) core.receiveData(frame);
      assertEquals(messages(core), []);
      assertEquals(closeSent(core).code, CloseCode.ProtocolError);
    });
  }
  await t.step("with compression turned off though offered", () => {
    const { core } = open("permessage-deflate", false);
    core.receiveData(clientFrame(Opcode.Text, compress("Hello")));
    assertEquals(closeSent(core).code, CloseCode.ProtocolError);
  });
});

Deno.test("data that does not inflate fails the connection with 1007", () => {
  // An invalid block type; a stored block whose length check fails.
  for (const payload of [hex("ff ff ff ff"), hex("00 05 00 00 00 48 65 6c 6c 6f")]) {
    const { core } = open("permessage-deflate");
    core.receiveData(clientFrame(Opcode.Binary, payload));
    assertEquals(messages(core), []);
    const close = closeSent(core);
    assertEquals(close.code, CloseCode.InvalidPayload);
    assertStringIncludes(close.reason, "not valid DEFLATE");
  }
});

Deno.test("compressed text that inflates to invalid UTF-8 fails with 1007, as soon as it is inflated", () => {
  const { core } = open("permessage-deflate");
  core.receiveData(clientFrame(Opcode.Text, compress(new Uint8Array([0x48, 0xc3, 0x28]))));
  assertEquals(messages(core), []);
  assertEquals(closeSent(core), { code: 1007, reason: "Text is not valid UTF-8" });
  // In a fragmented message, the first fragment's invalid text fails before the last arrives.
  const fragmented = open("permessage-deflate", { mode: "context-takeover" }).core;
  const compressed = compress(new Uint8Array([0xff, ...jsonLike(1000)]));
  fragmented.receiveData(clientFrame(Opcode.Text, compressed.subarray(0, compressed.length >> 1), { fin: false }));
  assertEquals(fragmented.state, "closed");
  assertEquals(closeSent(fragmented).code, 1007);
  // The same bytes as binary are fine.
  const binary = open("permessage-deflate").core;
  binary.receiveData(clientFrame(Opcode.Binary, compress(new Uint8Array([0x48, 0xc3, 0x28]))));
  assertEquals(messages(binary), [new Uint8Array([0x48, 0xc3, 0x28])]);
});

// ---------------------------------------------------------------- the bomb

// 32 MiB of zeros: 32,623 bytes compressed.
const BOMB = compress(new Uint8Array(32 * 1024 * 1024));

Deno.test("the bomb: a 32 KiB frame that inflates to 32 MiB is refused with 1009", () => {
  assert(BOMB.length < 33 * 1024, `${BOMB.length} bytes`);
  for (const opcode of [Opcode.Binary, Opcode.Text]) {
    const { core } = open("permessage-deflate"); // maxPayload: 16 MiB
    core.receiveData(clientFrame(opcode, BOMB));
    assertEquals(messages(core), []);
    assertEquals(closeSent(core).code, CloseCode.MessageTooBig);
  }
});

Deno.test("the bomb: inflation stops as soon as the limit is passed, before the frame or message is whole", () => {
  const frame = clientFrame(Opcode.Binary, BOMB);
  const { core } = open("permessage-deflate", true, { maxPayload: 1024 * 1024 });
  let fed = 0;
  while (core.state === "open" && fed < frame.length) {
    core.receiveData(frame.subarray(fed, fed + 1024));
    fed += 1024;
  }
  assertEquals(core.state, "closed");
  assert(fed <= 2048, `the connection failed only after ${fed} of ${frame.length} bytes`);
  assertEquals(closeSent(core).code, CloseCode.MessageTooBig);
  // A first fragment past the limit fails the message before its last fragment.
  const fragmented = open("permessage-deflate", true, { maxPayload: 1024 * 1024 }).core;
  fragmented.receiveData(clientFrame(Opcode.Text, BOMB.subarray(0, 2000), { fin: false }));
  assertEquals(closeSent(fragmented).code, CloseCode.MessageTooBig);
});

Deno.test("inflated size against maxPayload: exactly the limit passes, one byte more is 1009", () => {
  const limit = 100_000;
  const data = jsonLike(limit + 1);
  const { core } = open("permessage-deflate", true, { maxPayload: limit });
  core.receiveData(clientFrame(Opcode.Binary, compress(data.subarray(0, limit))));
  assertEquals(messages(core), [data.subarray(0, limit)]);
  core.receiveData(clientFrame(Opcode.Binary, compress(data)));
  assertEquals(messages(core), []);
  assertEquals(closeSent(core).code, CloseCode.MessageTooBig);
});

Deno.test("inflation hands out at most 64 KiB at a time", () => {
  const stream = new ZlibStream("inflate");
  const pieces: number[] = [];
  stream.inflate(concat([compress(new Uint8Array(1024 * 1024)), TAIL]), (piece) => pieces.push(piece.length));
  stream.close();
  assertEquals(pieces.reduce((sum, length) => sum + length, 0), 1024 * 1024);
  assert(pieces.every((length) => length <= 64 * 1024), `pieces of ${Math.max(...pieces)} bytes`);
});

// ---------------------------------------------------------------- the inflater pool

Deno.test("pool: connections taking turns mid-message never share an inflater (no client context takeover)", () => {
  const a = open("permessage-deflate").core;
  const b = open("permessage-deflate").core;
  a.receiveData(clientFrame(Opcode.Text, hex("f2 48 cd c9 c9 07 00")));
  b.receiveData(clientFrame(Opcode.Text, hex("f2 48 cd"), { fin: false }));
  a.receiveData(clientFrame(Opcode.Text, hex("f2 48 cd c9 c9 07 00")));
  b.receiveData(clientFrame(Opcode.Continuation, hex("c9 c9 07 00"), { rsv1: false }));
  assertEquals([messages(a), messages(b)], [["Hello", "Hello"], ["Hello"]]);
  assertEquals([a.state, b.state], ["open", "open"]);
});

Deno.test("pool: an inflater that failed is not lent to the next connection", () => {
  const failed = open("permessage-deflate").core;
  failed.receiveData(clientFrame(Opcode.Binary, hex("ff ff ff ff")));
  assertEquals(closeSent(failed).code, CloseCode.InvalidPayload);
  failed.release();
  const next = open("permessage-deflate").core;
  next.receiveData(clientFrame(Opcode.Text, hex("f2 48 cd c9 c9 07 00")));
  assertEquals(messages(next), ["Hello"]);
  assertEquals(next.state, "open");
});

// ---------------------------------------------------------------- broadcast, over loopback

class Broadcaster extends Recorder {
  override onMessage(msg: string | Uint8Array): void {
    super.onMessage(msg);
    Protocol.broadcast(this.users.values(), msg);
  }
}

// Opens a client that offers `offer` and reads compressed frames.
async function deflateClient(port: number, offer: string): Promise<{ client: RawClient; extensions: string | null }> {
  const client = await RawClient.connect(port);
  client.rsv1 = true;
  await client.write(handshake({ "Sec-WebSocket-Extensions": offer }));
  const answer = await client.readAnswer();
  assertEquals(answer.status, 101);
  return { client, extensions: answer.headers.get("sec-websocket-extensions") };
}

Deno.test("broadcast: compressed once per distinct parameters without server context takeover, per recipient with it", async (t) => {
  const cases: [string, ProtocolOptions["compression"], string[], number][] = [
    [
      "three recipients, no context takeover",
      true,
      ["permessage-deflate", "permessage-deflate", "permessage-deflate"],
      1,
    ],
    ["two windows among three", true, [
      "permessage-deflate",
      "permessage-deflate; server_max_window_bits=10",
      "permessage-deflate; client_max_window_bits",
    ], 2],
    ["context takeover: one each", { mode: "context-takeover" }, [
      "permessage-deflate",
      "permessage-deflate",
      "permessage-deflate",
    ], 3],
    ["one without the extension", true, ["permessage-deflate", "x-none", "permessage-deflate"], 1],
  ];
  for (const [what, compression, offers, compressions] of cases) {
    await t.step(what, async () => {
      const server = new TestServer((users) =>
        new Broadcaster(users, { compression, pingInterval: 0, idleTimeout: 0 })
      );
      const clients: RawClient[] = [];
      try {
        for (const [i, offer] of offers.entries()) {
          clients.push((await deflateClient(server.port, offer)).client);
          await (await server.handler(i)).connected.promise;
        }
        const data = jsonLike(5000);
        const before = deflateStats.compressed;
        await clients[0].write(encodeFrame(Opcode.Binary, data, { mask: true }));
        const frames = await Promise.all(clients.map((client) => within(client.readFrame())));
        assertEquals(deflateStats.compressed - before, compressions);
        for (const [i, frame] of frames.entries()) {
          const compressed = offers[i] !== "x-none";
          assertEquals(frame?.rsv1, compressed);
          assertEquals(compressed ? inflate(frame!.payload) : frame?.payload, data);
        }
      } finally {
        for (const client of clients) client.close();
        await server.close();
      }
    });
  }
});

Deno.test("topics: a publish is compressed once for all its subscribers", async () => {
  const server = new TestServer((users) => new Recorder(users, { compression: true, pingInterval: 0, idleTimeout: 0 }));
  const clients: RawClient[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      clients.push((await deflateClient(server.port, "permessage-deflate")).client);
      const handler = await server.handler(i);
      await handler.connected.promise;
      if (i > 0) handler.subscribe("news");
    }
    const data = jsonLike(5000);
    const before = deflateStats.compressed;
    assertEquals(Protocol.publish(server.users, "news", data), 2);
    const frames = await Promise.all(clients.slice(1).map((client) => within(client.readFrame())));
    assertEquals(deflateStats.compressed - before, 1);
    for (const frame of frames) assertEquals(inflate(frame!.payload), data);
  } finally {
    for (const client of clients) client.close();
    await server.close();
  }
});

Deno.test("server.ts: permessage-deflate accepted by default, declined with --no-compression", async () => {
  assertEquals(parseServerArgs(["--no-compression"])?.compression, false);
  assertEquals(parseServerArgs([])?.compression, undefined); // startServer's default: on
  const cases: [ProtocolOptions["compression"], string | null][] = [
    [undefined, "permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
    [false, null],
  ];
  for (const [compression, expected] of cases) {
    const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true, compression });
    try {
      const { client, extensions } = await deflateClient(
        server.addr.port,
        "permessage-deflate; client_max_window_bits",
      );
      client.close();
      assertEquals(extensions, expected);
    } finally {
      await server.shutdown();
    }
  }
});

// ---------------------------------------------------------------- property

Deno.test("property: compressed messages, fragmented at random and fed in random chunks, arrive intact", () => {
  const message = fc.oneof(fc.string({ unit: "grapheme", maxLength: 3000 }), fc.uint8Array({ maxLength: 3000 }));
  fc.assert(
    fc.property(
      fc.constantFrom("no-context-takeover" as const, "context-takeover" as const),
      fc.array(fc.tuple(message, fc.array(fc.nat(), { maxLength: 3 })), { minLength: 1, maxLength: 6 }),
      fc.integer({ min: 1, max: 700 }),
      (mode, specs, chunk) => {
        const { core } = open("permessage-deflate", { mode });
        // The client's own compressor: a window kept only when the server allows it.
        const client = new ZlibStream("deflate");
        const wire: Uint8Array[] = [];
        for (const [msg, cuts] of specs) {
          const bytes = typeof msg === "string" ? encoder.encode(msg) : msg;
          const compressed = client.deflate(
            bytes,
            mode === "context-takeover" ? constants.Z_SYNC_FLUSH : constants.Z_FULL_FLUSH,
          ).slice();
          const points = [...new Set(cuts.map((cut) => cut % (compressed.length + 1)))].sort((a, b) => a - b);
          const pieces = [0, ...points, compressed.length].flatMap((start, i, all) =>
            i + 1 < all.length ? [compressed.subarray(start, all[i + 1])] : []
          );
          pieces.forEach((piece, i) => {
            const opcode = i > 0 ? Opcode.Continuation : typeof msg === "string" ? Opcode.Text : Opcode.Binary;
            wire.push(clientFrame(opcode, piece, { fin: i === pieces.length - 1, rsv1: i === 0 }));
          });
        }
        const bytes = concat(wire);
        for (let offset = 0; offset < bytes.length; offset += chunk) {
          core.receiveData(bytes.subarray(offset, offset + chunk));
        }
        client.close();
        assertEquals(messages(core), specs.map(([msg]) => msg));
        assertEquals(core.state, "open");
      },
    ),
    { seed: 7692, numRuns: 150 },
  );
});

// ---------------------------------------------------------------- the client role

const CLIENT_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

// A client core that offered what its `compression` gives, answered 101 with `answer`
// as the server's Sec-WebSocket-Extensions (none for null).
function openClient(answer: string | null, compression: ProtocolOptions["compression"] = true): Core {
  const core = new Core(resolveOptions({ compression }), "client");
  const extensions = core.extensionOffer();
  core.connect(encoder.encode("GET / HTTP/1.1\r\n\r\n"), {
    accept: CLIENT_ACCEPT,
    protocols: [],
    extensions: !!extensions,
  });
  sent(core);
  const head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    `Sec-WebSocket-Accept: ${CLIENT_ACCEPT}\r\n` + (answer === null ? "" : `Sec-WebSocket-Extensions: ${answer}\r\n`);
  core.receiveData(encoder.encode(head + "\r\n"));
  return core;
}

// A server's frame: unmasked, RSV1 set.
const serverFrame = (payload: Uint8Array) => concat([hex(`c1 ${payload.length.toString(16)}`), payload]);

// A client's frame, unmasked and checked: masked, FIN, RSV1 as `rsv1`; its payload.
function clientPayload(frame: DataFrame, rsv1 = true): Uint8Array {
  const bytes = flatten(frame);
  assertEquals(bytes[0] & 0xc0, rsv1 ? 0xc0 : 0x80, "FIN and RSV1");
  assertEquals(bytes[1] & 0x80, 0x80, "the mask bit (RFC 6455 5.3)");
  return new Frame(bytes, { masked: true, rsv1 }).payload;
}

Deno.test("client: permessage-deflate is offered when compression is on, as its mode asks", () => {
  const offer = (compression: ProtocolOptions["compression"]) =>
    new Core(resolveOptions({ compression }), "client").extensionOffer();
  assertEquals(offer(undefined), undefined);
  assertEquals(offer(false), undefined);
  assertEquals(offer(true), "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
  assertEquals(offer({ mode: "context-takeover" }), "permessage-deflate");
});

Deno.test("client: the answers it accepts, and those that fail the connection (RFC 7692 5, 7)", async (t) => {
  const accepted: [string, DeflateParams][] = [
    ["permessage-deflate", { serverNoContextTakeover: false, clientNoContextTakeover: false }],
    [
      "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
      { serverNoContextTakeover: true, clientNoContextTakeover: true },
    ],
    ["Permessage-Deflate; server_max_window_bits=10", {
      serverNoContextTakeover: false,
      clientNoContextTakeover: false,
      serverMaxWindowBits: 10,
    }],
    ['permessage-deflate; server_max_window_bits="8"', {
      serverNoContextTakeover: false,
      clientNoContextTakeover: false,
      serverMaxWindowBits: 8,
    }],
  ];
  for (const [answer, params] of accepted) {
    await t.step(answer, () => {
      assertEquals(acceptAnswer(answer), params);
      const core = openClient(answer);
      assertEquals([core.opened, core.handshakeError], [true, undefined]);
    });
  }
  const refused = [
    "x-webkit-deflate-frame",
    "permessage-deflate, permessage-deflate",
    "permessage-deflate, x-other",
    "permessage-deflate; client_max_window_bits", // not offered (RFC 7692 7.1.2.2)
    "permessage-deflate; client_max_window_bits=10",
    "permessage-deflate; server_max_window_bits",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=010",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; client_no_context_takeover=1",
    "permessage-deflate; unknown",
    "permessage-deflate; a b",
    "permessage-deflate, x y", // a malformed element beside it
  ];
  for (const answer of refused) {
    await t.step(`refused: ${answer}`, () => {
      assertThrows(() => acceptAnswer(answer), ProtocolError);
      const core = openClient(answer);
      assertEquals(core.opened, false);
      assertEquals(core.state, "closed");
      assertEquals(core.handshakeError?.code, "WS_ERR_INVALID_EXTENSION");
    });
  }
  await t.step("any extension, when none was offered", () => {
    const core = openClient("permessage-deflate", false);
    assertEquals(core.opened, false);
    assertEquals(core.handshakeError?.code, "WS_ERR_UNREQUESTED_EXTENSION");
  });
  await t.step("no extension in the answer: messages go plain", () => {
    const core = openClient(null);
    assertEquals(core.opened, true);
    const text = "Hello, Hello, Hello, Hello! ".repeat(20);
    assertEquals(new TextDecoder().decode(clientPayload(core.encode(text), false)), text);
  });
});

Deno.test("client: inflates with the server_* parameters (RFC 7692 7.2.3.2), whatever client_* says", async (t) => {
  await t.step("the server keeps its window: the second Hello refers to the first", () => {
    // client_no_context_takeover is about what the client sends, not what it receives.
    const core = openClient("permessage-deflate; client_no_context_takeover");
    core.receiveData(serverFrame(hex("f2 48 cd c9 c9 07 00")));
    core.receiveData(serverFrame(hex("f2 00 11 00 00")));
    assertEquals(messages(core), ["Hello", "Hello"]);
  });
  await t.step("server_no_context_takeover: a reference to the last message is 1007", () => {
    const core = openClient("permessage-deflate; server_no_context_takeover", { mode: "context-takeover" });
    core.receiveData(serverFrame(hex("f2 48 cd c9 c9 07 00")));
    core.receiveData(serverFrame(hex("f2 00 11 00 00")));
    assertEquals(messages(core), ["Hello"]);
    const frame = new Frame(sent(core), { masked: true });
    assertEquals([frame.opcode, decodeClosePayload(frame.payload).code], [Opcode.Close, CloseCode.InvalidPayload]);
  });
  await t.step("RSV1 without the extension in force is 1002", () => {
    const core = openClient(null);
    core.receiveData(serverFrame(hex("f2 48 cd c9 c9 07 00")));
    assertEquals(messages(core), []);
    assertEquals(decodeClosePayload(new Frame(sent(core), { masked: true }).payload).code, CloseCode.ProtocolError);
  });
});

Deno.test("client: compresses with the client_* parameters, every frame masked (RFC 6455 5.3, RFC 7692 6)", async (t) => {
  const text = new TextDecoder().decode(jsonLike(2000));
  // Inflates messages in order through one stream, which keeps its window, as a server would.
  function inflater(): (payload: Uint8Array) => string {
    const stream = new ZlibStream("inflate");
    return (payload) => {
      const pieces: Uint8Array[] = [];
      stream.inflate(concat([payload, TAIL]), (piece) => pieces.push(piece.slice()));
      return new TextDecoder().decode(concat(pieces));
    };
  }
  const inflated = (payload: Uint8Array) => new TextDecoder().decode(inflate(payload));
  await t.step("context takeover kept when the server allows: the second message refers to the first", () => {
    // server_no_context_takeover is about what the server sends.
    const core = openClient("permessage-deflate; server_no_context_takeover", { mode: "context-takeover" });
    const first = clientPayload(core.encode(text));
    const second = clientPayload(core.encode(text));
    assert(second.length < first.length / 2, `${second.length} bytes after ${first.length}`);
    const server = inflater();
    assertEquals([server(first), server(second)], [text, text]);
  });
  await t.step("client_no_context_takeover: each message compressed alone", () => {
    const core = openClient("permessage-deflate; client_no_context_takeover", { mode: "context-takeover" });
    const first = clientPayload(core.encode(text));
    const second = clientPayload(core.encode(text));
    assertEquals(second, first);
    assertEquals(inflated(second), text);
  });
  await t.step('"no-context-takeover" mode drops the window even when the server did not ask', () => {
    const core = openClient("permessage-deflate");
    const first = clientPayload(core.encode(encoder.encode(text)));
    assertEquals(clientPayload(core.encode(encoder.encode(text))), first);
    assertEquals(inflated(first), text);
  });
  await t.step("each frame gets its own masking key; short messages go plain", () => {
    const core = openClient("permessage-deflate");
    const [a, b] = [flatten(core.encode(text)), flatten(core.encode(text))];
    assert(a.subarray(2, 6).join() !== b.subarray(2, 6).join(), "two frames, two keys");
    assertEquals(new TextDecoder().decode(clientPayload(core.encode("short"), false)), "short");
  });
});
