/**
 * Buses carry topic messages between the `users` maps of several workers or nodes, so
 * that `publish` reaches subscribers everywhere. A {@linkcode Bus} is small: publish to
 * the others, listen to them, counters, close. This module has two with no dependency:
 * {@linkcode LocalBus} (within one JavaScript realm) and {@linkcode PortBus}
 * (`MessagePort`s: across the workers of one process); `./redis` has `RedisBus`,
 * across processes and machines. Without a bus, topics are local to one `users` map.
 *
 * Each bus drops the messages it published itself (they carry its node id), and the
 * publishing node delivers to its own subscribers at once, without the bus: every
 * message is delivered once per node, with no echo loop.
 *
 * @example Two `users` maps, as two workers would have, joined by a bus
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { attachBus, LocalBus, Protocol } from "./mod.ts";
 *
 * const here = new Map<string, Protocol>();
 * const there = new Map<string, Protocol>();
 * const busHere = new LocalBus("example");
 * const busThere = new LocalBus("example");
 * attachBus(here, busHere);
 * attachBus(there, busThere);
 * Protocol.publish(here, "news", "hello"); // reaches the subscribers of "news" in `there` too
 * assertEquals(busHere.stats.published, 1);
 * await busHere.close();
 * await busThere.close();
 * ```
 *
 * @module
 */

import { Protocol } from "./protocol.ts";
import { registryOf } from "./_topics.ts";

/**
 * Counters and state of a bus, for metrics.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { type BusStats, LocalBus } from "./bus.ts";
 *
 * const bus = new LocalBus();
 * const stats: BusStats = bus.stats;
 * assertEquals(stats.connected, true);
 * await bus.close();
 * ```
 */
export interface BusStats {
  /** Whether messages can go out and come in now. */
  readonly connected: boolean;
  /** Messages handed to the bus for other nodes. */
  readonly published: number;
  /** Messages not sent because the bus was down (at-most-once: they are not retried). */
  readonly unsent: number;
  /** Messages from other nodes handed to the listener. */
  readonly received: number;
  /** Times the bus connected again after losing its connection. */
  readonly reconnects: number;
  /** Packets (of one or more messages) that arrived and did not decode (dropped). */
  readonly undecodable: number;
}

/**
 * What carries topic messages between nodes. Implement it to use another transport:
 * `publish` sends to every other node and never throws, `listen` sets the one function
 * given each message from another node (never this node's own).
 *
 * @example A bus that goes nowhere
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import type { Bus, BusStats } from "./bus.ts";
 *
 * class NullBus implements Bus {
 *   readonly stats: BusStats = { connected: true, published: 0, unsent: 0, received: 0, reconnects: 0, undecodable: 0 };
 *   publish(): boolean {
 *     return true;
 *   }
 *   listen(): void {}
 *   close(): Promise<void> {
 *     return Promise.resolve();
 *   }
 * }
 * assertEquals(new NullBus().publish(), true);
 * ```
 */
export interface Bus {
  /** Counters and state. */
  readonly stats: BusStats;
  /**
   * Sends a message to the other nodes.
   *
   * @returns `false` if it was not sent (the bus is down or closed).
   */
  publish(topic: string, msg: string | Uint8Array): boolean;
  /** Sets the function given each message from another node, or removes it (`undefined`). */
  listen(handler: ((topic: string, msg: string | Uint8Array) => void) | undefined): void;
  /** Stops sending and receiving. */
  close(): Promise<void>;
}

/**
 * Joins the topics of the connections sharing `users` to a bus: their publishes go to
 * the other nodes too, and the bus's messages reach their subscribers. `undefined`
 * detaches the bus (topics are then local again). A bus serves one `users` map.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { attachBus, LocalBus, Protocol } from "./mod.ts";
 *
 * const users = new Map<string, Protocol>();
 * const bus = new LocalBus();
 * attachBus(users, bus);
 * Protocol.publish(users, "news", "hello");
 * assertEquals(bus.stats.published, 1);
 * attachBus(users, undefined);
 * await bus.close();
 * ```
 *
 * @param users The shared map of connections.
 * @param bus The bus, or `undefined` to detach.
 */
