// The rules of a WebSocket connection without I/O (RFC 6455), in the manner of
// python-websockets' and wsproto's protocol objects: the shell reads into
// `readTarget()`, reports the count with `receive()`, takes the events, and writes
// what the outbox hands out. Every rule here is testable with bytes alone.

import {
  checkResponse,
  checkUpgrade,
  type ExpectedAnswer,
  type HandshakeRequest,
  type HttpResponse,
  httpResponse,
  isUpgradeAttempt,
  parseRequestHead,
  switchingProtocols,
} from "./_http.ts";
import { MessageAssembler } from "./_assembler.ts";
import {
  acceptAnswer,
  deflateOffer,
  negotiate,
  PerMessageDeflate,
  resolveCompression,
  type ResolvedCompression,
} from "./_deflate.ts";
import {
  type DataFrame,
  encodeControl,
  encodeMaskedMessage,
  encodeMessage,
  giveBuffer,
  Outbox,
  takeBuffer,
} from "./_outbox.ts";
import { unmaskAscii } from "./_utf8.ts";
import { ProtocolError, WebSocketError } from "./errors.ts";
import {
  applyMask,
  CloseCode,
  decodeClosePayload,
  decodeHeader,
  encodeClosePayload,
  type FrameHeader,
  Opcode,
} from "./frame.ts";
import type { ConnectionState, ProtocolOptions } from "./protocol.ts";

/** Every option, resolved. */
export type ResolvedOptions =
  & Required<Omit<ProtocolOptions, "allowedOrigins" | "compression">>
  & Pick<ProtocolOptions, "allowedOrigins">
  & { compression: ResolvedCompression | undefined };

const DEFAULTS: Required<Omit<ProtocolOptions, "allowedOrigins" | "compression">> = {
  maxPayload: 16 * 1024 * 1024,
  maxFragments: 1024 * 1024,
  maxHeaderSize: 16 * 1024,
  maxHeaders: 100,
  handshakeTimeout: 10_000,
  closeTimeout: 5_000,
  maxBackpressure: 16 * 1024 * 1024,
  backpressurePolicy: "close",
  pingInterval: 30_000,
  idleTimeout: 60_000,
};

/** Fills in the defaults of options left out (or `undefined`). */
export function resolveOptions(options: ProtocolOptions): ResolvedOptions {
  // A loop, not entries/filter/fromEntries: this runs for every connection (5 µs of a handshake).
  const resolved: Record<string, unknown> = { ...DEFAULTS };
  for (const key of Object.keys(options)) {
    const value = options[key as keyof ProtocolOptions];
    if (value !== undefined) resolved[key] = value;
  }
  resolved.compression = resolveCompression(options.compression);
  return resolved as ResolvedOptions;
}

/** What the core has to tell the shell. */
export type CoreEvent =
  /** An opening handshake that passed every check: answer with `accept()` or `reject()`. */
  | { type: "upgrade"; head: string; request: HandshakeRequest; key: string; offered: string[] }
  /** A plain HTTP request (no WebSocket headers): answer with `respond()` or `reject()`. */
  | { type: "http"; head: string; request: HandshakeRequest }
  | { type: "message"; data: string | Uint8Array }
  | { type: "ping"; data: Uint8Array }
  | { type: "pong"; data: Uint8Array }
  /** The peer's close frame arrived. */
  | { type: "close"; code: number; reason: string }
  /** An error that is not a protocol violation: the connection was failed with 1011. */
  | { type: "error"; error: unknown };

// The read buffer: 1 KiB, doubled while reads fill it (up to maxHeaderSize for the
// request head, then up to 64 KiB and the longest header, so that a 64 KiB message
// comes in one read) and given back once they do not. Idle connections hold little; a
// frame larger than the buffer is read straight into a buffer of its own.
const READ_BUFFER_MIN = 1024;
const READ_BUFFER_MAX = 64 * 1024 + 14;
// Payload buffers are allocated at their frame's declared length once its header has
// arrived (one allocation, no copy), as long as all connections together have at most
// RESERVE_LIMIT bytes allocated ahead of their arrival; past it a payload buffer grows
// with the bytes that arrive, so that declared lengths alone cannot take memory.
const RESERVE_LIMIT = 64 * 1024 * 1024;
let reserved = 0;

/** Bytes allocated, process-wide, for payloads declared and not arrived yet (at most 64 MiB). */
export function reservedBytes(): number {
  return reserved;
}

const latin1 = new TextDecoder("latin1");
const encoder = new TextEncoder();

