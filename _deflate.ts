// permessage-deflate (RFC 7692): the negotiation of its parameters in the opening
// handshake, and the compression and decompression of one connection's messages.
// Private to the module; protocol.ts makes the options public.
//
// zlib is node:zlib's, driven synchronously through the handle of a zlib stream
// (`_handle.writeSync`, the call Node's own sync functions make). The public sync
// functions build a new zlib stream for every call (a 1 KiB message: 53 µs against 33
// to compress, 27 against 7.5 to inflate) and cannot keep a window between messages;
// CompressionStream is asynchronous, and DecompressionStream, like fflate, hands the
// whole output of a chunk over at once, so that a 32 KiB bomb costs 32 MiB before it
// can be refused. The README's Compression section has the measurements. The handle is
// an internal of node:zlib: `deflateSupported()` checks that it works as expected, and
// while it does not, permessage-deflate is declined rather than half-working.

import { constants, createDeflateRaw, createInflateRaw } from "node:zlib";
import { type DataFrame, encodeMaskedMessage, encodeMessage, nextMaskKey, pooled } from "./_outbox.ts";
import { FrameError, ProtocolError } from "./errors.ts";
import { CloseCode, encodeFrame, encodeHeader, Opcode } from "./frame.ts";

/**
 * How permessage-deflate keeps its LZ77 window between messages (RFC 7692 7.1.1):
 * `"no-context-takeover"` compresses every message on its own, in both directions;
 * `"context-takeover"` keeps each direction's window for the next message.
 *
 * @example
 * ```ts
 * import type { CompressionMode } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const mode: CompressionMode = "no-context-takeover";
 * assertEquals(mode.endsWith("takeover"), true);
 * ```
 */
export type CompressionMode = "no-context-takeover" | "context-takeover";

/**
 * Options of permessage-deflate (RFC 7692), as `compression` in `ProtocolOptions`.
 * Every one has a default; `compression: true` takes them all.
 *
 * @example Compress messages of 1 KiB and more, keeping no window between messages
 * ```ts
 * import { type CompressionOptions, Protocol } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const compression: CompressionOptions = { mode: "no-context-takeover", threshold: 1024, level: 6 };
 * const handler = new Protocol(new Map(), { compression });
 * assertEquals(handler.state, "connecting");
 * ```
 */
export interface CompressionOptions {
  /**
   * `"no-context-takeover"` (the default): connections keep no zlib state between
   * messages (an idle connection costs nothing for compression), and a broadcast is
   * compressed once for all its recipients. `"context-takeover"`: each connection
   * keeps a window in each direction, about 270 KiB once it has sent and received a
   * compressed message, for smaller messages when they resemble earlier ones.
   */
  mode?: CompressionMode;
  /**
   * Messages shorter than this are sent uncompressed (default 256): bytes for binary,
   * characters for text. Below a few hundred bytes deflate saves little and costs
   * more than the send itself.
   */
  threshold?: number;
  /** The zlib level, 0 (stored, no compression) to 9 (smallest, slowest); default 6, zlib's own. */
  level?: number;
}

/** Compression options with their defaults filled in. */
export interface ResolvedCompression {
  mode: CompressionMode;
  threshold: number;
  level: number;
}

const DEFAULTS: ResolvedCompression = { mode: "no-context-takeover", threshold: 256, level: 6 };

/** Checks the `compression` option and fills in its defaults; `undefined` when compression is off. */
export function resolveCompression(option: boolean | CompressionOptions | undefined): ResolvedCompression | undefined {
  if (option === undefined || option === false) return undefined;
  const given = option === true ? {} : option;
  const resolved = { ...DEFAULTS, ...Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined)) };
  if (resolved.mode !== "no-context-takeover" && resolved.mode !== "context-takeover") {
    throw new RangeError(`compression.mode must be "no-context-takeover" or "context-takeover", got ${resolved.mode}`);
  }
  if (!Number.isInteger(resolved.threshold) || resolved.threshold < 0) {
    throw new RangeError(`compression.threshold must be an integer of at least 0, got ${resolved.threshold}`);
  }
  if (!Number.isInteger(resolved.level) || resolved.level < 0 || resolved.level > 9) {
    throw new RangeError(`compression.level must be an integer from 0 to 9, got ${resolved.level}`);
  }
  return resolved;
}

// ---------------------------------------------------------------- negotiation

