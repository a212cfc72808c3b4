// Topics (publish/subscribe) for Protocol.subscribe, unsubscribe, topics and publish.
//
// One registry per `users` map, found through a WeakMap: connections that share `users`
// share topics, as they share users, with nothing more to pass around. Both directions
// are indexed (topic -> members, member -> topics), so that subscribe and unsubscribe are
// O(1), a publish is O(local subscribers), and a connection that ends leaves all its
// topics in O(its topics). A bus (bus.ts) attached to a registry carries its publishes to
// other registries (workers, nodes) and hands theirs back for local delivery.

/** The part of a connection the registry uses: only open ones are counted as recipients. */
export interface TopicMember {
  readonly state: string;
}

/** Sends one message to many members, encoding it once; returns how many queued it. */
export type Broadcast<M> = (recipients: Iterable<M>, msg: string | Uint8Array) => number;

/**
 * Options of `Protocol.prototype.publish`.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { Protocol, type PublishOptions } from "./protocol.ts";
 *
 * const options: PublishOptions = { includeSelf: true };
 * assertEquals(new Protocol().publish("news", "hello", options), 0); // nobody is subscribed
 * ```
 */
export interface PublishOptions {
  /**
   * Whether the publishing connection gets the message too, when it is subscribed
   * (default `false`, as uWebSockets' and Socket.IO's publish from a socket). Its
   * copy is queued after everyone else's.
   */
  includeSelf?: boolean;
}

/** Where a registry's publishes go beyond this process's members, and theirs come from. */
export interface TopicBus {
  publish(topic: string, msg: string | Uint8Array): boolean;
  listen(handler: ((topic: string, msg: string | Uint8Array) => void) | undefined): void;
}

/** Counters of a registry, for metrics. */
export interface TopicStats {
  /** Messages queued to local members (one per recipient). */
  delivered: number;
  /** Messages an open member did not queue: its backpressure limit was reached. */
  dropped: number;
}

const NO_TOPICS: ReadonlySet<string> = new Set();

export class TopicRegistry<M extends TopicMember> {
  readonly stats: TopicStats = { delivered: 0, dropped: 0 };
  /** Called after each local delivery with how many members queued the message (for metrics). */
  onDelivered: ((msg: string | Uint8Array, count: number) => void) | undefined;
  readonly #members = new Map<string, Set<M>>();
  readonly #topics = new WeakMap<M, Set<string>>();
  readonly #broadcast: Broadcast<M>;
  #bus: TopicBus | undefined;

  constructor(broadcast: Broadcast<M>) {
    this.#broadcast = broadcast;
  }

  /** Adds `member` to `topic`; false if it was there already. */
  subscribe(member: M, topic: string): boolean {
    if (typeof topic !== "string") throw new TypeError(`A topic must be a string, got ${typeof topic}`);
    let members = this.#members.get(topic);
    if (members === undefined) this.#members.set(topic, members = new Set());
    if (members.has(member)) return false;
    members.add(member);
    let topics = this.#topics.get(member);
    if (topics === undefined) this.#topics.set(member, topics = new Set());
    topics.add(topic);
    return true;
  }

  /** Removes `member` from `topic`; false if it was not there. */
  unsubscribe(member: M, topic: string): boolean {
    const members = this.#members.get(topic);
    if (!members?.delete(member)) return false;
    if (members.size === 0) this.#members.delete(topic);
    const topics = this.#topics.get(member)!;
    topics.delete(topic);
    if (topics.size === 0) this.#topics.delete(member);
    return true;
  }

  /** Removes `member` from every topic it is in. */
  leaveAll(member: M): void {
    const topics = this.#topics.get(member);
    if (topics === undefined) return;
    this.#topics.delete(member);
    for (const topic of topics) {
      const members = this.#members.get(topic)!;
      members.delete(member);
      if (members.size === 0) this.#members.delete(topic);
    }
  }

  /** A copy of the topics `member` is in. */
  topicsOf(member: M): ReadonlySet<string> {
    const topics = this.#topics.get(member);
    return topics === undefined ? NO_TOPICS : new Set(topics);
  }