/** Which end of the connection we are: a server reads masked frames, a client unmasked ones (RFC 6455 5.1). */
export type Role = "server" | "client";

/** One connection's protocol state. */
export class Core {
  readonly outbox: Outbox;
  readonly options: ResolvedOptions;
  /** The closing handshake's code: the peer's, else the one sent, else 1006 (abnormal). */
  closeCode: number = CloseCode.AbnormalClosure;
  closeReason = "";
  /** The subprotocol agreed on in the handshake, or "". */
  protocol = "";
  /** Why a client's handshake failed, once it has. */
  handshakeError: WebSocketError | undefined;
  /** Milliseconds between heartbeat decisions: `tick()` is meant to run this often. */
  readonly heartbeatPeriod: number;

  #state: ConnectionState = "connecting";
  #opened = false; // the handshake completed, whatever happened since
  #reading = true; // false once frames are no longer taken: closed, failed, or refused
  #answering = false; // the request head is in; waiting for accept(), reject() or respond()
  #held = false; // a close frame waits in the buffer for the messages before it to be taken
  #events: CoreEvent[] = [];
  #assembler: MessageAssembler;
  /** Whether we are the client end (RFC 6455 5.1: we mask, and wait for the server to close TCP). */
  readonly client: boolean;
  // A client's request, until the answer is in: what the answer must match.
  #expected: ExpectedAnswer | undefined;
  #lastSeen = 0;
  #lastPing = -Infinity;
  // RFC 7692: the client's Sec-WebSocket-Extensions until accept(), then the extension in force.
  #extensionOffer: string | null = null;
  #deflate: PerMessageDeflate | undefined;

  // Read buffer: bytes [#start, #end) are received and not yet parsed.
  #buffer = new Uint8Array(READ_BUFFER_MIN);
  #start = 0;
  #end = 0;
  #searchFrom = 0; // where to look for the end of the request head
  #readFilled = false;
  #readSinceEmpty = 0; // bytes read since the buffer was last parsed to its end
  // The frame too large for the read buffer whose payload is read into a buffer of its own.
  #large: LargeFrame | undefined;

