// Property tests against the Core with thousands of generated client streams, seeded so
// that a failure reproduces: valid streams in any split give exactly their messages and
// a pong per ping; mutated streams give at most a close with a protocol's code.
import { assert, assertEquals } from "@std/assert";
import fc from "fast-check";
import { Core, type CoreEvent, resolveOptions } from "./_core.ts";
import { decodeClosePayload, encodeClosePayload, encodeFrame, Frame, Opcode } from "./frame.ts";
import type { ProtocolOptions } from "./protocol.ts";
import { ACCEPT, handshake } from "./test_util.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const SEED = 0x6455;

function concat(parts: Uint8Array[]): Uint8Array {
  const bytes = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  parts.reduce((offset, part) => (bytes.set(part, offset), offset + part.length), 0);
  return bytes;
}

function openCore(options: ProtocolOptions = {}): Core {
  const core = new Core(resolveOptions(options));
  core.receiveData(encoder.encode(handshake()), 0);
  assertEquals(core.takeEvents().map((event) => event.type), ["upgrade"]);
  core.accept(ACCEPT, "", 0);
  drain(core);
  return core;
}

function drain(core: Core): Uint8Array {
  const pieces: Uint8Array[] = [];
  for (let bytes = core.outbox.next(); bytes !== undefined; bytes = core.outbox.next()) {
    pieces.push(bytes.slice());
    core.outbox.written(bytes.length);
  }
  return concat(pieces);
}

function serverFrames(bytes: Uint8Array): Frame[] {
  const frames: Frame[] = [];
  for (let offset = 0; offset < bytes.length;) {
    const frame = Frame.decode(bytes.subarray(offset), { masked: false });
    if (frame === null) throw new Error(`incomplete server frame at byte ${offset} of ${bytes.length}`);
    frames.push(frame);
    offset += frame.length();
  }
  return frames;
}

/**
 * Feeds `bytes` cut at `cuts` (any naturals, taken modulo the length) as the shell reads:
 * into `readTarget()`, and no more once the core stops reading. Returns all events.
 */
function feedSplit(core: Core, bytes: Uint8Array, cuts: number[]): CoreEvent[] {
  const offsets = [...new Set(cuts.map((cut) => cut % (bytes.length + 1)))].sort((a, b) => a - b);
  const events: CoreEvent[] = [];
  let start = 0;
  for (const end of [...offsets, bytes.length]) {
    for (let offset = start; offset < end && core.reading;) {
      const target = core.readTarget();
      if (target.length === 0) throw new Error("no room to read into while reading");
      const count = Math.min(target.length, end - offset);
      target.set(bytes.subarray(offset, offset + count));
      offset += count;
      core.receive(count, 0);
    }
    // A close waits for the messages before it to be taken: take until there are none.
    for (let taken = core.takeEvents(); taken.length > 0; taken = core.takeEvents()) events.push(...taken);
    start = end;
  }
  return events;
}

// ---------------------------------------------------------------- valid streams

/** A client stream and what the server must make of it. */
interface Stream {
  bytes: Uint8Array;
  messages: (string | Uint8Array)[];
  pings: Uint8Array[];
  pongs: Uint8Array[];
  /** The close frame that ends the stream, if any. */
  close?: { code: number; reason: string };
}

const control = fc.record({ ping: fc.boolean(), data: fc.uint8Array({ maxLength: 125 }) });

// Text of every plane (multi-byte characters cut anywhere by the fragments) and binary,
// mostly small, sometimes larger than the read buffer or than its 64 KiB maximum.
const payload = fc.oneof(
  { weight: 4, arbitrary: fc.string({ unit: "binary", maxLength: 300 }) },
  { weight: 1, arbitrary: fc.string({ unit: "binary", minLength: 300, maxLength: 1500 }) },
  { weight: 4, arbitrary: fc.uint8Array({ maxLength: 2000 }) },
  {
    weight: 1,
    arbitrary: fc.integer({ min: 1024, max: 100_000 }).map((length) => new Uint8Array(length).map((_, i) => i * 31)),
  },
);

const message = fc.record({
  payload,
  // Fragment boundaries, anywhere in the payload (equal ones make empty fragments).
  cuts: fc.array(fc.nat(), { maxLength: 5 }),
  // Control frames before, between or after the fragments.
  controls: fc.array(fc.tuple(fc.nat(), control), { maxLength: 3 }),
  maskKeys: fc.array(fc.uint8Array({ minLength: 4, maxLength: 4 }), { minLength: 1, maxLength: 3 }),
});

