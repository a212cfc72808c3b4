/**
 * Buses carry topic messages between the `users` maps of several workers or nodes, so
 * that `publish` reaches subscribers everywhere. A {@linkcode Bus} is small: publish to
 * the others, listen to them, counters, close. This module has two with no dependency:
 * {@linkcode LocalBus} (within one JavaScript realm) and {@linkcode ChannelBus}
 * (`BroadcastChannel`: across the workers of one process); `./redis` has `RedisBus`,
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
  /** Messages that arrived and did not decode (dropped). */
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
 * A message on a bus: its topic, the message (text or binary), and the node that
 * published it.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { type BusMessage, decodeBusMessage, encodeBusMessage } from "./bus.ts";
 *
 * const message: BusMessage = { topic: "/", msg: "hi", origin: crypto.randomUUID() };
 * assertEquals(decodeBusMessage(encodeBusMessage(message)), message);
 * ```
 */
export interface BusMessage {
  /** The topic. */
  topic: string;
  /** A string for text, bytes for binary. */
  msg: string | Uint8Array;
  /** The publishing node's id, a UUID. */
  origin: string;
}

/**
 * A bus message that does not decode: too short, another version, an unknown kind, a
 * topic past the end, or text that is not UTF-8.
 *
 * @example
 * ```ts
 * import { assertThrows } from "@std/assert";
 * import { BusMessageError, decodeBusMessage } from "./bus.ts";
 *
 * assertThrows(() => decodeBusMessage(new Uint8Array(3)), BusMessageError, "got 3");
 * ```
 */
export class BusMessageError extends Error {
  /** `"BusMessageError"`. */
  override name = "BusMessageError";
}

// Wire format of a bus message (all buses here use it; integers are big-endian):
//   0   1 byte    version, 1
//   1   1 byte    kind: 1 text, 2 binary
//   2   16 bytes  origin node id (the UUID's bytes)
//   18  2 bytes   topic length N
//   20  N bytes   topic, UTF-8
//   20+N ...      payload: UTF-8 text or the binary message as it is
const VERSION = 1;
const KIND_TEXT = 1;
const KIND_BINARY = 2;
const HEAD = 20;
const encoder = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Encodes a bus message into one buffer of its own (see the wire format in bus.ts).
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { encodeBusMessage } from "./bus.ts";
 *
 * const bytes = encodeBusMessage({ topic: "/", msg: new Uint8Array([7]), origin: "00000000-0000-4000-8000-000000000000" });
 * assertEquals(bytes.length, 20 + 1 + 1);
 * assertEquals([bytes[0], bytes[1], bytes[18], bytes[19], bytes[20], bytes[21]], [1, 2, 0, 1, 0x2f, 7]);
 * ```
 *
 * @param message The message.
 * @returns The bytes.
 * @throws {RangeError} When the topic is over 65,535 bytes or the origin is not a UUID.
 */
export function encodeBusMessage(message: BusMessage): Uint8Array {
  const topic = encoder.encode(message.topic);
  if (topic.length > 0xffff) throw new RangeError(`A bus topic must be at most 65535 bytes, got ${topic.length}`);
  const text = typeof message.msg === "string";
  const payload = typeof message.msg === "string" ? encoder.encode(message.msg) : message.msg;
  const bytes = new Uint8Array(HEAD + topic.length + payload.length);
  bytes[0] = VERSION;
  bytes[1] = text ? KIND_TEXT : KIND_BINARY;
  bytes.set(uuidBytes(message.origin), 2);
  bytes[18] = topic.length >> 8;
  bytes[19] = topic.length & 0xff;
  bytes.set(topic, HEAD);
  bytes.set(payload, HEAD + topic.length);
  return bytes;
}

/**
 * Decodes a bus message. A binary message is a view into `bytes`.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { decodeBusMessage, encodeBusMessage } from "./bus.ts";
 *
 * const origin = crypto.randomUUID();
 * const decoded = decodeBusMessage(encodeBusMessage({ topic: "/lobby", msg: "héllo", origin }));
 * assertEquals(decoded, { topic: "/lobby", msg: "héllo", origin });
 * ```
 *
 * @param bytes The bytes, as {@linkcode encodeBusMessage} made them.
 * @returns The message.
 * @throws {BusMessageError} When they do not decode.
 */