/** The permessage-deflate parameters in force on a connection (RFC 7692 7.1). */
export interface DeflateParams {
  /** The server starts every message with an empty window (RFC 7692 7.1.1.1). */
  serverNoContextTakeover: boolean;
  /** The client starts every message with an empty window (RFC 7692 7.1.1.2). */
  clientNoContextTakeover: boolean;
  /** The window of what the server sends, 9-15, when the client asked for one (RFC 7692 7.1.2.1). */
  serverMaxWindowBits?: number;
}

/** One extension of a `Sec-WebSocket-Extensions` value: its name and parameters, in order. */
export interface ExtensionOffer {
  name: string;
  /** Each parameter's name, lower-cased, and its value (unquoted), or `undefined` without one. */
  params: [string, string | undefined][];
}

// RFC 7230 3.2.6: token characters.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// RFC 7692 7.1.2: "a decimal integer without leading zeroes between 8 to 15".
const WINDOW_BITS = /^(?:[89]|1[0-5])$/;

/**
 * Parses a `Sec-WebSocket-Extensions` value (RFC 6455 9.1): extensions separated by
 * commas, each a token and `;`-separated parameters `name` or `name=value`, the value
 * a token or a quoted-string whose content is a token. A malformed extension is
 * dropped, the others kept.
 */
export function parseExtensions(header: string): ExtensionOffer[] {
  const offers: ExtensionOffer[] = [];
  for (const element of splitOutsideQuotes(header, ",")) {
    if (element.trim() === "") continue; // RFC 7230 7: empty list elements are allowed
    const [name, ...rest] = splitOutsideQuotes(element, ";").map((part) => part.trim());
    if (!TOKEN.test(name)) continue;
    const params = rest.map(parseParam);
    if (params.some((param) => param === undefined)) continue;
    offers.push({ name: name.toLowerCase(), params: params as [string, string | undefined][] });
  }
  return offers;
}

// Splits at `separator` where it is not inside a quoted-string (RFC 7230 3.2.6, with
// backslash escapes). An unterminated quote runs to the end.
function splitOutsideQuotes(text: string, separator: string): string[] {
  const parts: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (quoted && char === "\\") i++;
    else if (char === '"') quoted = !quoted;
    else if (!quoted && char === separator) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}

function parseParam(text: string): [string, string | undefined] | undefined {
  const equals = text.indexOf("=");
  const name = (equals < 0 ? text : text.slice(0, equals)).trim();
  if (!TOKEN.test(name)) return undefined;
  if (equals < 0) return [name.toLowerCase(), undefined];
  let value = text.slice(equals + 1).trim();
  if (value.startsWith('"')) {
    if (value.length < 2 || !value.endsWith('"')) return undefined;
    value = value.slice(1, -1).replace(/\\(.)/g, "$1");
  }
  // RFC 6455 9.1: a quoted value must be a token once unquoted.
  return TOKEN.test(value) ? [name.toLowerCase(), value] : undefined;
}

/**
 * The parameters of the first permessage-deflate offer in `header` that can be
 * honoured in `mode`, or `undefined` when there is none. RFC 7692 7: an offer with
 * an unknown, repeated or invalid parameter is declined, and the next one considered.
 * RFC 7692 7.1.1: the server may always answer with both `no_context_takeover`
 * parameters, and does so in "no-context-takeover" mode; in "context-takeover" mode
 * it answers with those the client asked for.
 */
export function negotiateDeflate(header: string | null, mode: CompressionMode): DeflateParams | undefined {
  if (header === null || !deflateSupported()) return undefined;
  for (const offer of parseExtensions(header)) {
    if (offer.name !== "permessage-deflate") continue;
    const params = acceptOffer(offer.params, mode);
    if (params !== undefined) return params;
  }
  return undefined;
}

function acceptOffer(params: [string, string | undefined][], mode: CompressionMode): DeflateParams | undefined {
  const shared = mode === "no-context-takeover";
  const accepted: DeflateParams = { serverNoContextTakeover: shared, clientNoContextTakeover: shared };
  const seen = new Set<string>();
  for (const [name, value] of params) {
    if (seen.has(name)) return undefined;
    seen.add(name);
    if (name === "server_no_context_takeover" || name === "client_no_context_takeover") {
      if (value !== undefined) return undefined;
      if (name === "server_no_context_takeover") accepted.serverNoContextTakeover = true;
      else accepted.clientNoContextTakeover = true;
    } else if (name === "server_max_window_bits") {
      if (value === undefined || !WINDOW_BITS.test(value)) return undefined;
      // zlib cannot compress with a 256-byte window (it makes windowBits 8 into 9): decline.
      if (value === "8") return undefined;
      accepted.serverMaxWindowBits = Number(value);
    } else if (name === "client_max_window_bits") {
      // RFC 7692 7.1.2.2: the server may leave it out of its answer; our inflater's
      // 15-bit window reads any smaller one.
      if (value !== undefined && !WINDOW_BITS.test(value)) return undefined;
    } else {
      return undefined;
    }
  }
  return accepted;
}