export function attachBus(users: Map<string, Protocol>, bus: Bus | undefined): void {
  registryOf(users, Protocol.broadcast).attach(bus);
}

/**
 * A message on a bus: its topic and the message, text or binary.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import type { BusMessage } from "./bus.ts";
 *
 * const message: BusMessage = { topic: "/lobby", msg: "hi" };
 * assertEquals(message.topic, "/lobby");
 * ```
 */
export interface BusMessage {
  /** The topic. */
  topic: string;
  /** A string for text, bytes for binary. */
  msg: string | Uint8Array;
}

/**
 * What a bus carries at once: one or more messages of one node, in the order published.
 * Messages published in the same task go in one packet (one Redis command, one
 * `postMessage`), which is what makes a bus cheap under load.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { type BusPacket, decodeBusPacket, encodeBusPacket } from "./bus.ts";
 *
 * const packet: BusPacket = { origin: crypto.randomUUID(), messages: [{ topic: "/", msg: "hi" }] };
 * assertEquals(decodeBusPacket(encodeBusPacket(packet)), packet);
 * ```
 */
export interface BusPacket {
  /** The publishing node's id, a UUID. */
  origin: string;
  /** The messages, at least one. */
  messages: BusMessage[];
}

/**
 * A bus packet that does not decode: too short, another version, an unknown kind, a
 * length past the end, or text that is not UTF-8.
 *
 * @example
 * ```ts
 * import { assertThrows } from "@std/assert";
 * import { BusPacketError, decodeBusPacket } from "./bus.ts";
 *
 * assertThrows(() => decodeBusPacket(new Uint8Array(3)), BusPacketError, "got 3");
 * ```
 */
export class BusPacketError extends Error {
  /** `"BusPacketError"`. */
  override name = "BusPacketError";
}

// Messages of one task are joined into a packet up to about this many payload bytes.
const PACKET_LIMIT = 1024 * 1024;

// Wire format of a bus packet (all buses here use it; integers are big-endian):
//   0   1 byte    version, 1
//   1   16 bytes  origin node id (the UUID's bytes)
//   17  ...       one or more messages, back to back, each:
//                   1 byte   kind: 1 text, 2 binary
//                   2 bytes  topic length N
//                   4 bytes  payload length M
//                   N bytes  topic, UTF-8
//                   M bytes  payload: UTF-8 text, or the binary message as it is
const VERSION = 1;
const KIND_TEXT = 1;
const KIND_BINARY = 2;
const PACKET_HEAD = 17;
const MESSAGE_HEAD = 7;
const encoder = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Encodes a bus packet into one buffer of its own (see the wire format in bus.ts).
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { encodeBusPacket } from "./bus.ts";
 *
 * const origin = "00000000-0000-4000-8000-000000000000";
 * const bytes = encodeBusPacket({ origin, messages: [{ topic: "/", msg: new Uint8Array([7]) }] });
 * assertEquals(bytes.length, 17 + 7 + 1 + 1);
 * assertEquals([...bytes.subarray(17)], [2, 0, 1, 0, 0, 0, 1, 0x2f, 7]);
 * ```
 *
 * @param packet The origin and the messages.
 * @returns The bytes.
 * @throws {RangeError} When a topic is over 65,535 bytes, the origin is not a UUID, or there is no message.
 */
export function encodeBusPacket(packet: BusPacket): Uint8Array {
  if (packet.messages.length === 0) throw new RangeError("A bus packet needs at least one message");
  const parts = packet.messages.map(({ topic, msg }) => {
    const topicBytes = encoder.encode(topic);
    if (topicBytes.length > 0xffff) {
      throw new RangeError(`A bus topic must be at most 65535 bytes, got ${topicBytes.length}`);
    }
    return { text: typeof msg === "string", topicBytes, payload: typeof msg === "string" ? encoder.encode(msg) : msg };
  });
  let length = PACKET_HEAD;
  for (const part of parts) length += MESSAGE_HEAD + part.topicBytes.length + part.payload.length;
  const bytes = new Uint8Array(length);
  const view = new DataView(bytes.buffer);
  bytes[0] = VERSION;
  bytes.set(uuidBytes(packet.origin), 1);
  let offset = PACKET_HEAD;
  for (const { text, topicBytes, payload } of parts) {
    bytes[offset] = text ? KIND_TEXT : KIND_BINARY;
    view.setUint16(offset + 1, topicBytes.length);
    view.setUint32(offset + 3, payload.length);
    bytes.set(topicBytes, offset + MESSAGE_HEAD);
    bytes.set(payload, offset + MESSAGE_HEAD + topicBytes.length);
    offset += MESSAGE_HEAD + topicBytes.length + payload.length;
  }
  return bytes;
}

/**
 * Decodes a bus packet, all of it or nothing. Binary messages are views into `bytes`.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { decodeBusPacket, encodeBusPacket } from "./bus.ts";
 *
 * const origin = crypto.randomUUID();
 * const messages = [{ topic: "/lobby", msg: "héllo" }, { topic: "/", msg: new Uint8Array([1, 2]) }];
 * assertEquals(decodeBusPacket(encodeBusPacket({ origin, messages })), { origin, messages });
 * ```
 *
 * @param bytes The bytes, as {@linkcode encodeBusPacket} made them.
 * @returns The packet.
 * @throws {BusPacketError} When they do not decode.
 */
