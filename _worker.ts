// One worker of `server.ts --workers N` (see _workers.ts for its protocol with the pool):
// a broadcast server on the shared port (SO_REUSEPORT), its rooms joined to the other
// workers' by a ChannelBus, or to every node's by a RedisBus with --redis.
/// <reference lib="deno.worker" />
import { type Bus, ChannelBus } from "./bus.ts";
import { type BroadcastServer, type ServerOptions, startServer } from "./server.ts";

interface Start {
  type: "start";
  index: number;
  options: ServerOptions;
  channel: string;
  redis?: string;
}

let server: BroadcastServer | undefined;
let bus: Bus | undefined;

self.onmessage = async (event: MessageEvent<Start | { type: "shutdown" }>) => {
  const message = event.data;
  if (message.type === "start") {
    const log = message.options.quiet ? () => {} : console.log;
    try {
      bus = message.redis === undefined
        ? new ChannelBus(message.channel)
        : await (await import("./redis.ts")).RedisBus.connect(message.redis, { log });
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
