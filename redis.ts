/**
 * {@linkcode RedisBus}: topics across processes and machines over Redis pub/sub, with
 * node-redis (`@redis/client`, pinned). The only module of this package with a
 * dependency; the core imports nothing from here.
 *
 * Every node publishes to one Redis channel and subscribes to it, as Socket.IO's Redis
 * adapter does: each node gets every message of the cluster and delivers it to its own
 * subscribers of the message's topic. Delivery is at most once: a message published
 * while Redis is unreachable, or sent to a node that is cut off from it, is lost.
 *
 * @example Two nodes (here in one process) on one Redis
 * ```ts ignore
 * // Needs a redis-server on port 6379; redis_test.ts runs two nodes on one it starts.
 * import { attachBus, Protocol } from "@twistedws/websocket";
 * import { RedisBus } from "@twistedws/websocket/redis";
 *
 * const users = new Map<string, Protocol>();
 * attachBus(users, await RedisBus.connect("redis://127.0.0.1:6379"));
 * // Protocol.publish(users, "/lobby", "hi") now reaches "/lobby" on every node.
 * ```
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createClient } from "@redis/client";
import { EncodedBus } from "./bus.ts";

// node-redis reads these (its debug switches); without the permission the read throws.
const CLIENT_ENV = ["REDIS_DEBUG_MAINTENANCE", "REDIS_EMIT_DIAGNOSTICS"];

/**
 * Options of {@linkcode RedisBus.connect}.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import type { RedisBusOptions } from "./redis.ts";
 *
 * const options: RedisBusOptions = { channel: "chat", connectTimeout: 2000 };
 * assertEquals(options.channel, "chat");
 * ```
 */
export interface RedisBusOptions {
  /** The Redis channel of the cluster (default `"twistedws"`): nodes on another channel are another cluster. */
  channel?: string;
  /** Milliseconds to reach Redis at the start (default 5,000); then `connect` rejects. */
  connectTimeout?: number;
  /** Longest wait, in milliseconds, between two attempts to reconnect (default 1,000). */
  maxReconnectDelay?: number;
  /** Where the bus logs losing and regaining Redis (default: nowhere). */
  log?: (line: string) => void;
}

/**
 * A `Bus` over Redis pub/sub: two connections, one to publish and one
 * subscribed to the cluster's channel. When Redis goes away the node keeps serving
 * its own subscribers, messages for other nodes are counted as `unsent` and dropped
 * (none are queued), and both connections retry with exponential backoff (50 ms,
 * doubling, at most `maxReconnectDelay`, with jitter); once both are back, delivery
 * across nodes resumes by itself.
 *
 * @example Redis unreachable at the start: `connect` gives up after `connectTimeout`
 * ```ts
 * import { assertRejects } from "@std/assert";
 * import { RedisBus } from "./redis.ts";
 *
 * // Nothing listens on port 1.
 * await assertRejects(() => RedisBus.connect("redis://127.0.0.1:1", { connectTimeout: 200 }), Error, "cannot reach Redis");
 * ```
 *
 * @example With a Redis
 * ```ts ignore
 * // Needs a redis-server on port 6379; redis_test.ts starts one and connects like this.
 * import { RedisBus } from "./redis.ts";
 *
 * const bus = await RedisBus.connect("redis://127.0.0.1:6379", { log: console.log });
 * console.log(bus.stats.connected); // true
 * await bus.close();
 * ```
 */
export class RedisBus extends EncodedBus {
  /** The Redis URL. */
  readonly url: string;
  readonly #channel: string;
  readonly #log: (line: string) => void;
  readonly #publisher: ReturnType<typeof createClient>;
  readonly #subscriber: ReturnType<typeof createClient>;
  #everConnected = false;
  #lastError = "";

