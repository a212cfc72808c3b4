// The send side of a connection, without I/O: the queue of frames not yet written,
// the backpressure limit, the pong policy, nothing after the close frame, and the
// joining of small frames into few writes. The shell asks `next()` for bytes, writes
// them all, then calls `written()`; it writes one piece at a time.

import { encodeFrame, encodeHeader, Opcode } from "./frame.ts";

// Small frames queued together are joined into writes of at most 64 KiB and a header
// (so that a 64 KiB payload goes out with its header in one write, not as a 10-byte
// write and a packet of its own before it). Larger joins win a little throughput under
// overload and cost fairness: connections that got big writes got more, and p99
// latency doubled (64 connections x 16 KiB x 32 in flight).
const COALESCE_LIMIT = 64 * 1024 + 14;
// Buffers for those joins, lent to busy connections: a fresh one costs a page fault
// every 4 KiB as it is first written; the pool holds at most 4 MiB.
const SPARE_WRITE_BUFFERS = 64;
const spareWriteBuffers: Uint8Array[] = [];
// Outgoing frames are cut from shared slabs: in Deno a new ArrayBuffer costs about a
// microsecond, a view into one a few nanoseconds. A slab is never reused, only dropped
// once its frames are written; frames never leave the module.
const SLAB_SIZE = 64 * 1024;
const SLAB_CUT_LIMIT = 4 * 1024;
let slab = new Uint8Array(0);
let slabOffset = 0;
// From this size a payload is queued by reference after its header, not copied into a frame.
const LARGE_PAYLOAD = 4 * 1024;

/** Cuts `length` bytes from the current slab (a fresh buffer past SLAB_CUT_LIMIT). */
export function allocate(length: number): Uint8Array {
  if (length > SLAB_CUT_LIMIT) return new Uint8Array(length);
  if (slabOffset + length > slab.length) {
    slab = new Uint8Array(SLAB_SIZE);
    slabOffset = 0;
  }
  return slab.subarray(slabOffset, slabOffset += length);
}

/** Encoding options that cut frames from the slab. */
export const pooled = { allocate };

// Mask keys for a client's frames (RFC 6455 5.3: fresh and unpredictable for each
// frame), drawn from crypto.getRandomValues 1,024 at a time: one call per frame costs
// more than the rest of encoding a small frame.
const maskKeys = new Uint8Array(4096);
let maskKeyOffset = maskKeys.length;

/** A fresh random masking key (a view, valid until the next call's batch refills). */
export function nextMaskKey(): Uint8Array {
  if (maskKeyOffset === maskKeys.length) {
    crypto.getRandomValues(maskKeys);
    maskKeyOffset = 0;
  }
  return maskKeys.subarray(maskKeyOffset, maskKeyOffset += 4);
}

/** Encodes a frame, masked with a fresh key when `mask` (a client's frames). */
export function encodeControl(opcode: Opcode, payload: Uint8Array, mask: boolean): Uint8Array {
  return encodeFrame(opcode, payload, mask ? { allocate, maskKey: nextMaskKey() } : pooled);
}

/** Encodes a client's data frame: masked with a fresh key, so never shared between connections. */
export function encodeMaskedMessage(msg: string | Uint8Array): Uint8Array {
  const opcode = typeof msg === "string" ? Opcode.Text : Opcode.Binary;
  return encodeFrame(opcode, msg, {
    maskKey: nextMaskKey(),
    allocate: msg.length < LARGE_PAYLOAD ? allocate : undefined,
  });
}

/** A data frame to queue: whole, or a header followed by a large payload sent as it is. */
export type DataFrame = Uint8Array | [Uint8Array, Uint8Array];

/**
 * Encodes an unmasked data frame: a small one is cut from a slab, a long text is
 * encoded into a frame of its own, and a large binary payload stays where it is,
 * queued after its header (up to 64 KiB the writer joins the two; larger ones are
 * written as they are).
 */
export function encodeMessage(msg: string | Uint8Array): DataFrame {
  if (typeof msg === "string") return encodeFrame(Opcode.Text, msg, msg.length < LARGE_PAYLOAD ? pooled : undefined);
  if (msg.length < LARGE_PAYLOAD) return encodeFrame(Opcode.Binary, msg, pooled);
  return [encodeHeader(Opcode.Binary, msg.length, pooled), msg];
}

/** What `push` did with a data frame. */
export type Queued = "queued" | "over-limit" | "closed";

