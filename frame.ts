/**
 * RFC 6455 frame codec: a pure byte codec over `Uint8Array`, with no I/O and no
 * timers. {@linkcode Frame} parses one frame; {@linkcode Frame.decode} is the
 * incremental decoder for a byte stream; {@linkcode encodeFrame} and
 * {@linkcode Frame.buildMessage} build frames.
 *
 * @example Build a masked text frame and parse it back
 * ```ts
 * import { Frame } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = Frame.buildMessage("Hello");
 * const frame = new Frame(bytes);
 * assertEquals(frame.message(), "Hello");
 * assertEquals(frame.length(), bytes.length);
 * ```
 *
 * @module
 */

import { FrameError } from "./errors.ts";
import { decodeUtf8 } from "./_utf8.ts";

/**
 * Frame opcodes (RFC 6455 5.2). The others (3-7, 11-15) are reserved.
 *
 * @example
 * ```ts
 * import { encodeFrame, Opcode } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const ping = encodeFrame(Opcode.Ping, new Uint8Array([1, 2, 3]));
 * assertEquals(ping[0], 0x80 | Opcode.Ping); // FIN + ping: 0x89
 * ```
 */
export const Opcode = {
  Continuation: 0x0,
  Text: 0x1,
  Binary: 0x2,
  Close: 0x8,
  Ping: 0x9,
  Pong: 0xa,
} as const;

/**
 * One of the values of {@linkcode Opcode}.
 *
 * @example
 * ```ts
 * import { Opcode } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const data: Opcode[] = [Opcode.Text, Opcode.Binary];
 * assertEquals(data, [0x1, 0x2]);
 * ```
 */
export type Opcode = typeof Opcode[keyof typeof Opcode];

/**
 * Close codes registered for RFC 6455 (section 7.4.1 and the IANA registry).
 * `NoStatusReceived`, `AbnormalClosure` and `TlsHandshake` are for local reporting
 * only and never appear in a close frame; see {@linkcode isValidCloseCode}.
 *
 * @example
 * ```ts
 * import { CloseCode } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(CloseCode.NormalClosure, 1000);
 * assertEquals(CloseCode.MessageTooBig, 1009);
 * ```
 */
export const CloseCode = {
  NormalClosure: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  UnsupportedData: 1003,
  NoStatusReceived: 1005,
  AbnormalClosure: 1006,
  InvalidPayload: 1007,
  PolicyViolation: 1008,
  MessageTooBig: 1009,
  MandatoryExtension: 1010,
  InternalError: 1011,
  ServiceRestart: 1012,
  TryAgainLater: 1013,
  BadGateway: 1014,
  TlsHandshake: 1015,
} as const;

// RFC 6455 7.4.1: these are reported locally and must not be sent in a close frame.
const LOCAL_ONLY_CLOSE_CODES: ReadonlySet<number> = new Set([
  CloseCode.NoStatusReceived,
  CloseCode.AbnormalClosure,
  CloseCode.TlsHandshake,
]);
const REGISTERED_CLOSE_CODES: ReadonlySet<number> = new Set(
  Object.values(CloseCode).filter((code) => !LOCAL_ONLY_CLOSE_CODES.has(code)),
);

/**
 * Whether `code` may be sent in a close frame: a registered code other than the
 * local-only ones, or one from the 3000-4999 range for libraries and applications
 * (RFC 6455 7.4.2).
 *
 * @example
 * ```ts
 * import { isValidCloseCode } from "./frame.ts";
 * import { assert, assertFalse } from "@std/assert";
 *
 * assert(isValidCloseCode(1000));
 * assertFalse(isValidCloseCode(1005)); // local only
 * assert(isValidCloseCode(4000));
 * ```
 */
export function isValidCloseCode(code: number): boolean {
  return REGISTERED_CLOSE_CODES.has(code) || (code >= 3000 && code <= 4999);
}

