// The broadcast server's metrics, in the Prometheus text exposition format (version
// 0.0.4): one HELP and TYPE line a family, then its samples. With --workers, each worker
// labels its samples with `worker` and shares them with the others over a
// BroadcastChannel once a second, so that whichever worker answers GET /metrics shows
// them all (the others' as of their last share).

import type { BusStats } from "./bus.ts";
import { byteLength, type TopicStats } from "./_topics.ts";

/** What the metrics read from a topic registry. */
export interface Rooms {
  counts(): Map<string, number>;
  readonly stats: TopicStats;
}

const FAMILIES = {
  twistedws_connections: ["gauge", "Open WebSocket connections, by room."],
  twistedws_messages_received_total: ["counter", "Messages received from clients."],
  twistedws_received_bytes_total: ["counter", "Payload bytes of the messages received from clients (text in UTF-8)."],
  twistedws_messages_sent_total: ["counter", "Messages queued to clients, one per recipient."],
  twistedws_sent_bytes_total: ["counter", "Payload bytes of the messages queued to clients."],
  twistedws_closes_total: ["counter", "Connections ended, by close code (1006: no closing handshake)."],
  twistedws_backpressure_drops_total: ["counter", "Messages not queued to a client whose send queue was full."],
  twistedws_bus_connected: ["gauge", "1 when the bus to other workers or nodes is up, else 0."],
  twistedws_bus_published_total: ["counter", "Messages sent on the bus."],
  twistedws_bus_unsent_total: ["counter", "Messages not sent on the bus because it was down (dropped)."],
  twistedws_bus_received_total: ["counter", "Messages received from the bus."],
  twistedws_bus_reconnects_total: ["counter", "Times the bus connected again after losing its connection."],
  twistedws_bus_undecodable_total: ["counter", "Messages from the bus that did not decode (dropped)."],
} as const;

type Family = keyof typeof FAMILIES;
/** One sample: family, labels, value. */
export type Sample = [Family, Record<string, string>, number];

const SHARE_INTERVAL = 1000;

export class ServerMetrics {
  received = 0;
  receivedBytes = 0;
  sentBytes = 0;
  readonly closes = new Map<number, number>();
  readonly #labels: Record<string, string>;
  readonly #peers = new Map<string, Sample[]>();
  #channel: BroadcastChannel | undefined;
  #timer: ReturnType<typeof setInterval> | undefined;
  // The last message counted and its size: a message received and then published is
  // measured once.
  #lastMessage: string | Uint8Array | undefined;
  #lastBytes = 0;

  /** `worker`: this worker's index, to label and share its samples (see the top of this file). */
  constructor(worker?: { index: number; channel: string }) {
    this.#labels = worker === undefined ? {} : { worker: String(worker.index) };
    if (worker === undefined) return;
    this.#channel = new BroadcastChannel(worker.channel);
    this.#channel.onmessage = (event) => {
      const { worker: index, samples } = event.data ?? {};
      if (typeof index === "string" && Array.isArray(samples)) this.#peers.set(index, samples);
    };
  }

  /** Starts sharing this worker's samples (no-op outside workers). */
  share(registry: Rooms, bus: BusStats | undefined): void {
    if (this.#channel === undefined || this.#timer !== undefined) return;
    const post = () =>
      this.#channel?.postMessage({ worker: this.#labels.worker, samples: this.samples(registry, bus) });
    post();
    this.#timer = setInterval(post, SHARE_INTERVAL);
  }

  close(): void {
    clearInterval(this.#timer);
    this.#channel?.close();
    this.#channel = undefined;
  }

  /** The size of `msg`, measured once however often it is counted in a row. */
  size(msg: string | Uint8Array): number {
    if (msg !== this.#lastMessage) {
      this.#lastMessage = msg;
      this.#lastBytes = byteLength(msg);
    }
    return this.#lastBytes;
  }

  /** This server's samples now. */
  samples(registry: Rooms, bus: BusStats | undefined): Sample[] {
    const labels = this.#labels;
    const samples: Sample[] = [];
    for (const [room, count] of registry.counts()) samples.push(["twistedws_connections", { ...labels, room }, count]);
    samples.push(
      ["twistedws_messages_received_total", labels, this.received],
      ["twistedws_received_bytes_total", labels, this.receivedBytes],
      ["twistedws_messages_sent_total", labels, registry.stats.delivered],
      ["twistedws_sent_bytes_total", labels, this.sentBytes],
      ["twistedws_backpressure_drops_total", labels, registry.stats.dropped],
    );
    for (const [code, count] of this.closes) {
      samples.push(["twistedws_closes_total", { ...labels, code: `${code}` }, count]);
    }
    if (bus !== undefined) {
      samples.push(
        ["twistedws_bus_connected", labels, bus.connected ? 1 : 0],
        ["twistedws_bus_published_total", labels, bus.published],
        ["twistedws_bus_unsent_total", labels, bus.unsent],
        ["twistedws_bus_received_total", labels, bus.received],
        ["twistedws_bus_reconnects_total", labels, bus.reconnects],
        ["twistedws_bus_undecodable_total", labels, bus.undecodable],
      );
    }
    return samples;
  }

  /** The text for GET /metrics: this server's samples and the other workers'. */
  render(registry: Rooms, bus: BusStats | undefined): string {
    const all = this.samples(registry, bus);
    for (const [index, samples] of this.#peers) if (index !== this.#labels.worker) all.push(...samples);
    all.sort(([, a], [, b]) => Number(a.worker ?? 0) - Number(b.worker ?? 0));
    const lines: string[] = [];
    for (const [family, [type, help]] of Object.entries(FAMILIES)) {
      const samples = all.filter(([name]) => name === family);
      lines.push(`# HELP ${family} ${help}`, `# TYPE ${family} ${type}`);
      for (const [, labels, value] of samples) lines.push(`${family}${formatLabels(labels)} ${value}`);
    }
    return lines.join("\n") + "\n";
  }
}

// Label values escape backslash, double quote and line feed (the exposition format's rule).
function formatLabels(labels: Record<string, string>): string {
  const pairs = Object.entries(labels).map(([name, value]) =>
    `${name}="${value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n")}"`
  );
  return pairs.length === 0 ? "" : `{${pairs.join(",")}}`;
}