/** The `Sec-WebSocket-Extensions` answer for accepted parameters: exactly those in force. */
export function deflateResponse(params: DeflateParams): string {
  let response = "permessage-deflate";
  if (params.serverNoContextTakeover) response += "; server_no_context_takeover";
  if (params.clientNoContextTakeover) response += "; client_no_context_takeover";
  if (params.serverMaxWindowBits !== undefined) response += `; server_max_window_bits=${params.serverMaxWindowBits}`;
  return response;
}

/**
 * A client's `Sec-WebSocket-Extensions` offer in `mode`, or `undefined` when
 * permessage-deflate cannot run here. "no-context-takeover" asks for it both ways (RFC
 * 7692 7.1.1), so that the server's messages inflate without a window kept; no
 * `client_max_window_bits` is offered: our compressor's window is always 15 bits.
 */
export function deflateOffer(mode: CompressionMode): string | undefined {
  if (!deflateSupported()) return undefined;
  return mode === "no-context-takeover"
    ? "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    : "permessage-deflate";
}

/**
 * The parameters of a server's answer to {@linkcode deflateOffer} (RFC 7692 5 and 7):
 * one permessage-deflate element whose parameters are known, not repeated, valid, and
 * none the client did not offer (`client_max_window_bits`). Anything else fails the
 * connection (RFC 7692 5: the client must).
 */
export function acceptAnswer(header: string): DeflateParams {
  const elements = splitOutsideQuotes(header, ",").filter((element) => element.trim() !== "");
  const offers = parseExtensions(header);
  const fail = (why: string) =>
    new ProtocolError(`Sec-WebSocket-Extensions ${JSON.stringify(header.slice(0, 80))}: ${why}`, {
      code: "WS_ERR_INVALID_EXTENSION",
    });
  if (offers.length !== elements.length) throw fail("malformed");
  if (offers.length !== 1 || offers[0].name !== "permessage-deflate") {
    throw fail("only permessage-deflate, once, was offered");
  }
  const params: DeflateParams = { serverNoContextTakeover: false, clientNoContextTakeover: false };
  const seen = new Set<string>();
  for (const [name, value] of offers[0].params) {
    if (seen.has(name)) throw fail(`${name} is repeated`);
    seen.add(name);
    if (name === "server_no_context_takeover" || name === "client_no_context_takeover") {
      if (value !== undefined) throw fail(`${name} takes no value`);
      if (name === "server_no_context_takeover") params.serverNoContextTakeover = true;
      else params.clientNoContextTakeover = true;
    } else if (name === "server_max_window_bits") {
      // RFC 7692 7.1.2.1: the server may limit its own window unasked; our inflater's
      // 15-bit window reads any smaller one.
      if (value === undefined || !WINDOW_BITS.test(value)) throw fail(`${name} must be 8 to 15`);
      params.serverMaxWindowBits = Number(value);
    } else {
      // RFC 7692 7.1.2.2: client_max_window_bits only in answer to an offer of it.
      throw fail(`${name} was not offered`);
    }
  }
  return params;
}

// ---------------------------------------------------------------- zlib

const { Z_SYNC_FLUSH, Z_FULL_FLUSH } = constants;
// RFC 7692 7.2.2: what the sender took off the end of every compressed message.
const TAIL = new Uint8Array([0x00, 0x00, 0xff, 0xff]);
// Inflated data goes out in pieces of at most this size: the most inflated past a
// limit before it is noticed.
const INFLATE_CHUNK = 64 * 1024;
const inflateOutput = new Uint8Array(INFLATE_CHUNK);
// Deflate output for messages below DEFLATE_SCRATCH_INPUT bytes goes here, then into its frame.
const DEFLATE_SCRATCH_INPUT = 64 * 1024;
const deflateOutput = new Uint8Array(DEFLATE_SCRATCH_INPUT + DEFLATE_SCRATCH_INPUT / 8 + 64);

/** What receives inflated data, a piece at a time; a piece is valid only during the call. */
export type Sink = (piece: Uint8Array) => void;