export function decodeBusPacket(bytes: Uint8Array): BusPacket {
  if (!(bytes instanceof Uint8Array)) throw new BusPacketError(`A bus packet must be bytes, got ${typeof bytes}`);
  if (bytes.length < PACKET_HEAD + MESSAGE_HEAD) {
    throw new BusPacketError(`A bus packet has at least ${PACKET_HEAD + MESSAGE_HEAD} bytes, got ${bytes.length}`);
  }
  if (bytes[0] !== VERSION) throw new BusPacketError(`Unknown bus packet version ${bytes[0]}, expected ${VERSION}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const messages: BusMessage[] = [];
  for (let offset = PACKET_HEAD; offset < bytes.length;) {
    if (offset + MESSAGE_HEAD > bytes.length) {
      throw new BusPacketError(`Bus packet ends inside a message head at byte ${offset} of ${bytes.length}`);
    }
    const kind = bytes[offset];
    if (kind !== KIND_TEXT && kind !== KIND_BINARY) {
      throw new BusPacketError(`Unknown bus message kind ${kind} at byte ${offset}`);
    }
    const topicStart = offset + MESSAGE_HEAD;
    const payloadStart = topicStart + view.getUint16(offset + 1);
    const end = payloadStart + view.getUint32(offset + 3);
    if (end > bytes.length) {
      throw new BusPacketError(`Bus message ends at byte ${end}, past the packet's ${bytes.length}`);
    }
    try {
      const topic = strictUtf8.decode(bytes.subarray(topicStart, payloadStart));
      const payload = bytes.subarray(payloadStart, end);
      messages.push({ topic, msg: kind === KIND_TEXT ? strictUtf8.decode(payload) : payload });
    } catch (cause) {
      throw new BusPacketError(`Bus message at byte ${offset}: topic or text is not valid UTF-8`, { cause });
    }
    offset = end;
  }
  return { origin: uuidString(bytes.subarray(1, PACKET_HEAD)), messages };
}

function uuidBytes(uuid: string): Uint8Array {
  const hex = uuid.replaceAll("-", "");
  if (!/^[0-9a-f]{32}$/i.test(hex)) throw new RangeError(`A bus origin must be a UUID, got ${JSON.stringify(uuid)}`);
  return Uint8Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(2 * i, 2 * i + 2), 16));
}