/**
 * Options for decoding frames.
 *
 * @example A server reads masked frames of at most 1 MiB
 * ```ts
 * import { type DecodeOptions, Frame } from "./frame.ts";
 * import { FrameError } from "./errors.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * const options: DecodeOptions = { masked: true, maxPayload: 1024 * 1024 };
 * assertEquals(Frame.decode(Frame.buildMessage("hi"), options)?.message(), "hi");
 * // An unmasked frame from a client is a protocol error (RFC 6455 5.1).
 * const error = assertThrows(() => Frame.decode(Frame.buildMessage("hi", false), options), FrameError);
 * assertEquals(error.closeCode, 1002);
 * ```
 */
export interface DecodeOptions {
  /**
   * Largest payload of a data frame accepted, in bytes; a larger one throws with close
   * code 1009. Control frames have their own limit of 125 bytes (RFC 6455 5.5).
   */
  maxPayload?: number;
  /**
   * Masking demanded by the role (RFC 6455 5.1): `true` when reading a client's
   * frames (a server), `false` when reading a server's (a client), unset for either.
   */
  masked?: boolean;
  /**
   * `true` (the default) gives the frame its own unmasked copy of the payload.
   * `false` unmasks the payload in place and keeps a view into `buf`: no copy, but
   * `buf` is modified and the payload lives only as long as `buf` does.
   */
  copy?: boolean;
  /**
   * Whether RSV1 may be set (default `false`): `true` once permessage-deflate is
   * negotiated (RFC 7692 6), and then only on the first frame of a data message;
   * RSV1 on a control or continuation frame, and RSV2 or RSV3 on any, still throw.
   * A frame with RSV1 holds compressed data: `message()` does not inflate it.
   */
  rsv1?: boolean;
}

/**
 * A frame's header as {@linkcode decodeHeader} reads it: everything before the
 * payload. The masking key, if any, is the 4 bytes before `headerLength`.
 *
 * @example
 * ```ts
 * import { decodeHeader, type FrameHeader, Opcode } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const header: FrameHeader | null = decodeHeader(new Uint8Array([0x82, 0x7e, 0x01, 0x00]));
 * assertEquals(header?.opcode, Opcode.Binary);
 * assertEquals(header?.payloadLength, 256);
 * assertEquals(header?.headerLength, 4);
 * ```
 */
export interface FrameHeader {
  /** Whether this is the final fragment of its message. */
  fin: boolean;
  /** Reserved bit 1. */
  rsv1: boolean;
  /** Reserved bit 2. */
  rsv2: boolean;
  /** Reserved bit 3. */
  rsv3: boolean;
  /** The frame's opcode, one of {@linkcode Opcode}. */
  opcode: number;
  /** Whether the payload is masked. */
  masked: boolean;
  /** The payload's length in bytes. */
  payloadLength: number;
  /** The header's length in bytes, masking key included: where the payload starts. */
  headerLength: number;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const textEncoder = new TextEncoder();

/**
 * One WebSocket frame, parsed from bytes.
 *
 * @example Parse the first RFC 6455 5.7 example, an unmasked "Hello"
 * ```ts
 * import { Frame, Opcode } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const frame = new Frame(new Uint8Array([0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]));
 * assertEquals(frame.opcode, Opcode.Text);
 * assertEquals(frame.message(), "Hello");
 * assertEquals(frame.length(), 7);
 * ```
 */
export class Frame {
  /** Whether this is the final fragment of its message. */
  readonly fin: boolean;
  /** Reserved bit 1 (set only by a negotiated extension). */
  readonly rsv1: boolean;
  /** Reserved bit 2 (set only by a negotiated extension). */
  readonly rsv2: boolean;
  /** Reserved bit 3 (set only by a negotiated extension). */
  readonly rsv3: boolean;
  /** The frame's opcode, one of {@linkcode Opcode}. */
  readonly opcode: number;
  /** Whether the frame was masked on the wire. */
  readonly masked: boolean;
  /** The 4-byte masking key of a masked frame. */
  readonly maskKey: Uint8Array | undefined;
  /** The payload, already unmasked. */
  readonly payload: Uint8Array;
  #length: number;