export function decodeBusMessage(bytes: Uint8Array): BusMessage {
  if (!(bytes instanceof Uint8Array)) throw new BusMessageError(`A bus message must be bytes, got ${typeof bytes}`);
  if (bytes.length < HEAD) throw new BusMessageError(`A bus message has at least ${HEAD} bytes, got ${bytes.length}`);
  if (bytes[0] !== VERSION) throw new BusMessageError(`Unknown bus message version ${bytes[0]}, expected ${VERSION}`);
  const kind = bytes[1];
  if (kind !== KIND_TEXT && kind !== KIND_BINARY) throw new BusMessageError(`Unknown bus message kind ${kind}`);
  const topicEnd = HEAD + ((bytes[18] << 8) | bytes[19]);
  if (topicEnd > bytes.length) {
    throw new BusMessageError(`Bus message topic ends at byte ${topicEnd}, past its ${bytes.length} bytes`);
  }
  try {
    const topic = strictUtf8.decode(bytes.subarray(HEAD, topicEnd));
    const payload = bytes.subarray(topicEnd);
    const msg = kind === KIND_TEXT ? strictUtf8.decode(payload) : payload;
    return { topic, msg, origin: uuidString(bytes.subarray(2, 18)) };
  } catch (cause) {
    throw new BusMessageError("Bus message topic or text is not valid UTF-8", { cause });
  }
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
  /** Messages that did not decode. */
  undecodable = 0;
}

/**
 * The base of {@linkcode LocalBus} and {@linkcode ChannelBus}, and of `RedisBus`: a node id,
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
 * assertEquals(bus.sent.length, 1);
 * ```
 */
export abstract class EncodedBus implements Bus {
  /** This node's id on the bus: messages it publishes carry it. */
  readonly nodeId: string = crypto.randomUUID();
  readonly #counters = new BusCounters();
  #handler: ((topic: string, msg: string | Uint8Array) => void) | undefined;
  #closed = false;

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
    this.send(encodeBusMessage({ topic, msg, origin: this.nodeId }));
    this.#counters.published++;
    return true;
  }

  /** Sets the function given each message from another node, or removes it (`undefined`). */
  listen(handler: ((topic: string, msg: string | Uint8Array) => void) | undefined): void {
    this.#handler = handler;
  }

  /** Stops sending and receiving. */
  close(): Promise<void> {
    this.#closed = true;
    this.#counters.connected = false;
    this.#handler = undefined;
    return this.stop();
  }

  /** Sends encoded bytes to the other nodes. */
  protected abstract send(bytes: Uint8Array): void;

  /** Releases the transport. */
  protected abstract stop(): Promise<void>;

  /** Hands bytes that arrived to the listener, unless they are this node's own or do not decode. */
  protected receive(bytes: unknown): void {
    if (this.#closed) return;
    let message: BusMessage;
    try {
      message = decodeBusMessage(bytes as Uint8Array);
    } catch {
      this.#counters.undecodable++;
      return;
    }
    if (message.origin === this.nodeId) return;
    this.#counters.received++;
    this.#handler?.(message.topic, message.msg);
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
 * A bus over a `BroadcastChannel`: joins every `ChannelBus` of the same name in the
 * workers of one process (as `server.ts --workers` does). Messages are copied between
 * workers as encoded bytes.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { ChannelBus } from "./bus.ts";
 *
 * const a = new ChannelBus("example-channel");
 * const b = new ChannelBus("example-channel");
 * const received = Promise.withResolvers<string | Uint8Array>();
 * b.listen((_topic, msg) => received.resolve(msg));
 * a.publish("news", new Uint8Array([1, 2, 3]));
 * assertEquals(await received.promise, new Uint8Array([1, 2, 3]));
 * await a.close();
 * await b.close();
 * ```
 */
export class ChannelBus extends EncodedBus {
  readonly #channel: BroadcastChannel;

  /**
   * Makes a bus joined to the others of its name in this process's workers.
   *
   * @param name The `BroadcastChannel`'s name (default `"twistedws"`).
   */
  constructor(name = "twistedws") {
    super();
    this.#channel = new BroadcastChannel(name);
    this.#channel.onmessage = (event) => this.receive(event.data);
    this.#channel.onmessageerror = () => this.counters.undecodable++;
  }

  /** Posts the bytes on the channel. */
  protected send(bytes: Uint8Array): void {
    this.#channel.postMessage(bytes);
  }

  /** Closes the channel. */
  protected stop(): Promise<void> {
    this.#channel.close();
    return Promise.resolve();
  }
}