// Sometimes a close frame ends the stream: a code with a reason of up to 30 characters, or none.
const closing = fc.option(
  fc.oneof(
    fc.record({
      code: fc.constantFrom(1000, 1001, 1003, 1011, 3000, 4999),
      reason: fc.string({ unit: "binary", maxLength: 30 }),
    }),
    fc.constant({ code: 1005, reason: "" }),
  ),
  { freq: 4 },
);

const validStream = fc.tuple(fc.array(message, { maxLength: 6 }), closing).map(([items, close]): Stream => {
  const stream: Stream = { bytes: new Uint8Array(0), messages: [], pings: [], pongs: [] };
  const frames: Uint8Array[] = [];
  let frameCount = 0;
  for (const { payload, cuts, controls, maskKeys } of items) {
    const text = typeof payload === "string";
    const bytes = text ? encoder.encode(payload) : payload;
    stream.messages.push(text ? decoder.decode(bytes) : payload);
    const offsets = cuts.map((cut) => cut % (bytes.length + 1)).sort((a, b) => a - b);
    const bounds = [0, ...offsets, bytes.length];
    const gaps = bounds.length; // before each fragment, and after the last
    const mask = () => ({ maskKey: maskKeys[frameCount++ % maskKeys.length] });
    for (let gap = 0; gap < gaps; gap++) {
      for (const [at, { ping, data }] of controls) {
        if (at % gaps !== gap) continue;
        frames.push(encodeFrame(ping ? Opcode.Ping : Opcode.Pong, data, mask()));
        (ping ? stream.pings : stream.pongs).push(data);
      }
      if (gap === gaps - 1) break;
      const opcode = gap > 0 ? Opcode.Continuation : text ? Opcode.Text : Opcode.Binary;
      const fin = gap === gaps - 2;
      frames.push(encodeFrame(opcode, bytes.subarray(bounds[gap], bounds[gap + 1]), { fin, ...mask() }));
    }
  }
  if (close !== null) {
    const payload = close.code === 1005 ? new Uint8Array(0) : encodeClosePayload(close.code, close.reason);
    frames.push(encodeFrame(Opcode.Close, payload, { mask: true }));
    stream.close = { code: close.code, reason: decoder.decode(encoder.encode(close.reason)) };
  }
  stream.bytes = concat(frames);
  return stream;
});

const splits = fc.array(fc.nat(), { maxLength: 12 });

Deno.test("property: valid streams in any split give exactly their messages in order, a pong per ping, the close echoed", () => {
  fc.assert(
    fc.property(validStream, splits, (stream, cuts) => {
      const core = openCore();
      const events = feedSplit(core, stream.bytes, cuts);
      assertEquals(events.filter((event) => event.type === "message").map((event) => event.data), stream.messages);
      assertEquals(events.filter((event) => event.type === "ping").map((event) => event.data), stream.pings);
      assertEquals(events.filter((event) => event.type === "pong").map((event) => event.data), stream.pongs);
      const closes = events.filter((event) => event.type === "close");
      assertEquals(closes, stream.close ? [{ type: "close", ...stream.close }] : []);
      assertEquals(events.length, stream.messages.length + stream.pings.length + stream.pongs.length + closes.length);
      // A pong per ping, in order; the peer's close echoed with its code, last.
      const frames = serverFrames(drain(core)).map((frame) => [frame.opcode, frame.payload]);
      const echo = stream.close === undefined ? [] : [[
        Opcode.Close,
        stream.close.code === 1005 ? new Uint8Array(0) : encodeClosePayload(stream.close.code),
      ]];
      assertEquals(frames, [...stream.pings.map((data) => [Opcode.Pong, data]), ...echo]);
      assertEquals([core.state, core.outbox.bufferedAmount], [stream.close ? "closed" : "open", 0]);
      core.release();
    }),
    { seed: SEED, numRuns: 2000 },
  );
});

// ---------------------------------------------------------------- mutated streams

// Valid streams with bytes changed, inserted or cut off; or bytes with no structure.
const hostileStream = fc.oneof(
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 3000 }) },
  {
    weight: 4,
    arbitrary: fc.tuple(
      validStream.filter((stream) => stream.bytes.length > 0),
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }),
      fc.array(fc.tuple(fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 10 })), { maxLength: 2 }),
      fc.option(fc.nat()),
    ).map(([{ bytes }, flips, insertions, cut]) => {
      let mutated: Uint8Array = bytes.slice();
      for (const [position, value] of flips) mutated[position % mutated.length] = value;
      for (const [position, inserted] of insertions) {
        const at = position % (mutated.length + 1);
        mutated = concat([mutated.subarray(0, at), inserted, mutated.subarray(at)]);
      }
      return cut === null ? mutated : mutated.subarray(0, cut % mutated.length + 1);
    }),
  },
);

