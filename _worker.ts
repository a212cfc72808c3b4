// One worker of `server.ts --workers N` (see _workers.ts for its protocol with the pool):
// a broadcast server on the shared port (SO_REUSEPORT), its rooms joined to the other
// workers' by a PortBus (a MessagePort to each), or to every node's by a RedisBus with
// --redis.
/// <reference lib="deno.worker" />
import { type Bus, PortBus } from "./bus.ts";
import { type BroadcastServer, type ServerOptions, startServer } from "./server.ts";

interface Start {
  type: "start";
  index: number;
  options: ServerOptions;
  /** The BroadcastChannel the workers share their metrics on. */
  channel: string;
  redis?: string;
  peers: Record<string, MessagePort>;
}

interface Peer {
  type: "peer";
  index: string;
  port: MessagePort;
}

let server: BroadcastServer | undefined;
let bus: Bus | undefined;

self.onmessage = async (event: MessageEvent<Start | Peer | { type: "shutdown" }>) => {
  const message = event.data;
  if (message.type === "peer") {
    // Another worker (re)started: its port replaces the one this worker had to it.
    if (bus instanceof PortBus) bus.connect(message.index, message.port);
  } else if (message.type === "start") {
    const log = message.options.quiet ? () => {} : console.log;
    try {
      if (message.redis === undefined) {
        // Before any await: "peer" messages may follow at once.
        const ports = new PortBus();
        for (const [index, port] of Object.entries(message.peers)) ports.connect(index, port);
        bus = ports;
      } else {
        bus = await (await import("./redis.ts")).RedisBus.connect(message.redis, { log });
      }
      const worker = { index: message.index, channel: `${message.channel}:metrics` };
      server = startServer({ ...message.options, bus, reusePort: true, worker });
      self.postMessage({ type: "ready" });
    } catch (error) {
      await bus?.close();
      self.postMessage({ type: "fatal", message: error instanceof Error ? error.message : String(error) });
    }
  } else if (message.type === "shutdown") {
    await server?.shutdown();
    await bus?.close();
    self.postMessage({ type: "stopped" });
  }
};