// The part of a node:zlib stream's handle used here (Node's and Deno's are the same).
interface ZlibHandle {
  writeSync(
    flush: number,
    input: Uint8Array,
    inputOffset: number,
    inputLength: number,
    output: Uint8Array,
    outputOffset: number,
    outputLength: number,
  ): void;
  reset(): void;
  close(): void;
  onerror: (message: string, errno: number) => void;
}

/** A raw DEFLATE stream, one direction, run synchronously. */
export class ZlibStream {
  readonly #handle: ZlibHandle;
  // After each write: [output bytes left unused, input bytes left unread].
  readonly #state: Uint32Array;
  #error: string | undefined;
  /** The stream's last block (BFINAL) has been read; what follows is not DEFLATE data. */
  ended = false;

  constructor(kind: "deflate" | "inflate", windowBits = 15, level = 6, memLevel = 8) {
    const stream = kind === "deflate"
      ? createDeflateRaw({ windowBits, level, memLevel })
      : createInflateRaw({ windowBits });
    const internals = stream as unknown as { _handle?: ZlibHandle; _writeState?: Uint32Array };
    if (typeof internals._handle?.writeSync !== "function" || !(internals._writeState instanceof Uint32Array)) {
      throw new Error("node:zlib streams have no synchronous handle");
    }
    this.#handle = internals._handle;
    this.#state = internals._writeState;
    // Errors come back here, during writeSync; the stream object would otherwise emit them.
    this.#handle.onerror = (message) => {
      this.#error = message;
    };
  }

  /** Whether a write failed: the stream holds garbage and must not be reused. */
  get failed(): boolean {
    return this.#error !== undefined;
  }

  /**
   * Compresses `input` and flushes, so that the output ends on a byte boundary with
   * the 4 bytes 00 00 ff ff (RFC 7692 7.2.1), which are left off. Z_FULL_FLUSH also
   * forgets the window, Z_SYNC_FLUSH keeps it. The result is valid until the next call.
   */
  deflate(input: Uint8Array, flush: number): Uint8Array {
    // An empty message is an empty stored block whose last 4 bytes are left off, as in
    // RFC 7692 7.2.3.6: zlib itself emits nothing for a flush right after another.
    if (input.length === 0) return new Uint8Array(1);
    const bound = input.length + (input.length >> 8) + 64; // grown below if zlib needs more
    let output = input.length <= DEFLATE_SCRATCH_INPUT ? deflateOutput : new Uint8Array(bound);
    let written = 0;
    let read = 0;
    while (true) {
      this.#handle.writeSync(flush, input, read, input.length - read, output, written, output.length - written);
      this.#check();
      written = output.length - this.#state[0];
      read = input.length - this.#state[1];
      if (this.#state[0] > 0) return output.subarray(0, written - TAIL.length);
      const grown = new Uint8Array(output.length * 2);
      grown.set(output);
      output = grown;
    }
  }

  /** Inflates `input`, handing the output to `sink` piece by piece; input past the stream's end is ignored. */
  inflate(input: Uint8Array, sink: Sink): void {
    let read = 0;
    while (!this.ended) {
      this.#handle.writeSync(Z_SYNC_FLUSH, input, read, input.length - read, inflateOutput, 0, INFLATE_CHUNK);
      this.#check();
      const [outputLeft, inputLeft] = this.#state;
      read = input.length - inputLeft;
      if (outputLeft < INFLATE_CHUNK) sink(inflateOutput.subarray(0, INFLATE_CHUNK - outputLeft));
      // zlib stops when the output is full, when the input is used up, or at the stream's end.
      if (outputLeft > 0) {
        this.ended = inputLeft > 0;
        return;
      }
    }
  }

  /** Starts a new stream, with an empty window. */
  reset(): void {
    this.#handle.reset();
    this.ended = false;
  }

  close(): void {
    this.#handle.close();
  }

  #check(): void {
    if (this.#error === undefined) return;
    // RFC 7692 names no close code for data that does not inflate. The frames are
    // well-formed; their payload is not what RSV1 says it is: 1007, as RFC 6455 7.4.1
    // has it for data inconsistent with the message's type (ws does the same).
    throw new FrameError(`Compressed data is not valid DEFLATE: ${this.#error}`, {
      closeCode: CloseCode.InvalidPayload,
      code: "WS_ERR_INVALID_COMPRESSED_DATA",
    });
  }
}

let supported: boolean | undefined;