  constructor(options: ResolvedOptions, role: Role = "server") {
    this.options = options;
    this.client = role === "client";
    this.outbox = new Outbox(options.maxBackpressure, this.client);
    this.#assembler = new MessageAssembler(options.maxPayload, options.maxFragments);
    const { pingInterval, idleTimeout } = options;
    this.heartbeatPeriod = Math.min(pingInterval || Infinity, idleTimeout || Infinity);
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /**
   * Whether the opening handshake completed. A client's answer may come with frames
   * that close or fail the connection in the same read: it opened all the same.
   */
  get opened(): boolean {
    return this.#opened;
  }

  /** Whether frames are still taken from the peer. */
  get reading(): boolean {
    return this.#reading && !this.#answering;
  }

  /**
   * The events since the last call. Call it until it returns none: a close frame
   * waits until the messages before it are taken, so that they can still be answered.
   */
  takeEvents(): CoreEvent[] {
    if (this.#events.length === 0 && this.#held) {
      this.#held = false;
      this.#parse();
    }
    const events = this.#events;
    if (events.length > 0) this.#events = [];
    return events;
  }

  // --- Reading ---

  /** Where the next bytes read go: the free end of the read buffer, or the rest of a large frame. */
  readTarget(): Uint8Array {
    const large = this.#large;
    if (large) return large.payload.subarray(large.received);
    this.#makeRoom();
    return this.#buffer.subarray(this.#end);
  }

  /** `count` bytes were read into the last `readTarget()`, at time `now` (ms). */
  receive(count: number, now: number): void {
    this.#readSinceEmpty += count;
    if (this.#large) {
      this.#large.received += count;
    } else {
      this.#end += count;
      this.#readFilled = count === this.#buffer.length - (this.#end - count);
    }
    this.#lastSeen = now;
    this.#parse();
  }

  /** Bytes received, copied in: for tests and for callers with their own buffers. */
  receiveData(data: Uint8Array, now = 0): void {
    for (let offset = 0; offset < data.length;) {
      // Once no more frames are taken, what arrives is dropped, as the shell stops reading.
      if (this.#state === "closed") return;
      const target = this.readTarget();
      if (target.length === 0) throw new RangeError("No room for more bytes until the handshake is answered");
      const count = Math.min(target.length, data.length - offset);
      target.set(data.subarray(offset, offset + count));
      offset += count;
      this.receive(count, now);
    }
  }

  /** The peer closed TCP (RFC 6455 7.1.5: without a close frame the code is 1006). */
  receiveEnd(): void {
    this.#reading = false;
    this.#state = "closed";
  }

  // Moves unparsed bytes to the front of the read buffer, growing it first where it is
  // full: the request head up to maxHeaderSize, frames up to READ_BUFFER_MAX while
  // reads keep filling it.
  #makeRoom(): void {
    const pending = this.#buffer.subarray(this.#start, this.#end);
    let size = this.#buffer.length;
    if (this.#state === "connecting") {
      if (pending.length === size) size = Math.min(size * 2, this.options.maxHeaderSize);
    } else if (this.#readFilled || pending.length === size) {
      size = Math.min(size * 2, READ_BUFFER_MAX);
    }
    if (this.#start === 0 && size === this.#buffer.length) return;
    const buffer = size === this.#buffer.length ? this.#buffer : new Uint8Array(size);
    buffer.set(pending);
    this.#buffer = buffer;
    this.#searchFrom -= this.#start;
    this.#start = 0;
    this.#end = pending.length;
  }

  // The one catch site: a protocol violation fails the connection with its close code
  // (or, during the handshake, its HTTP status); anything else is a bug, 1011 or 500.
  #parse(): void {
    try {
      if (this.#state === "connecting") this.#parseHead();
      // A client's answer may come with the first frames.
      if (this.#state !== "connecting" && this.#reading) this.#parseFrames();
    } catch (error) {
      this.#fail(error);
    }
    if (this.#start === this.#end && this.#state !== "connecting" && this.#large === undefined) {
      // Give back a buffer grown for a burst (or for the request head) once what was read
      // since it was last empty is small: a frame that came in two reads keeps it.
      if (this.#buffer.length > READ_BUFFER_MIN && this.#readSinceEmpty * 4 <= this.#buffer.length) {
        this.#buffer = new Uint8Array(READ_BUFFER_MIN);
      }
      this.#start = this.#end = this.#readSinceEmpty = 0;
    }
  }

  // --- Opening handshake (RFC 6455 4.2) ---

  #parseHead(): void {
    if (this.#answering) return;
    const { maxHeaderSize, maxHeaders } = this.options;
    const buffer = this.#buffer;
    let headEnd = -1;
    for (let i = Math.max(0, this.#searchFrom); i + 3 < this.#end; i++) {
      if (buffer[i] === 13 && buffer[i + 1] === 10 && buffer[i + 2] === 13 && buffer[i + 3] === 10) {
        headEnd = i;
        break;
      }
    }
    if (headEnd < 0) {
      this.#searchFrom = Math.max(0, this.#end - 3);
      if (this.#end >= maxHeaderSize) throw headTooLarge(maxHeaderSize, this.client);
      return;
    }
    if (headEnd + 4 > maxHeaderSize) throw headTooLarge(maxHeaderSize, this.client);
    const head = latin1.decode(buffer.subarray(0, headEnd));
    this.#start = headEnd + 4;
    if (this.#expected !== undefined) {
      const answer = checkResponse(head, this.#expected);
      this.#expected = undefined;
      if (answer.extensions !== null) {
        this.#deflate = new PerMessageDeflate(acceptAnswer(answer.extensions), this.options.compression!, true);
        this.#assembler.inflater = this.#deflate;
      }
      this.protocol = answer.protocol;
      return this.#open(this.#lastSeen);
    }
    this.#answering = true;
    const request = parseRequestHead(head, maxHeaders);
    if (!isUpgradeAttempt(request.headers)) {
      this.#events.push({ type: "http", head, request });
      return;
    }
    const { key, offered } = checkUpgrade(request, this.options.allowedOrigins);
    this.#extensionOffer = request.headers.get("sec-websocket-extensions");
    this.#events.push({ type: "upgrade", head, request, key, offered });
  }

  /** Completes the handshake with 101 (`accept` is the key's `Sec-WebSocket-Accept`); frames already in are parsed. */
  accept(accept: string, protocol: string, now: number): void {
    if (this.#state !== "connecting" || !this.#answering) throw new Error(`accept() while ${this.#state}`);
    this.#deflate = negotiate(this.#extensionOffer, this.options.compression);
    this.#extensionOffer = null;
    this.#assembler.inflater = this.#deflate;
    this.outbox.pushControl(switchingProtocols(accept, protocol, this.#deflate?.response));
    this.protocol = protocol;
    this.#answering = false;
    this.#open(now);
    this.#parse();
  }

  #open(now: number): void {
    this.#state = "open";
    this.#opened = true;
    this.#lastSeen = this.#lastPing = now; // the first ping is due pingInterval after the open
  }

  /**
   * A client's `Sec-WebSocket-Extensions` offer: permessage-deflate when the
   * `compression` option is on (and zlib works here), otherwise `undefined`.
   */
  extensionOffer(): string | undefined {
    return this.options.compression && deflateOffer(this.options.compression.mode);
  }

  /**
   * Starts a client's handshake (RFC 6455 4.1): queues the request head; the answer
   * must match `expected` (the accept key, at most one of the subprotocols, and an
   * extension only if one was offered). Frames after it are parsed.
   */
  connect(requestHead: Uint8Array, expected: ExpectedAnswer): void {
    if (!this.client || this.#state !== "connecting") throw new Error(`connect() on a ${this.#state} server core`);
    this.#expected = expected;
    this.outbox.pushControl(requestHead);
  }

  /** Refuses the handshake with the error's HTTP status. */
  reject(error: WebSocketError): void {
    if (this.#state !== "connecting") return;
    this.outbox.pushLast(httpResponse({ status: error.status, body: error.message }));
    this.#stop();
  }

  /** Answers a plain HTTP request. */
  respond(response: HttpResponse): void {
    if (this.#state !== "connecting") return;
    this.outbox.pushLast(httpResponse(response));
    this.#stop();
  }

  // --- Frames ---

  #parseFrames(): void {
    if (this.#large && !this.#receiveLarge(this.#large)) return;
    const masked = !this.client;
    while (this.#reading) {
      const buffered = this.#buffer.subarray(this.#start, this.#end);
      // A fragment may not take its message over the limit.
      const header = decodeHeader(buffered, {
        masked,
        maxPayload: this.#assembler.room,
        rsv1: this.#deflate !== undefined,
      });
      if (header === null) return;
      const { headerLength, payloadLength, opcode } = header;
      // Messages that came before a close may still be answered: they are taken first.
      if (opcode === Opcode.Close && this.#events.length > 0) {
        this.#held = true;
        return;
      }
      const frameLength = headerLength + payloadLength;
      if (buffered.length < frameLength) {
        if (frameLength > this.#buffer.length) {
          // A read filled with the start of a frame that no read buffer holds is no
          // reason to grow it: the frame's payload is read into a buffer of its own.
          if (frameLength > READ_BUFFER_MAX) this.#readFilled = false;
          this.#startLarge(header);
        }
        return;
      }
      const payload = buffered.subarray(headerLength, frameLength);
      // RFC 6455 5.1: only a client's frames are masked; a server's carry no key.
      if (header.masked) applyMask(payload, buffered.subarray(headerLength - 4, headerLength));
      this.#start += frameLength;
      if (opcode >= 0x8) {
        this.#control(opcode, payload);
      } else {
        this.#assembler.begin(opcode, header.fin, payloadLength, header.rsv1);
        this.#deliver(this.#assembler.end(payload, false));
      }
    }
  }

  // Moves the buffered start of a large frame's payload into a buffer of its own.
  #startLarge(header: FrameHeader): void {
    this.#assembler.begin(header.opcode, header.fin, header.payloadLength, header.rsv1);
    const payloadStart = this.#start + header.headerLength;
    const maskKey = header.masked ? this.#buffer.slice(payloadStart - 4, payloadStart) : undefined;
    const arrived = this.#buffer.subarray(payloadStart, this.#end);
    const full = fitsReserve(header.payloadLength, arrived.length);
    const capacity = full ? header.payloadLength : growthCapacity(header.payloadLength, arrived.length, 0);
    // A text or compressed payload is garbage once decoded: its buffer comes from the pool
    // of long texts and goes back to it (a fresh one is zeroed and faulted in page by page).
    const streamed = this.#assembler.streamed;
    const payload = streamed ? takeBuffer(capacity) : new Uint8Array(capacity);
    payload.set(arrived);
    this.#large = { header, maskKey, streamed, payload, received: arrived.length, unmasked: 0, full, reserved: 0 };
    this.#start = this.#end = 0;
    this.#receiveLarge(this.#large);
  }

  // Unmasks (and for text, decodes) what the last read brought of the large frame, and
  // handles the frame once it is whole; false while it is not.
  #receiveLarge(large: LargeFrame): boolean {
    const piece = large.payload.subarray(large.unmasked, large.received);
    let ascii = false;
    if (large.maskKey) {
      // A streamed piece is unmasked and checked for ASCII in one pass.
      if (large.streamed) ascii = unmaskAscii(piece, large.maskKey, large.unmasked);
      else applyMask(piece, large.maskKey, large.unmasked);
    }
    large.unmasked = large.received;
    // RFC 6455 8.1: invalid text fails as soon as it has arrived, not when the frame ends.
    if (large.streamed) this.#assembler.piece(piece, ascii);
    const { header } = large;
    if (large.received === large.payload.length && large.received < header.payloadLength) {
      large.full = fitsReserve(header.payloadLength, large.received);
      const grown = new Uint8Array(
        large.full ? header.payloadLength : growthCapacity(header.payloadLength, large.received, large.payload.length),
      );
      grown.set(large.payload);
      large.payload = grown;
    }
    reserve(large);
    if (large.received < header.payloadLength) return false;
    this.#large = undefined;
    this.#deliver(this.#assembler.endLarge(large.payload));
    if (large.streamed) giveBuffer(large.payload);
    return true;
  }

  #deliver(message: string | Uint8Array | undefined): void {
    if (message !== undefined) this.#events.push({ type: "message", data: message });
  }

  #control(opcode: number, payload: Uint8Array): void {
    if (opcode === Opcode.Close) return this.#receiveClose(payload);
    // The payload is a view into the read buffer, which is reused.
    const data = payload.slice();
    if (opcode === Opcode.Ping) {
      // RFC 6455 5.5.2: answer with a pong carrying the same data, unless closing.
      this.outbox.pushPong(payload);
      this.#events.push({ type: "ping", data });
    } else {
      // RFC 6455 5.5.3: a pong, solicited or not, only shows the peer is alive.
      this.#events.push({ type: "pong", data });
    }
  }

  // RFC 6455 5.5.1: answer a close with a close echoing its code, then close TCP.
  #receiveClose(payload: Uint8Array): void {
    const { code, reason } = decodeClosePayload(payload);
    this.closeCode = code;
    this.closeReason = reason;
    if (!this.outbox.closed) {
      const echo = code === CloseCode.NoStatusReceived ? EMPTY : payload.subarray(0, 2);
      this.outbox.pushLast(this.#frame(Opcode.Close, echo));
    }
    this.#stop();
    this.#events.push({ type: "close", code, reason });
  }

  // RFC 6455 7.1.7: fail the connection: send a close with the error's code (during the
  // handshake, an HTTP status), and take no more frames.
  #fail(error: unknown): void {
    const known = error instanceof WebSocketError;
    if (!known) this.#events.push({ type: "error", error });
    const failure = known ? error : new ProtocolError("Internal error", {
      closeCode: CloseCode.InternalError,
      status: 500,
      code: "WS_ERR_INTERNAL",
      cause: error,
    });
    if (this.#state === "connecting") {
      if (!this.client) return this.reject(failure);
      this.handshakeError = failure;
      return this.#stop();
    }
    if ((this.#state === "open" || this.#state === "closing") && !this.outbox.closed) {
      this.closeCode = failure.closeCode;
      this.closeReason = failure.message;
      this.outbox.pushLast(this.#frame(Opcode.Close, closePayload(failure.closeCode, failure.message)));
    }
    this.#stop();
  }

  // A control frame, masked when we are the client (RFC 6455 5.3).
  #frame(opcode: Opcode, payload: Uint8Array): Uint8Array {
    return encodeControl(opcode, payload, this.client);
  }

  #stop(): void {
    this.#reading = false;
    this.#answering = false;
    this.#state = "closed";
  }

  // --- Sending ---

  /**
   * The data frame for a message: masked when we are the client (RFC 6455 5.3), and
   * compressed if permessage-deflate is in force and the message is long enough.
   */
  encode(msg: string | Uint8Array): DataFrame {
    if (this.#deflate !== undefined) return this.#deflate.encode(msg);
    return this.client ? encodeMaskedMessage(msg) : encodeMessage(msg);
  }

  /**
   * Connections with equal keys encode `msg` to the same bytes (see `encode`);
   * `undefined` when this one's are its own: masked, or from a compressor that keeps
   * a window (RFC 7692 7.1.1).
   */
  shareKey(msg: string | Uint8Array): string | undefined {
    if (this.client) return undefined;
    return this.#deflate === undefined ? "" : this.#deflate.shareKey(msg);
  }

  /** Queues a data frame; the backpressure policy applies past `maxBackpressure`. False if not queued. */
  send(frame: DataFrame): boolean {
    if (this.#state !== "open") return false;
    const queued = this.outbox.push(frame);
    if (queued === "over-limit" && this.options.backpressurePolicy === "close") {
      this.close(CloseCode.PolicyViolation, "Send queue over its limit");
    }
    return queued === "queued";
  }

  /** Queues a ping; false unless open. */
  ping(data: Uint8Array): boolean {
    if (this.#state !== "open") return false;
    if (data.length > 125) throw new RangeError(`Ping data must be at most 125 bytes, got ${data.length}`);
    return this.outbox.pushControl(this.#frame(Opcode.Ping, data));
  }

  /** Starts the closing handshake (RFC 6455 7.1.2): our close frame after what is queued. */
  close(code: number, reason: string): void {
    const payload = encodeClosePayload(code, reason);
    if (this.#state === "connecting") {
      this.outbox.discard();
      this.#stop();
    } else if (this.#state === "open") {
      this.#state = "closing";
      this.closeCode = code;
      this.closeReason = reason;
      this.outbox.pushLast(this.#frame(Opcode.Close, payload));
    }
  }

  /**
   * The heartbeat's decision at time `now`: "idle" when the peer was silent for
   * `idleTimeout` (the shell closes with 1001), "ping" when one is due, else nothing.
   */
  tick(now: number): "idle" | "ping" | undefined {
    if (this.#state !== "open") return undefined;
    const { pingInterval, idleTimeout } = this.options;
    if (idleTimeout > 0 && now - this.#lastSeen >= idleTimeout) return "idle";
    if (pingInterval > 0 && now - this.#lastPing >= pingInterval - this.heartbeatPeriod / 2) {
      this.#lastPing = now;
      return "ping";
    }
    return undefined;
  }

  /** The connection is gone: gives back the room its large frame held. */
  release(): void {
    this.#stop();
    this.#deflate?.close();
    if (this.#large) {
      this.#large.payload = this.#large.payload.subarray(0, this.#large.received);
      reserve(this.#large);
      this.#large = undefined;
    }
  }
}

const EMPTY = new Uint8Array(0);

// A frame whose payload is read into a buffer of its own, and how much has arrived.
interface LargeFrame {
  header: FrameHeader;
  /** The masking key of a client's frame; none for a server's. */
  maskKey: Uint8Array | undefined;
  /** Whether the payload goes to the assembler as it arrives (text, or compressed). */
  streamed: boolean;
  /** The payload's buffer: its declared length, or less while it grows with arrivals. */
  payload: Uint8Array;
  received: number;
  unmasked: number;
  /** Whether `payload` was allocated at its declared length, its room taken from the reserve. */
  full: boolean;
  /** Bytes of RESERVE_LIMIT this frame holds: room in a full `payload` not filled yet. */
  reserved: number;
}

// Whether the reserve has room for the rest of a `length`-byte payload of which
// `received` bytes have arrived: then its buffer is allocated at its declared length.
function fitsReserve(length: number, received: number): boolean {
  return reserved + length - received <= RESERVE_LIMIT;
}

// Past the reserve, a payload buffer holding `current` bytes grows to twice that (and
// always by room for a read): its room is at most what has arrived, or 64 KiB.
function growthCapacity(length: number, received: number, current: number): number {
  return Math.min(length, Math.max(2 * current, received + READ_BUFFER_MAX));
}

// Updates the reserve for the room left in a large frame's full-length buffer.
function reserve(large: LargeFrame): void {
  const room = large.full ? large.payload.length - large.received : 0;
  reserved += room - large.reserved;
  large.reserved = room;
}

// A server answers 431; a client's error is about the answer it read, whose status it never got to.
function headTooLarge(limit: number, client: boolean): ProtocolError {
  if (client) return new ProtocolError(`Handshake answer exceeds ${limit} bytes`, { code: "WS_ERR_HEAD_TOO_LARGE" });
  return new ProtocolError(`Request head exceeds ${limit} bytes`, { status: 431, code: "WS_ERR_HEAD_TOO_LARGE" });
}

// A close payload whose reason is cut to the 123 bytes a close frame holds.
function closePayload(code: number, reason: string): Uint8Array {
  const bytes = encoder.encode(reason);
  if (bytes.length <= 123) return encodeClosePayload(code, reason);
  const cut = new TextDecoder().decode(bytes.subarray(0, 123)).replace(/\uFFFD$/, "");
  return encodeClosePayload(code, cut);
}