  /** How many local members `topic` has. */
  count(topic: string): number {
    return this.#members.get(topic)?.size ?? 0;
  }

  /** Every topic with local members, and how many. */
  counts(): Map<string, number> {
    return new Map([...this.#members].map(([topic, members]) => [topic, members.size]));
  }

  /**
   * Delivers to local members of `topic` (but `sender` unless `includeSender`, whose copy
   * goes last), then hands the message to the bus for other nodes. Returns how many
   * local members queued it.
   */
  publish(topic: string, msg: string | Uint8Array, sender?: M, includeSender = false): number {
    const count = this.deliver(topic, msg, sender, includeSender);
    this.#bus?.publish(topic, msg);
    return count;
  }

  /** Delivers to local members only (a message from the bus ends here). */
  deliver(topic: string, msg: string | Uint8Array, sender?: M, includeSender = false): number {
    if (typeof topic !== "string") throw new TypeError(`A topic must be a string, got ${typeof topic}`);
    const members = this.#members.get(topic);
    if (members === undefined) return 0;
    const recipients = { open: 0 };
    const count = this.#broadcast(openMembers(members, recipients, sender, includeSender), msg);
    this.stats.delivered += count;
    this.stats.dropped += recipients.open - count;
    this.onDelivered?.(msg, count);
    return count;
  }

  /** Connects this registry to a bus, or disconnects it (`undefined`). */
  attach(bus: TopicBus | undefined): void {
    this.#bus?.listen(undefined);
    this.#bus = bus;
    bus?.listen((topic, msg) => this.deliver(topic, msg));
  }
}

// The open members of a topic, the sender's copy last (a sender that waits for it is then
// paced by delivery to the others), counting them in `recipients.open`.
function* openMembers<M extends TopicMember>(
  members: Set<M>,
  recipients: { open: number },
  sender: M | undefined,
  includeSender: boolean,
): Iterable<M> {
  for (const member of members) {
    if (member === sender || member.state !== "open") continue;
    recipients.open++;
    yield member;
  }
  if (includeSender && sender !== undefined && sender.state === "open" && members.has(sender)) {
    recipients.open++;
    yield sender;
  }
}

const registries = new WeakMap<object, TopicRegistry<TopicMember>>();

/** The registry of the connections sharing `users`, made on first use. */
export function registryOf<M extends TopicMember>(users: object, broadcast: Broadcast<M>): TopicRegistry<M> {
  let registry = registries.get(users) as TopicRegistry<M> | undefined;
  if (registry === undefined) {
    registry = new TopicRegistry(broadcast);
    registries.set(users, registry as unknown as TopicRegistry<TopicMember>);
  }
  return registry;
}

/** The registry of `users` if one was made. */
export function existingRegistry<M extends TopicMember>(users: object): TopicRegistry<M> | undefined {
  return registries.get(users) as TopicRegistry<M> | undefined;
}

const encoder = new TextEncoder();
const SCRATCH_CHARS = 64 * 1024;
let scratch: Uint8Array | undefined;

/**
 * The size of a message's payload, text in UTF-8 bytes. Long text is encoded (64 Ki
 * characters at a time, into one scratch buffer) rather than counted character by
 * character, which is about ten times slower in V8; still O(length): for metrics only.
 */
export function byteLength(msg: string | Uint8Array): number {
  if (typeof msg !== "string") return msg.length;
  scratch ??= new Uint8Array(3 * SCRATCH_CHARS);
  let bytes = 0;
  for (let start = 0; start < msg.length;) {
    let end = Math.min(start + SCRATCH_CHARS, msg.length);
    // Never split a surrogate pair: its halves would count as two U+FFFD (6 bytes, not 4).
    if (end < msg.length && (msg.charCodeAt(end - 1) & 0xfc00) === 0xd800) end--;
    bytes += encoder.encodeInto(msg.substring(start, end), scratch).written;
    start = end;
  }
  return bytes;
}