function uuidString(bytes: Uint8Array): string {
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Counters a bus implementation keeps; {@linkcode BusStats} is their read-only view.
 * Exported for implementations of {@linkcode Bus} in other modules.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { BusCounters } from "./bus.ts";
 *
 * const counters = new BusCounters();
 * counters.published++;
 * assertEquals(counters.published, 1);
 * ```
 */
export class BusCounters implements BusStats {
  /** Whether messages can go out and come in now. */
  connected = true;
  /** Messages handed to the bus for other nodes. */
  published = 0;
  /** Messages not sent because the bus was down. */
  unsent = 0;
  /** Messages from other nodes handed to the listener. */
  received = 0;
  /** Times the bus connected again after losing its connection. */
  reconnects = 0;
  /** Packets that did not decode. */
  undecodable = 0;
}

/**
 * The base of {@linkcode LocalBus} and {@linkcode PortBus}, and of `RedisBus`: a node id,
 * the wire format both ways, and the counters. A bus over another transport implements
 * `send` and `stop`, and calls `receive` with the bytes that arrive.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { EncodedBus } from "./bus.ts";
 *
 * class LoopbackBus extends EncodedBus {
 *   sent: Uint8Array[] = [];
 *   protected send(bytes: Uint8Array): void {
 *     this.sent.push(bytes);
 *   }
 *   protected stop(): Promise<void> {
 *     return Promise.resolve();
 *   }
 * }
 * const bus = new LoopbackBus();
 * bus.publish("news", "hello");
 * bus.publish("news", "again");
 * await Promise.resolve(); // the packet goes once the task is done
 * assertEquals(bus.sent.length, 1); // both messages in one packet
 * ```
 */
export abstract class EncodedBus implements Bus {
  /** This node's id on the bus: messages it publishes carry it. */
  readonly nodeId: string = crypto.randomUUID();
  readonly #nodeIdBytes = uuidBytes(this.nodeId);
  readonly #counters = new BusCounters();
  #handler: ((topic: string, msg: string | Uint8Array) => void) | undefined;
  #closed = false;
  #pending: BusMessage[] = [];
  #pendingBytes = 0;

  /** Counters and state. */
  get stats(): BusStats {
    return this.#counters;
  }

  /** The counters, for a subclass to update. */
  protected get counters(): BusCounters {
    return this.#counters;
  }

  /** Whether `close` was called. */
  protected get closed(): boolean {
    return this.#closed;
  }

  /**
   * Sends a message to the other nodes, unless the bus is closed or down.
   *
   * @returns `false` if it was not sent.
   */
  publish(topic: string, msg: string | Uint8Array): boolean {
    if (this.#closed || !this.#counters.connected) {
      this.#counters.unsent++;
      return false;
    }
    // Joined with the others of this task into one packet, sent once the task is done
    // (or at once past PACKET_LIMIT bytes).
    this.#pending.push({ topic, msg });
    this.#pendingBytes += typeof msg === "string" ? msg.length : msg.length;
    this.#counters.published++;
    if (this.#pendingBytes >= PACKET_LIMIT) this.#flush();
    else if (this.#pending.length === 1) queueMicrotask(() => this.#flush());
    return true;
  }

  #flush(): void {
    if (this.#pending.length === 0) return;
    const messages = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    if (this.#closed) return;
    this.send(encodeBusPacket({ origin: this.nodeId, messages }), messages.length);
  }

  /** Sets the function given each message from another node, or removes it (`undefined`). */
  listen(handler: ((topic: string, msg: string | Uint8Array) => void) | undefined): void {
    this.#handler = handler;
  }

  /** Stops sending and receiving, after sending what was published. */
  close(): Promise<void> {
    this.#flush();
    this.#closed = true;
    this.#counters.connected = false;
    this.#handler = undefined;
    return this.stop();
  }

  /** Sends an encoded packet of `count` messages to the other nodes. */
  protected abstract send(bytes: Uint8Array, count: number): void;

  /** Releases the transport. */
  protected abstract stop(): Promise<void>;

  /** Hands the messages of a packet that arrived to the listener, unless it is this node's own or does not decode. */
  protected receive(bytes: unknown): void {
    if (this.#closed || this.#isOwn(bytes)) return;
    let packet: BusPacket;
    try {
      packet = decodeBusPacket(bytes as Uint8Array);
    } catch {
      this.#counters.undecodable++;
      return;
    }
    for (const { topic, msg } of packet.messages) {
      this.#counters.received++;
      this.#handler?.(topic, msg);
    }
  }

  // This node's own packet, back from Redis (which hands a subscriber what it published):
  // told by its origin bytes, before anything is decoded.
  #isOwn(bytes: unknown): boolean {
    if (!(bytes instanceof Uint8Array) || bytes.length < PACKET_HEAD || bytes[0] !== VERSION) return false;
    for (let i = 0; i < 16; i++) if (bytes[1 + i] !== this.#nodeIdBytes[i]) return false;
    return true;
  }
}

/**
 * A bus within one JavaScript realm: every `LocalBus` of the same name is joined. For
 * several servers (several `users` maps) in one process, and for tests; messages go
 * through the same wire format as across nodes, in order, each in a microtask of its own.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { LocalBus } from "./bus.ts";
 *
 * const a = new LocalBus("room-service");
 * const b = new LocalBus("room-service");
 * const received = Promise.withResolvers<string>();
 * b.listen((topic, msg) => received.resolve(`${topic}: ${msg}`));
 * a.publish("news", "hello");
 * assertEquals(await received.promise, "news: hello");
 * await a.close();
 * await b.close();
 * ```
 */
export class LocalBus extends EncodedBus {
  static #groups = new Map<string, Set<LocalBus>>();
  readonly #name: string;

  /**
   * Makes a bus joined to the others of its name in this realm.
   *
   * @param name Buses of the same name are joined (default `"twistedws"`).
   */
  constructor(name = "twistedws") {
    super();
    this.#name = name;
    let group = LocalBus.#groups.get(name);
    if (group === undefined) LocalBus.#groups.set(name, group = new Set());
    group.add(this);
  }

  /** Hands the bytes to the other buses of the name, each in a microtask. */
  protected send(bytes: Uint8Array): void {
    for (const peer of LocalBus.#groups.get(this.#name) ?? []) {
      if (peer !== this) queueMicrotask(() => peer.receive(bytes));
    }
  }

  /** Leaves the group of the name. */
  protected stop(): Promise<void> {
    const group = LocalBus.#groups.get(this.#name);
    group?.delete(this);
    if (group?.size === 0) LocalBus.#groups.delete(this.#name);
    return Promise.resolve();
  }
}

/**
 * A bus over `MessagePort`s, one to each peer: joins the workers of one process (as
 * `server.ts --workers` does, each worker's bus with a port to every other). Messages
 * are copied between workers as encoded bytes, in order on each port.
 *
 * Not a `BroadcastChannel`: Deno's keeps at most 256 messages for a receiver that lags
 * and silently drops the rest (measured: a busy worker got 256 of 20,000), where a
 * `MessagePort` queues them all.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { PortBus } from "./bus.ts";
 *
 * const { port1, port2 } = new MessageChannel();
 * const a = new PortBus();
 * const b = new PortBus();
 * a.connect("b", port1);
 * b.connect("a", port2);
 * const received = Promise.withResolvers<string | Uint8Array>();
 * b.listen((_topic, msg) => received.resolve(msg));
 * a.publish("news", new Uint8Array([1, 2, 3]));
 * assertEquals(await received.promise, new Uint8Array([1, 2, 3]));
 * await a.close();
 * await b.close();
 * ```
 */
export class PortBus extends EncodedBus {
  readonly #ports = new Map<string, MessagePort>();

  /**
   * Adds a peer's port, or replaces the port a peer had (a worker that was restarted);
   * the old one is closed.
   *
   * @param peer The peer's name.
   * @param port This side of a `MessageChannel` whose other side is the peer's bus.
   */
  connect(peer: string, port: MessagePort): void {
    this.#ports.get(peer)?.close();
    this.#ports.set(peer, port);
    port.onmessage = (event) => this.receive(event.data);
    port.onmessageerror = () => this.counters.undecodable++;
  }

  /**
   * Removes a peer and closes its port.
   *
   * @param peer The peer's name.
   */
  disconnect(peer: string): void {
    this.#ports.get(peer)?.close();
    this.#ports.delete(peer);
  }

  /** The names of the peers. */
  get peers(): string[] {
    return [...this.#ports.keys()];
  }

  /** Posts the bytes to every peer. */
  protected send(bytes: Uint8Array): void {
    for (const port of this.#ports.values()) port.postMessage(bytes);
  }

  /** Closes every port. */
  protected stop(): Promise<void> {
    for (const port of this.#ports.values()) port.close();
    this.#ports.clear();
    return Promise.resolve();
  }
}