// Small limits too, so that 1009 comes up and declared lengths allocate little.
const limits = fc.record({
  maxPayload: fc.constantFrom(1000, 5000, 64 * 1024, undefined),
  maxFragments: fc.constantFrom(3, undefined),
});

// Codes the server may fail a connection with for what a peer sent (RFC 6455 7.4.1).
const FAILURE_CODES = [1002, 1007, 1009];

Deno.test("property: mutated streams give pongs, then at most a close with 1002, 1007, 1009 or the peer's code", () => {
  fc.assert(
    fc.property(hostileStream, splits, limits, (bytes, cuts, options) => {
      const core = openCore(options);
      const events = feedSplit(core, bytes, cuts); // must not throw
      assertEquals(events.filter((event) => event.type === "error"), [], "an unexpected error");
      const frames = serverFrames(drain(core));
      const pings = events.filter((event) => event.type === "ping").map((event) => event.data);
      const closeAt = frames.findIndex((frame) => frame.opcode === Opcode.Close);
      // Pongs for the pings, in order; then at most a close, and nothing after it.
      const pongs = closeAt < 0 ? frames : frames.slice(0, closeAt);
      assertEquals(pongs.map((frame) => [frame.opcode, frame.payload]), pings.map((data) => [Opcode.Pong, data]));
      if (closeAt < 0) {
        assertEquals(core.state, "open");
        return core.release();
      }
      assertEquals(closeAt, frames.length - 1, "a frame after the close frame");
      const closed = events.findIndex((event) => event.type === "close");
      const sent = frames[closeAt].payload.length === 0 ? 1005 : decodeClosePayload(frames[closeAt].payload).code;
      if (closed < 0) {
        assert(FAILURE_CODES.includes(sent), `failed with ${sent}`);
      } else {
        // The peer's valid close is echoed, and is the last event.
        assertEquals([closed, sent], [events.length - 1, (events[closed] as { code: number }).code]);
      }
      assertEquals([core.state, core.closeCode], ["closed", sent]);
      // Nothing more once closed: no reading, no events, nothing queued.
      assertEquals([core.reading, core.takeEvents(), core.outbox.next()], [false, [], undefined]);
      assertEquals(core.send(encodeFrame(Opcode.Text, "more")), false);
      core.release();
    }),
    { seed: SEED, numRuns: 3000 },
  );
});

// ---------------------------------------------------------------- request heads

const headerName = fc.constantFrom(
  "Host",
  "Upgrade",
  "Connection",
  "Sec-WebSocket-Key",
  "Sec-WebSocket-Version",
  "Origin",
  "Sec-WebSocket-Protocol",
  "X-Other",
);

// Valid heads with headers dropped, repeated or given odd values, and heads with bytes changed.
const requestHead = fc.oneof(
  fc.tuple(
    fc.dictionary(headerName, fc.option(fc.string({ unit: "binary-ascii", maxLength: 30 }), { freq: 3 })),
    fc.constantFrom("GET /chat HTTP/1.1", "POST / HTTP/1.1", "GET / HTTP/1.0", "GET chat HTTP/1.1", "GET /"),
  ).map(([headers, line]) => encoder.encode(handshake(headers, line))),
  fc.tuple(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 })).map(
    ([flips]) => {
      const head = encoder.encode(handshake());
      for (const [position, value] of flips) head[position % head.length] = value;
      return head;
    },
  ),
);

Deno.test("property: any request head gives one upgrade or http event, or a 4xx answer and a closed connection", () => {
  fc.assert(
    fc.property(requestHead, splits, (head, cuts) => {
      const core = new Core(resolveOptions({}));
      const events = feedSplit(core, head, cuts);
      const written = drain(core);
      if (events.length > 0) {
        assertEquals(events.length, 1);
        assert(events[0].type === "upgrade" || events[0].type === "http", `event ${events[0].type}`);
        assertEquals(written.length, 0, "answered before accept(), reject() or respond()");
      } else if (written.length > 0) {
        const status = Number(new TextDecoder("latin1").decode(written.subarray(0, 12)).split(" ")[1]);
        assert(status >= 400 && status < 500, `status ${status}`);
        assertEquals(core.state, "closed");
      } else {
        // A head still incomplete (a flipped byte broke its end) waits for more.
        assertEquals(core.state, "connecting");
      }
    }),
    { seed: SEED, numRuns: 3000 },
  );
});
