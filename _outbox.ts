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

// Long texts are encoded into pooled buffers, taken back once every queue that held the
// frame has written it: a fresh buffer is zeroed, and costs a page fault every 4 KiB as
// it is first written (about 230 for a 1 MiB message, most of its cost). Buffer sizes
// are a power of two (up to 1 MiB) plus room for the longest header. The pool keeps at
// most 64 MiB (8 MiB missed so often at 32 connections x 4 in flight x 1 MiB that they
// cost 150 page faults a message), and, at most once a second as buffers come back,
// gives back what was not taken since the last time beyond 8 MiB.
// Large text payloads being read (_core.ts) take their buffers from it too.
const TEXT_POOL_LIMIT = 64 * 1024 * 1024;
const TEXT_POOL_KEEP = 8 * 1024 * 1024;
const TRIM_INTERVAL = 1000; // ms
let fewestFree = 0; // the fewest free bytes since the last trim
let lastTrim = 0;
const POOLED_MAX = 1024 * 1024;
const MAX_HEADER_LENGTH = 14;
const textPool = new Map<number, ArrayBuffer[]>(); // free buffers by size
let textPoolBytes = 0;
// The queues holding each pooled frame, by its buffer; a frame no queue took is garbage.
const holders = new WeakMap<ArrayBufferLike, number>();
const textEncoder = new TextEncoder();

function takeTextBuffer(payloadCapacity: number): Uint8Array {
  // Past 1 MiB a buffer of its own: rounding up to a power of two would cost up to twice the bytes.
  if (payloadCapacity > POOLED_MAX) return new Uint8Array(payloadCapacity + MAX_HEADER_LENGTH);
  const size = 2 ** Math.ceil(Math.log2(payloadCapacity)) + MAX_HEADER_LENGTH;
  const buffer = textPool.get(size)?.pop();
  if (buffer === undefined) return new Uint8Array(size);
  textPoolBytes -= size;
  fewestFree = Math.min(fewestFree, textPoolBytes);
  return new Uint8Array(buffer);
}

/** Drops the free buffers not taken since the last trim, beyond 8 MiB; at most once a second (`now` in ms). */
export function trimTextPool(now: number): void {
  if (now - lastTrim < TRIM_INTERVAL) return;
  lastTrim = now;
  let unused = Math.min(fewestFree, textPoolBytes) - TEXT_POOL_KEEP;
  for (const [size, free] of textPool) {
    for (; unused >= size && free.length > 0; unused -= size) {
      free.pop();
      textPoolBytes -= size;
    }
  }
  fewestFree = textPoolBytes;
}

function giveTextBuffer(buffer: ArrayBuffer): void {
  const payloadCapacity = buffer.byteLength - MAX_HEADER_LENGTH;
  // Only the pool's own sizes, a power of two plus the header's room, are kept.
  if (payloadCapacity > POOLED_MAX || (payloadCapacity & (payloadCapacity - 1)) !== 0) return;
  trimTextPool(performance.now());
  if (textPoolBytes + buffer.byteLength > TEXT_POOL_LIMIT) return;
  textPoolBytes += buffer.byteLength;
  const free = textPool.get(buffer.byteLength);
  if (free) free.push(buffer);
  else textPool.set(buffer.byteLength, [buffer]);
}

/**
 * A buffer of `length` bytes from the pool, not zeroed: for a long text's payload as it
 * is read, garbage once decoded. Give it back with {@linkcode giveBuffer}.
 */
export function takeBuffer(length: number): Uint8Array {
  return takeTextBuffer(length).subarray(0, length);
}

/** Gives a buffer from {@linkcode takeBuffer} back to the pool; nothing may use it after. */
export function giveBuffer(bytes: Uint8Array): void {
  giveTextBuffer(bytes.buffer as ArrayBuffer);
}

/** Bytes of free buffers the long-text pool keeps (at most 64 MiB; beyond 8 MiB, only those in use lately). */
export function textPoolSize(): number {
  return textPoolBytes;
}

// A long text's frame in a pooled buffer: first one byte a character, as for ASCII, then,
// if that was not enough, a buffer with room for the worst case of the rest.
function encodeLongText(text: string): Uint8Array {
  let buffer = takeTextBuffer(text.length);
  let { read, written } = textEncoder.encodeInto(text, buffer.subarray(MAX_HEADER_LENGTH));
  if (read < text.length) {
    const grown = takeTextBuffer(written + 3 * (text.length - read));
    grown.set(buffer.subarray(MAX_HEADER_LENGTH, MAX_HEADER_LENGTH + written), MAX_HEADER_LENGTH);
    written += textEncoder.encodeInto(text.slice(read), grown.subarray(MAX_HEADER_LENGTH + written)).written;
    giveTextBuffer(buffer.buffer as ArrayBuffer);
    buffer = grown;
  }
  let start = MAX_HEADER_LENGTH;
  encodeHeader(Opcode.Text, written, { allocate: (length) => buffer.subarray(start -= length, MAX_HEADER_LENGTH) });
  holders.set(buffer.buffer, 0);
  return buffer.subarray(start, MAX_HEADER_LENGTH + written);
}

// A queue took a frame: a pooled one has one more holder.
function hold(frame: Uint8Array): void {
  if (frame.length < LARGE_PAYLOAD) return;
  const count = holders.get(frame.buffer);
  if (count !== undefined) holders.set(frame.buffer, count + 1);
}

// A queue is done with a frame: a pooled one goes back to the pool after its last holder.
function release(frame: Uint8Array): void {
  if (frame.length < LARGE_PAYLOAD) return;
  const count = holders.get(frame.buffer);
  if (count === undefined) return;
  if (count > 1) return void holders.set(frame.buffer, count - 1);
  holders.delete(frame.buffer);
  giveTextBuffer(frame.buffer as ArrayBuffer);
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
 * encoded into a pooled buffer, and a large binary payload stays where it is,
 * queued after its header (up to 64 KiB the writer joins the two; larger ones are
 * written as they are).
 */
export function encodeMessage(msg: string | Uint8Array): DataFrame {
  if (typeof msg === "string") {
    return msg.length < LARGE_PAYLOAD ? encodeFrame(Opcode.Text, msg, pooled) : encodeLongText(msg);
  }
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
  #single: Uint8Array | undefined; // that piece, when it is one frame as it is
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
    if (end - start === 1) return this.#single = queue[start];
    // Small runs go in a slab; larger ones in a buffer lent to this connection while busy.
    if (length > SLAB_CUT_LIMIT) this.#joined ??= spareWriteBuffers.pop() ?? new Uint8Array(COALESCE_LIMIT);
    const run = length > SLAB_CUT_LIMIT ? this.#joined!.subarray(0, length) : allocate(length);
    for (let i = start, offset = 0; i < end; offset += queue[i++].length) {
      run.set(queue[i], offset);
      release(queue[i]);
    }
    return run;
  }

  /** The bytes from `next()` are written. */
  written(length: number): void {
    if (this.#single !== undefined) release(this.#single);
    this.#single = undefined;
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
    // Frames not handed out go back; one being written is left to the garbage collector.
    for (let i = this.#head; i < this.#queue.length; i++) release(this.#queue[i]);
    this.#single = undefined;
    this.#closed = true;
    this.#queue = [];
    this.#head = 0;
    this.#queuedBytes = 0;
    this.#joined = undefined;
  }

  #add(frame: Uint8Array): void {
    hold(frame);
    this.#queue.push(frame);
    this.#queuedBytes += frame.length;
    this.queuedFrames++;
  }
}