  /**
   * Parses the frame at the start of `buf`. Throws {@linkcode FrameError} if the
   * frame is malformed, forbidden by `options`, or not complete in `buf`; use
   * {@linkcode Frame.decode} on a stream where a frame may still be arriving.
   *
   * @param buf Bytes that start with a whole frame; bytes after it are ignored.
   * @param options Limits and masking rules.
   */
  constructor(buf: Uint8Array, options: DecodeOptions = {}) {
    const header = decodeHeader(buf, options);
    const frameLength = header === null ? Infinity : header.headerLength + header.payloadLength;
    if (header === null || buf.length < frameLength) {
      throw new FrameError(
        `Incomplete frame: got ${buf.length} bytes, the frame needs ${
          header === null ? "a longer header" : `${frameLength}`
        }`,
        { code: "WS_ERR_INCOMPLETE_FRAME" },
      );
    }
    this.fin = header.fin;
    this.rsv1 = header.rsv1;
    this.rsv2 = header.rsv2;
    this.rsv3 = header.rsv3;
    this.opcode = header.opcode;
    this.masked = header.masked;
    // Views are cheap and new buffers are not: without `copy`, nothing is allocated.
    const { headerLength } = header;
    const copy = options.copy !== false;
    if (header.masked) {
      this.maskKey = copy ? buf.slice(headerLength - 4, headerLength) : buf.subarray(headerLength - 4, headerLength);
    }
    this.payload = copy ? buf.slice(headerLength, frameLength) : buf.subarray(headerLength, frameLength);
    if (this.maskKey) applyMask(this.payload, this.maskKey);
    this.#length = frameLength;
  }

  /**
   * Incremental decoding: parses the frame at the start of `buf` if it has arrived
   * whole, or returns `null` when more bytes are needed. Never throws for an
   * incomplete frame and never allocates a payload before its bytes are there; a
   * malformed header throws {@linkcode FrameError} as soon as it is seen.
   *
   * @example Feed a stream one chunk at a time
   * ```ts
   * import { Frame } from "./frame.ts";
   * import { assertEquals } from "@std/assert";
   *
   * const bytes = Frame.buildMessage("Hi");
   * assertEquals(Frame.decode(bytes.subarray(0, 3)), null);
   * const frame = Frame.decode(bytes)!;
   * assertEquals(frame.message(), "Hi");
   * assertEquals(frame.length(), bytes.length); // bytes consumed
   * ```
   *
   * @param buf The bytes buffered so far.
   * @param options Limits, masking rules, and whether to copy the payload.
   * @returns The frame (its `length()` is the number of bytes it used), or `null`.
   */
  static decode(buf: Uint8Array, options: DecodeOptions = {}): Frame | null {
    const header = decodeHeader(buf, options);
    if (header === null || buf.length < header.headerLength + header.payloadLength) return null;
    return new Frame(buf, options);
  }

  /**
   * Builds a final text frame for a string or a binary frame for bytes, the
   * TwistedWebsocket way. `mask` defaults to `true`: a client-to-server frame with a
   * random masking key. Servers send with `mask = false`.
   *
   * @example
   * ```ts
   * import { Frame } from "./frame.ts";
   * import { assertEquals } from "@std/assert";
   *
   * assertEquals(Frame.buildMessage("Hello", false), new Uint8Array([0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]));
   * ```
   *
   * @param msg The message: text or binary.
   * @param mask Whether to mask the frame (client to server).
   * @returns The encoded frame.
   */
  static buildMessage(msg: string | Uint8Array, mask = true): Uint8Array {
    return encodeFrame(typeof msg === "string" ? Opcode.Text : Opcode.Binary, msg, { mask });
  }

  /**
   * The decoded payload: a string for a text frame (throws {@linkcode FrameError}
   * with close code 1007 if it is not UTF-8), the bytes for any other frame.
   *
   * @example
   * ```ts
   * import { Frame } from "./frame.ts";
   * import { assertEquals } from "@std/assert";
   *
   * assertEquals(new Frame(Frame.buildMessage(new Uint8Array([1, 2]))).message(), new Uint8Array([1, 2]));
   * assertEquals(new Frame(Frame.buildMessage("κ")).message(), "κ");
   * ```
   *
   * @returns The text or the bytes.
   */
  message(): string | Uint8Array {
    return this.opcode === Opcode.Text ? decodeText(this.payload) : this.payload;
  }