/**
 * Whether node:zlib's synchronous handle works here: "Hello" must compress to the
 * bytes of RFC 7692 7.2.3.1. Checked once.
 */
export function deflateSupported(): boolean {
  if (supported !== undefined) return supported;
  try {
    const stream = new ZlibStream("deflate");
    const hello = stream.deflate(new TextEncoder().encode("Hello"), Z_SYNC_FLUSH);
    stream.close();
    supported = hello.join() === [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00].join();
  } catch {
    supported = false;
  }
  if (!supported) console.warn("permessage-deflate is declined: node:zlib's synchronous handle does not work here");
  return supported;
}

// Without server context takeover every message starts with an empty window: one
// compressor for each level and window serves every connection, flushed with
// Z_FULL_FLUSH after each message, which forgets the window (cheaper than a reset).
const sharedDeflaters = new Map<string, ZlibStream>();

function sharedDeflater(level: number, windowBits: number): ZlibStream {
  const key = `${level}/${windowBits}`;
  let stream = sharedDeflaters.get(key);
  if (stream === undefined) sharedDeflaters.set(key, stream = new ZlibStream("deflate", windowBits, level));
  return stream;
}

// Without client context takeover an inflater is needed only while a message arrives:
// connections borrow one from this pool, and give it back, reset, at the message's end.
const IDLE_INFLATERS = 16;
const idleInflaters: ZlibStream[] = [];

function giveBack(inflater: ZlibStream): void {
  if (inflater.failed || idleInflaters.length >= IDLE_INFLATERS) return inflater.close();
  inflater.reset();
  idleInflaters.push(inflater);
}

// Text is encoded into a reused buffer before it is compressed.
const SCRATCH_CHARS = 16 * 1024;
const utf8Scratch = new Uint8Array(3 * SCRATCH_CHARS);
const textEncoder = new TextEncoder();

function encodeUtf8(text: string): Uint8Array {
  if (text.length > SCRATCH_CHARS) return textEncoder.encode(text);
  return utf8Scratch.subarray(0, textEncoder.encodeInto(text, utf8Scratch).written);
}

// A compressed message in one frame, RSV1 set (RFC 7692 6). Payloads of 4 KiB and more
// that are not in the scratch buffer are queued after their header, as in encodeMessage;
// a client's frame is masked, into a frame of its own (RFC 6455 5.3).
function compressedFrame(opcode: Opcode, payload: Uint8Array, masked: boolean): DataFrame {
  if (masked) {
    const frame = encodeFrame(opcode, payload, { maskKey: nextMaskKey(), allocate: pooled.allocate });
    frame[0] |= 0x40;
    return frame;
  }
  if (payload.length >= 4096 && payload.buffer !== deflateOutput.buffer) {
    const header = encodeHeader(opcode, payload.length, pooled);
    header[0] |= 0x40;
    return [header, payload];
  }
  const frame = encodeFrame(opcode, payload, payload.length < 4096 ? pooled : undefined);
  frame[0] |= 0x40;
  return frame;
}

// ---------------------------------------------------------------- one connection

/**
 * Messages compressed and inflated so far, process-wide: how tests and benchmarks see
 * that a broadcast was compressed once, or that a client's messages came compressed.
 */
export const deflateStats = { compressed: 0, inflated: 0 };

/**
 * permessage-deflate on one connection: its parameters, its compressor and its
 * decompressor. A server compresses with the server_* parameters and inflates with the
 * client_* ones; a client the other way round, and masks its frames.
 */
export class PerMessageDeflate {
  readonly params: DeflateParams;
  /** The `Sec-WebSocket-Extensions` answer that accepted the offer. */
  readonly response: string;
  readonly #client: boolean;
  // What we send starts with an empty window every message: one shared compressor.
  readonly #sendFresh: boolean;
  // What the peer sends does: an inflater is borrowed for a message, not kept.
  readonly #receiveFresh: boolean;
  readonly #threshold: number;
  readonly #level: number;
  readonly #windowBits: number;
  // The shareKey of compressed messages: computed once, not per recipient and message.
  readonly #sharedKey: string | undefined;
  // This connection's own compressor (server context takeover), made at its first use.
  #deflater: ZlibStream | undefined;
  // This connection's inflater: its own (client context takeover), or borrowed for a message.
  #inflater: ZlibStream | undefined;
  // Whether the message under way has had compressed bytes.
  #inflating = false;