/** The queue of a connection's outgoing frames. */
export class Outbox {
  readonly #maxBackpressure: number;
  readonly #mask: boolean;
  #queue: Uint8Array[] = [];
  #head = 0; // frames before it are taken
  #queuedBytes = 0;
  #queuedPong = -1; // index in #queue of a pong not yet taken, or -1
  #closed = false;
  #joined: Uint8Array | undefined;
  #taking = 0; // frames in the piece handed out by next() and not yet written
  /** Frames accepted so far, and frames written so far (a replaced pong counts as written). */
  queuedFrames = 0;
  writtenFrames = 0;

  /** `mask`: frames made here (pongs) are masked, as a client's must be. */
  constructor(maxBackpressure: number, mask = false) {
    this.#maxBackpressure = maxBackpressure;
    this.#mask = mask;
  }

  /** Bytes queued and not yet written. */
  get bufferedAmount(): number {
    return this.#queuedBytes;
  }

  /** Whether the close frame is queued: nothing more goes in. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether there is something to write. */
  get pending(): boolean {
    return this.#head < this.#queue.length;
  }

  /**
   * Queues a data frame within the backpressure limit. A frame larger than the limit
   * still goes in when nothing is queued, so that any message of `maxPayload` can be sent.
   */
  push(frame: DataFrame): Queued {
    if (this.#closed) return "closed";
    const length = Array.isArray(frame) ? frame[0].length + frame[1].length : frame.length;
    if (this.#queuedBytes > 0 && this.#queuedBytes + length > this.#maxBackpressure) return "over-limit";
    if (Array.isArray(frame)) {
      this.#add(frame[0]);
      this.#add(frame[1]);
    } else {
      this.#add(frame);
    }
    return "queued";
  }

  /** Queues a control frame (ping), outside the backpressure limit. */
  pushControl(frame: Uint8Array): boolean {
    if (this.#closed) return false;
    this.#add(frame);
    return true;
  }

  /**
   * RFC 6455 5.5.2: every ping gets its pong, in order. RFC 6455 5.5.3 allows answering
   * only the most recent one: past the backpressure limit a pong still queued is
   * replaced by the new one, so a peer that pings without reading cannot grow the queue.
   */
  pushPong(payload: Uint8Array): void {
    if (this.#closed) return;
    const pong = encodeControl(Opcode.Pong, payload, this.#mask);
    if (this.#queuedPong >= this.#head && this.#queuedBytes + pong.length > this.#maxBackpressure) {
      this.#queuedBytes += pong.length - this.#queue[this.#queuedPong].length;
      this.#queue[this.#queuedPong] = pong;
      return;
    }
    this.#queuedPong = this.#queue.length;
    this.#add(pong);
  }

  /** Queues the last bytes: the close frame (RFC 6455 5.5.1: nothing after it) or an HTTP answer. */
  pushLast(bytes: Uint8Array): void {
    if (this.#closed) return;
    this.#add(bytes);
    this.#closed = true;
  }

  /**
   * The next bytes to write: a run of small frames joined, or one frame as it is.
   * The bytes stay valid until `written()`; write all of them, then call it.
   */
  next(): Uint8Array | undefined {
    const queue = this.#queue;
    const start = this.#head;
    if (start >= queue.length) return undefined;
    let length = queue[start].length;
    let end = start + 1;
    for (; end < queue.length && length + queue[end].length <= COALESCE_LIMIT; end++) length += queue[end].length;
    this.#head = end;
    this.#taking = end - start;
    if (end - start === 1) return queue[start];
    // Small runs go in a slab; larger ones in a buffer lent to this connection while busy.
    if (length > SLAB_CUT_LIMIT) this.#joined ??= spareWriteBuffers.pop() ?? new Uint8Array(COALESCE_LIMIT);
    const run = length > SLAB_CUT_LIMIT ? this.#joined!.subarray(0, length) : allocate(length);
    for (let i = start, offset = 0; i < end; offset += queue[i++].length) run.set(queue[i], offset);
    return run;
  }

  /** The bytes from `next()` are written. */
  written(length: number): void {
    this.#queuedBytes -= length;
    this.writtenFrames += this.#taking;
    this.#taking = 0;
    if (this.#head === this.#queue.length) {
      // All written: start the queue again, and lend the join buffer back.
      this.#queue.length = 0;
      this.#head = 0;
      this.#queuedPong = -1;
      if (this.#joined !== undefined && spareWriteBuffers.length < SPARE_WRITE_BUFFERS) {
        spareWriteBuffers.push(this.#joined);
      }
      this.#joined = undefined;
    }
  }

  /** Drops what is queued: the connection is gone. */
  discard(): void {
    this.#closed = true;
    this.#queue = [];
    this.#head = 0;
    this.#queuedBytes = 0;
    this.#joined = undefined;
  }

  #add(frame: Uint8Array): void {
    this.#queue.push(frame);
    this.#queuedBytes += frame.length;
    this.queuedFrames++;
  }
}