  private constructor(url: string, options: RedisBusOptions) {
    super();
    this.url = url;
    this.#channel = options.channel ?? "twistedws";
    this.#log = options.log ?? (() => {});
    const deadline = Date.now() + (options.connectTimeout ?? 5000);
    const maxDelay = options.maxReconnectDelay ?? 1000;
    const clientOptions = {
      url,
      // At most once: a command is never kept for a connection that is not there.
      disableOfflineQueue: true,
      socket: {
        connectTimeout: Math.min(1000, options.connectTimeout ?? 5000),
        reconnectStrategy: (retries: number, cause: Error) => {
          if (!this.#everConnected && Date.now() >= deadline) {
            return new Error(`cannot reach Redis at ${url}: ${cause.message}`);
          }
          return Math.round(Math.min(50 * 2 ** retries, maxDelay) * (0.8 + 0.4 * Math.random()));
        },
      },
    };
    this.#publisher = createClient(clientOptions);
    this.#subscriber = createClient(clientOptions);
    this.counters.connected = false;
    for (const client of [this.#publisher, this.#subscriber]) {
      // Without a listener, an "error" event would throw; each failed attempt emits one.
      client.on("error", (error: Error) => {
        this.#lastError = error.message;
        this.#update();
      });
      client.on("ready", () => this.#update());
      client.on("end", () => this.#update());
    }
  }

  /**
   * Connects to Redis and subscribes to the cluster's channel.
   *
   * @param url A `redis://HOST:PORT` URL (`rediss://` for TLS, with user and password if needed).
   * @param options Channel, timeouts and logging.
   * @returns The bus, connected.
   * @throws {Error} When Redis cannot be reached within `connectTimeout`.
   * @throws {Deno.errors.NotCapable} Without env access to the two variables node-redis
   *   reads, `REDIS_DEBUG_MAINTENANCE` and `REDIS_EMIT_DIAGNOSTICS`.
   */
  static async connect(url: string, options: RedisBusOptions = {}): Promise<RedisBus> {
    for (const variable of CLIENT_ENV) {
      if (Deno.permissions.querySync({ name: "env", variable }).state !== "granted") {
        throw new Deno.errors.NotCapable(
          `RedisBus needs env access to ${CLIENT_ENV.join(" and ")}, which node-redis reads: ` +
            `--allow-env=${CLIENT_ENV.join(",")} (or -E)`,
        );
      }
    }
    const bus = new RedisBus(url, options);
    try {
      await bus.#publisher.connect();
      await bus.#subscriber.connect();
      await bus.#subscriber.subscribe(bus.#channel, (message: Buffer) => {
        // A plain Uint8Array over the same bytes: binary messages are Uint8Arrays everywhere.
        bus.receive(new Uint8Array(message.buffer, message.byteOffset, message.length));
      }, true);
    } catch (error) {
      bus.#publisher.destroy();
      bus.#subscriber.destroy();
      throw error;
    }
    bus.#update();
    return bus;
  }

  /** Sends a packet on the channel; if the publish fails, its messages count as unsent. */
  protected send(bytes: Uint8Array, count: number): void {
    const message = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    this.#publisher.publish(this.#channel, message).catch(() => {
      this.counters.published -= count;
      this.counters.unsent += count;
    });
  }

  /** Closes both connections, after the publishes already sent. */
  protected async stop(): Promise<void> {
    this.#subscriber.destroy();
    if (this.#publisher.isReady) await this.#publisher.close().catch(() => this.#publisher.destroy());
    else this.#publisher.destroy();
  }

  // Connected once both connections are ready (the subscriber resubscribes before).
  #update(): void {
    const connected = !this.closed && this.#publisher.isReady && this.#subscriber.isReady;
    if (connected === this.counters.connected) return;
    this.counters.connected = connected;
    if (connected && this.#everConnected) {
      this.counters.reconnects++;
      this.#log(`[BUS] connected to Redis at ${this.url} again`);
    } else if (connected) {
      this.#everConnected = true;
    } else if (!this.closed) {
      this.#log(`[BUS] lost Redis at ${this.url} (${this.#lastError || "connection closed"}); reconnecting`);
    }
  }
}