  constructor(params: DeflateParams, options: ResolvedCompression, client = false) {
    this.params = params;
    this.response = deflateResponse(params);
    this.#client = client;
    // A sender may always drop its window (RFC 7692 7.1.1.2): a client in
    // "no-context-takeover" mode does, even when the server did not ask it to.
    this.#sendFresh = client
      ? params.clientNoContextTakeover || options.mode === "no-context-takeover"
      : params.serverNoContextTakeover;
    this.#receiveFresh = client ? params.serverNoContextTakeover : params.clientNoContextTakeover;
    this.#threshold = Math.max(1, options.threshold); // an empty message goes uncompressed
    this.#level = options.level;
    // Our client offers no client_max_window_bits, so its window is 15 bits.
    this.#windowBits = client ? 15 : params.serverMaxWindowBits ?? 15;
    this.#sharedKey = this.#sendFresh && !client ? `deflate ${this.#level}/${this.#windowBits}` : undefined;
  }

  /**
   * The frame for a message: compressed when it is at least `threshold` long. Without
   * server context takeover, a message that does not shrink is sent uncompressed (RFC
   * 7692 6: RSV1 is set per message); with it, the window already holds the message.
   */
  encode(msg: string | Uint8Array): DataFrame {
    const plain = this.#client ? encodeMaskedMessage : encodeMessage;
    if (msg.length < this.#threshold) return plain(msg);
    const opcode = typeof msg === "string" ? Opcode.Text : Opcode.Binary;
    const bytes = typeof msg === "string" ? encodeUtf8(msg) : msg;
    deflateStats.compressed++;
    if (this.#sendFresh) {
      const compressed = sharedDeflater(this.#level, this.#windowBits).deflate(bytes, Z_FULL_FLUSH);
      return compressed.length < bytes.length ? compressedFrame(opcode, compressed, this.#client) : plain(msg);
    }
    this.#deflater ??= new ZlibStream("deflate", this.#windowBits, this.#level);
    return compressedFrame(opcode, this.#deflater.deflate(bytes, Z_SYNC_FLUSH), this.#client);
  }

  /**
   * Connections with the same key encode `msg` to the same bytes: `""` when it goes
   * uncompressed, as without the extension; `undefined` when this connection's
   * compressor keeps a window, which makes its bytes its own.
   */
  shareKey(msg: string | Uint8Array): string | undefined {
    if (msg.length < this.#threshold) return "";
    return this.#sharedKey;
  }

  /** Inflates the next piece of a compressed message's payload into `sink`. */
  inflate(piece: Uint8Array, sink: Sink): void {
    if (piece.length === 0) return;
    this.#inflater ??= this.#receiveFresh
      ? idleInflaters.pop() ?? new ZlibStream("inflate")
      : new ZlibStream("inflate");
    this.#inflating = true;
    this.#inflater.inflate(piece, sink);
  }

  /**
   * The compressed message is whole: its inflation ends with the 4 bytes the sender
   * left off (RFC 7692 7.2.2). Without the peer's context takeover the inflater goes back
   * to the pool; with it, it keeps its window, unless the stream ended (BFINAL, RFC
   * 7692 7.2.3.4), after which the next message starts a new one.
   */
  endMessage(sink: Sink): void {
    deflateStats.inflated++;
    const inflater = this.#inflater;
    // An empty payload is an empty message that left the sender's stream as it was (zlib
    // emits nothing for a flush right after another): 00 00 ff ff alone would start a
    // stored block of 65,280 bytes.
    if (inflater === undefined || !this.#inflating) return;
    this.#inflating = false;
    inflater.inflate(TAIL, sink);
    if (this.#receiveFresh) {
      this.#inflater = undefined;
      giveBack(inflater);
    } else if (inflater.ended) {
      inflater.reset();
    }
  }

  /** The connection is gone: frees its zlib streams. */
  close(): void {
    this.#deflater?.close();
    this.#deflater = undefined;
    if (this.#inflater !== undefined) {
      if (this.#receiveFresh) giveBack(this.#inflater);
      else this.#inflater.close();
      this.#inflater = undefined;
    }
  }
}

/**
 * permessage-deflate for a connection whose client sent `header` as its
 * `Sec-WebSocket-Extensions`, or `undefined` when compression is off or no offer can
 * be honoured.
 */
export function negotiate(
  header: string | null,
  options: ResolvedCompression | undefined,
): PerMessageDeflate | undefined {
  if (options === undefined) return undefined;
  const params = negotiateDeflate(header, options.mode);
  return params === undefined ? undefined : new PerMessageDeflate(params, options);
}