  /**
   * The whole frame's size in bytes: header, masking key and payload. A caller
   * holding several frames in one buffer slices the next one from here.
   *
   * @example
   * ```ts
   * import { Frame } from "./frame.ts";
   * import { assertEquals } from "@std/assert";
   *
   * assertEquals(new Frame(Frame.buildMessage("Hi", false)).length(), 2 + 2); // header + payload
   * assertEquals(new Frame(Frame.buildMessage("Hi")).length(), 2 + 4 + 2); // with a masking key
   * ```
   *
   * @returns The frame's length in bytes.
   */
  length(): number {
    return this.#length;
  }
}

/**
 * Parses and checks the header of the frame at the start of `buf` (RFC 6455 5.2),
 * or returns `null` while it is incomplete. It throws {@linkcode FrameError} as
 * {@linkcode Frame.decode} does, as soon as the header shows the frame is bad, and
 * before any of its payload is needed; so a reader can see how long a frame is and
 * where its payload will go before the payload arrives.
 *
 * @example
 * ```ts
 * import { decodeHeader } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * // A masked binary frame of 65,536 bytes: 2 + 8 bytes of length, 4 of mask.
 * const bytes = new Uint8Array([0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4]);
 * assertEquals(decodeHeader(bytes.subarray(0, 9)), null);
 * assertEquals(decodeHeader(bytes)?.payloadLength, 65536);
 * assertEquals(decodeHeader(bytes)?.headerLength, 14);
 * ```
 *
 * @param buf The bytes buffered so far.
 * @param options Limits and masking rules; `copy` does not apply.
 * @returns The header, or `null` until all of it has arrived.
 */
export function decodeHeader(buf: Uint8Array, options: DecodeOptions = {}): FrameHeader | null {
  if (buf.length < 2) return null;
  const first = buf[0];
  const second = buf[1];
  const fin = (first & 0x80) !== 0;
  const opcode = first & 0x0f;
  const masked = (second & 0x80) !== 0;
  let payloadLength = second & 0x7f;

  // RFC 6455 5.2: RSV bits must be 0 unless a negotiated extension defines them. RFC 7692 6:
  // permessage-deflate defines RSV1, on the first frame of a data message only.
  if ((first & 0x70) !== 0) {
    if (options.rsv1 !== true || (first & 0x70) !== 0x40) {
      throw new FrameError(`Reserved bits must be 0, got 0x${(first & 0x70).toString(16)}`, {
        code: "WS_ERR_UNEXPECTED_RSV",
      });
    }
    if (opcode === Opcode.Continuation || opcode >= 0x8) {
      throw new FrameError(`RSV1 must be 0 on a ${opcode === Opcode.Continuation ? "continuation" : "control"} frame`, {
        code: "WS_ERR_UNEXPECTED_RSV",
      });
    }
  }
  if (opcode >= 0x8) {
    if (opcode > Opcode.Pong) throw reservedOpcode(opcode);
    // RFC 6455 5.5: control frames must not be fragmented and carry at most 125 bytes.
    if (!fin) {
      throw new FrameError(`Control frame (opcode ${opcode}) must have FIN set`, {
        code: "WS_ERR_FRAGMENTED_CONTROL_FRAME",
      });
    }
    if (payloadLength > 125) {
      throw new FrameError(
        `Control frame (opcode ${opcode}) payload must be at most 125 bytes, got length code ${payloadLength}`,
        { code: "WS_ERR_CONTROL_FRAME_TOO_LONG" },
      );
    }
  } else if (opcode > Opcode.Binary) {
    throw reservedOpcode(opcode);
  }
  // RFC 6455 5.1: clients mask every frame, servers mask none.
  if (options.masked !== undefined && masked !== options.masked) {
    throw new FrameError(options.masked ? "Client frames must be masked" : "Server frames must not be masked", {
      code: options.masked ? "WS_ERR_EXPECTED_MASK" : "WS_ERR_UNEXPECTED_MASK",
    });
  }

  let headerLength = 2;
  if (payloadLength === 126) {
    if (buf.length < 4) return null;
    payloadLength = (buf[2] << 8) | buf[3];
    headerLength = 4;
  } else if (payloadLength === 127) {
    if (buf.length < 10) return null;
    const high = ((buf[2] << 24) | (buf[3] << 16) | (buf[4] << 8) | buf[5]) >>> 0;
    const low = ((buf[6] << 24) | (buf[7] << 16) | (buf[8] << 8) | buf[9]) >>> 0;
    // RFC 6455 5.2: the most significant bit of a 64-bit length must be 0.
    if (high >= 0x80000000) {
      throw new FrameError("64-bit payload length must have its most significant bit clear", {
        code: "WS_ERR_INVALID_LENGTH",
      });
    }
    payloadLength = high * 0x100000000 + low; // rounds past 2^53, always over any limit then
    headerLength = 10;
  }
  const maxPayload = options.maxPayload ?? Number.MAX_SAFE_INTEGER;
  if (payloadLength > maxPayload && opcode < 0x8) {
    throw new FrameError(`Payload of ${payloadLength} bytes exceeds the limit of ${maxPayload}`, {
      closeCode: CloseCode.MessageTooBig,
      code: "WS_ERR_PAYLOAD_TOO_BIG",
    });
  }

  if (masked) {
    if (buf.length < headerLength + 4) return null;
    headerLength += 4;
  }
  return {
    fin,
    rsv1: (first & 0x40) !== 0,
    rsv2: (first & 0x20) !== 0,
    rsv3: (first & 0x10) !== 0,
    opcode,
    masked,
    payloadLength,
    headerLength,
  };
}

function reservedOpcode(opcode: number): FrameError {
  return new FrameError(`Opcode ${opcode} is reserved`, { code: "WS_ERR_INVALID_OPCODE" });
}

/**
 * Options for {@linkcode encodeFrame}.
 *
 * @example The first fragment of a client's message
 * ```ts
 * import { encodeFrame, type EncodeOptions, Frame, Opcode } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const options: EncodeOptions = { fin: false, mask: true };
 * const frame = new Frame(encodeFrame(Opcode.Text, new TextEncoder().encode("part"), options));
 * assertEquals([frame.fin, frame.masked, frame.message()], [false, true, "part"]);
 * ```
 */
export interface EncodeOptions {
  /** Whether this is the final fragment of its message (default `true`). */
  fin?: boolean;
  /** Mask with a random key from `crypto.getRandomValues` (client to server). */
  mask?: boolean;
  /** Mask with this 4-byte key instead of a random one. */
  maskKey?: Uint8Array;
  /**
   * Where the frame's bytes go: returns a buffer of exactly `length` bytes (default
   * a new `Uint8Array`). A pool that hands out views of a larger buffer saves an
   * allocation per frame.
   */
  allocate?: (length: number) => Uint8Array;
}

/**
 * Encodes one frame: the shortest of the three length encodings, then the masking
 * key if any, then the payload (copied, and masked in the copy; `payload` is never
 * modified).
 *
 * @example A fragmented message: text frame without FIN, then a continuation
 * ```ts
 * import { encodeFrame, Opcode } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hel = encodeFrame(Opcode.Text, new TextEncoder().encode("Hel"), { fin: false });
 * const lo = encodeFrame(Opcode.Continuation, new TextEncoder().encode("lo"));
 * assertEquals(hel, new Uint8Array([0x01, 0x03, 0x48, 0x65, 0x6c]));
 * assertEquals(lo, new Uint8Array([0x80, 0x02, 0x6c, 0x6f]));
 * ```
 *
 * @param opcode The frame's opcode.
 * @param payload The payload: bytes, or a string to encode as UTF-8.
 * @param options FIN, masking, and where the bytes go.
 * @returns The frame's bytes.
 */
export function encodeFrame(opcode: Opcode, payload: Uint8Array | string, options: EncodeOptions = {}): Uint8Array {
  const maskKey = options.maskKey ?? (options.mask ? crypto.getRandomValues(maskKeyScratch) : undefined);
  if (typeof payload === "string" && payload.length > SCRATCH_CHARS && !options.allocate) {
    const { buffer, written } = encodeLongText(payload);
    const headerLength = frameHeaderLength(written, maskKey !== undefined);
    const frame = buffer.subarray(MAX_HEADER_LENGTH - headerLength, MAX_HEADER_LENGTH + written);
    return writeHeader(frame, written, opcode, options.fin !== false, maskKey);
  }
  const bytes = typeof payload === "string" ? encodeUtf8(payload) : payload;
  const headerLength = frameHeaderLength(bytes.length, maskKey !== undefined);
  const length = headerLength + bytes.length;
  const frame = options.allocate ? options.allocate(length) : new Uint8Array(length);
  frame.set(bytes, headerLength);
  return writeHeader(frame, bytes.length, opcode, options.fin !== false, maskKey);
}

/**
 * Encodes only the header of an unmasked frame, so that a large payload can be
 * written after it as it is, without copying it into a frame (a masked payload must
 * be changed, so build masked frames with {@linkcode encodeFrame}).
 *
 * @example
 * ```ts
 * import { encodeHeader, Opcode } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(encodeHeader(Opcode.Binary, 65536), new Uint8Array([0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]));
 * ```
 *
 * @param opcode The frame's opcode.
 * @param payloadLength The length of the payload that will follow.
 * @param options FIN (default `true`) and where the bytes go.
 * @returns The header's bytes.
 */
export function encodeHeader(
  opcode: Opcode,
  payloadLength: number,
  options: Pick<EncodeOptions, "fin" | "allocate"> = {},
): Uint8Array {
  const length = frameHeaderLength(payloadLength, false);
  const header = options.allocate ? options.allocate(length) : new Uint8Array(length);
  return writeHeader(header, payloadLength, opcode, options.fin !== false, undefined);
}

// Text is encoded into a reused scratch buffer and copied once into the frame: a new
// buffer per message costs far more than the copy.
const SCRATCH_CHARS = 16 * 1024;
const MAX_HEADER_LENGTH = 14;
const utf8Scratch = new Uint8Array(3 * SCRATCH_CHARS);
const maskKeyScratch = new Uint8Array(4);

// A long text goes straight into its frame's buffer, after room for the longest header:
// first one byte a character, as for ASCII, then room for the worst case of the rest.
function encodeLongText(text: string): { buffer: Uint8Array; written: number } {
  let buffer = new Uint8Array(MAX_HEADER_LENGTH + text.length);
  let { read, written } = textEncoder.encodeInto(text, buffer.subarray(MAX_HEADER_LENGTH));
  if (read < text.length) {
    const grown = new Uint8Array(MAX_HEADER_LENGTH + written + 3 * (text.length - read));
    grown.set(buffer.subarray(0, MAX_HEADER_LENGTH + written));
    written += textEncoder.encodeInto(text.slice(read), grown.subarray(MAX_HEADER_LENGTH + written)).written;
    buffer = grown;
  }
  return { buffer, written };
}

function encodeUtf8(text: string): Uint8Array {
  if (text.length > SCRATCH_CHARS) return textEncoder.encode(text);
  return utf8Scratch.subarray(0, textEncoder.encodeInto(text, utf8Scratch).written);
}

function frameHeaderLength(payloadLength: number, masked: boolean): number {
  return 2 + (payloadLength < 126 ? 0 : payloadLength < 0x10000 ? 2 : 8) + (masked ? 4 : 0);
}

// Fills in the header of `frame`, whose payload is already in place at its end, and masks the payload.
function writeHeader(
  frame: Uint8Array,
  payloadLength: number,
  opcode: number,
  fin: boolean,
  maskKey: Uint8Array | undefined,
): Uint8Array {
  const maskBit = maskKey ? 0x80 : 0;
  frame[0] = (fin ? 0x80 : 0) | opcode;
  let offset = 2;
  if (payloadLength < 126) {
    frame[1] = maskBit | payloadLength;
  } else if (payloadLength < 0x10000) {
    frame[1] = maskBit | 126;
    frame[2] = payloadLength >>> 8;
    frame[3] = payloadLength & 0xff;
    offset = 4;
  } else {
    frame[1] = maskBit | 127;
    const high = Math.floor(payloadLength / 0x100000000);
    const low = payloadLength >>> 0;
    for (let i = 0; i < 4; i++) {
      frame[2 + i] = (high >>> (24 - 8 * i)) & 0xff;
      frame[6 + i] = (low >>> (24 - 8 * i)) & 0xff;
    }
    offset = 10;
  }
  if (maskKey) {
    frame.set(maskKey, offset);
    applyMask(frame.subarray(offset + 4), maskKey);
  }
  return frame;
}

/**
 * Masks or unmasks `data` in place with a 4-byte key (RFC 6455 5.3): XOR on 32-bit
 * words over an aligned view, bytes for the edges. Masking twice restores the data.
 * `offset` is the position of `data[0]` in the payload, for a payload masked piece
 * by piece as it arrives.
 *
 * @example
 * ```ts
 * import { applyMask } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const key = new Uint8Array([0x37, 0xfa, 0x21, 0x3d]);
 * const data = new TextEncoder().encode("Hello");
 * applyMask(data, key);
 * assertEquals(data, new Uint8Array([0x7f, 0x9f, 0x4d, 0x51, 0x58]));
 * applyMask(data.subarray(0, 2), key);
 * applyMask(data.subarray(2), key, 2); // the rest, as if it arrived later
 * assertEquals(new TextDecoder().decode(data), "Hello");
 * ```
 *
 * @param data The bytes to mask, changed in place.
 * @param maskKey The 4-byte masking key.
 * @param offset Where `data` starts in the masked payload (default 0).
 */
export function applyMask(data: Uint8Array, maskKey: Uint8Array, offset = 0): void {
  const length = data.length;
  let index = 0;
  if (length >= 32) {
    // Byte-wise up to a 4-byte boundary of the buffer, so that an Int32Array view fits.
    const lead = (4 - (data.byteOffset & 3)) & 3;
    for (; index < lead; index++) data[index] ^= maskKey[(offset + index) & 3];
    // The key rotated to the first word's position, as one word in the platform's byte order.
    const start = offset + lead;
    const k0 = maskKey[start & 3],
      k1 = maskKey[(start + 1) & 3],
      k2 = maskKey[(start + 2) & 3],
      k3 = maskKey[(start + 3) & 3];
    const key = LITTLE_ENDIAN ? k0 | (k1 << 8) | (k2 << 16) | (k3 << 24) : (k0 << 24) | (k1 << 16) | (k2 << 8) | k3;
    const words = new Int32Array(data.buffer, data.byteOffset + lead, (length - lead) >>> 2);
    const count = words.length;
    // Unrolled by 8: V8 runs this about twice as fast as one word an iteration.
    const unrolled = count & ~7;
    let w = 0;
    for (; w < unrolled; w += 8) {
      words[w] ^= key;
      words[w + 1] ^= key;
      words[w + 2] ^= key;
      words[w + 3] ^= key;
      words[w + 4] ^= key;
      words[w + 5] ^= key;
      words[w + 6] ^= key;
      words[w + 7] ^= key;
    }
    for (; w < count; w++) words[w] ^= key;
    index = lead + count * 4;
  }
  for (; index < length; index++) data[index] ^= maskKey[(offset + index) & 3];
}

/**
 * Decodes UTF-8 strictly (RFC 6455 8.1): invalid text throws {@linkcode FrameError}
 * with close code 1007.
 *
 * @example
 * ```ts
 * import { decodeText } from "./frame.ts";
 * import { FrameError } from "./errors.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * assertEquals(decodeText(new Uint8Array([0xce, 0xba])), "κ");
 * const error = assertThrows(() => decodeText(new Uint8Array([0xce])), FrameError); // a truncated sequence
 * assertEquals(error.closeCode, 1007);
 * ```
 *
 * @param bytes UTF-8 bytes.
 * @returns The text.
 */
export function decodeText(bytes: Uint8Array): string {
  return decodeUtf8(bytes);
}

/**
 * Builds a close frame's payload: the 2-byte code, then the UTF-8 reason (RFC 6455
 * 5.5.1). With no code the payload is empty. Throws `RangeError` for a code that may
 * not be sent or a reason over 123 bytes.
 *
 * @example
 * ```ts
 * import { encodeClosePayload, encodeFrame, Opcode } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(encodeClosePayload(1000, "bye"), new Uint8Array([0x03, 0xe8, 0x62, 0x79, 0x65]));
 * const close = encodeFrame(Opcode.Close, encodeClosePayload(1000, "bye"));
 * assertEquals(close, new Uint8Array([0x88, 5, 0x03, 0xe8, 0x62, 0x79, 0x65]));
 * ```
 *
 * @param code The close code, or undefined for an empty payload.
 * @param reason A short UTF-8 reason.
 * @returns The payload bytes.
 */
export function encodeClosePayload(code?: number, reason = ""): Uint8Array {
  if (code === undefined) {
    if (reason !== "") throw new RangeError("A close reason needs a close code");
    return new Uint8Array(0);
  }
  if (!isValidCloseCode(code)) throw new RangeError(`Close code ${code} may not be sent`);
  const reasonBytes = textEncoder.encode(reason);
  if (reasonBytes.length > 123) {
    throw new RangeError(`Close reason must be at most 123 bytes, got ${reasonBytes.length}`);
  }
  const payload = new Uint8Array(2 + reasonBytes.length);
  payload[0] = code >>> 8;
  payload[1] = code & 0xff;
  payload.set(reasonBytes, 2);
  return payload;
}

/**
 * What a close frame says: its code (1005 when the payload is empty) and reason.
 *
 * @example
 * ```ts
 * import { decodeClosePayload } from "./frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(decodeClosePayload(new Uint8Array([0x03, 0xe8, 0x6f, 0x6b])), { code: 1000, reason: "ok" });
 * ```
 */
export interface ClosePayload {
  /** The close code; 1005 (no status) when the frame had none. */
  code: number;
  /** The reason, possibly empty. */
  reason: string;
}

/**
 * Parses and checks a close frame's payload (RFC 6455 5.5.1, 7.4): a 1-byte payload
 * or a code that may not be sent throws {@linkcode FrameError} with 1002, a reason
 * that is not UTF-8 with 1007.
 *
 * @example
 * ```ts
 * import { decodeClosePayload } from "./frame.ts";
 * import { FrameError } from "./errors.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * assertEquals(decodeClosePayload(new Uint8Array([])), { code: 1005, reason: "" });
 * // 1005 is local only: a peer may not send it.
 * const error = assertThrows(() => decodeClosePayload(new Uint8Array([0x03, 0xed])), FrameError);
 * assertEquals(error.closeCode, 1002);
 * ```
 *
 * @param payload The close frame's unmasked payload.
 * @returns The code and reason.
 */
export function decodeClosePayload(payload: Uint8Array): ClosePayload {
  if (payload.length === 0) return { code: CloseCode.NoStatusReceived, reason: "" };
  if (payload.length === 1) {
    throw new FrameError("Close frame payload must be empty or at least 2 bytes, got 1", {
      code: "WS_ERR_INVALID_CLOSE_PAYLOAD",
    });
  }
  const code = (payload[0] << 8) | payload[1];
  if (!isValidCloseCode(code)) {
    throw new FrameError(`Close code ${code} is not valid on the wire`, {
      code: "WS_ERR_INVALID_CLOSE_CODE",
    });
  }
  return { code, reason: decodeText(payload.subarray(2)) };
}
