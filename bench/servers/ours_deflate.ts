// Our server for bench/deflate_bench.ts: echo, or broadcast to every user (the sender
// included, no connect notices), with compression off or in one of its modes.
// Usage: deno run -A ours_deflate.ts PORT off|no-context-takeover|context-takeover [--echo]
import { Protocol, type ProtocolOptions } from "../../protocol.ts";

const port = Number(Deno.args[0]);
const mode = Deno.args[1];
if (
  mode !== "off" && mode !== "no-context-takeover" &&
  mode !== "context-takeover"
) {
  throw new Error(`unknown compression mode ${mode}`);
}
// Loads keep far more in flight than the defaults allow one user; heartbeats stay off.
const options: ProtocolOptions = {
  pingInterval: 0,
  idleTimeout: 0,
  maxBackpressure: 256 << 20,
  maxPayload: 64 << 20,
  compression: mode === "off" ? false : { mode },
};

class Echo extends Protocol {
  override onMessage(msg: string | Uint8Array): void {
    this.sendMessage(msg);
  }
}

class Broadcast extends Protocol {
  override onMessage(msg: string | Uint8Array): void {
    Protocol.broadcast(this.users.values(), msg);
  }
}

const Handler = Deno.args.includes("--echo") ? Echo : Broadcast;
const users = new Map<string, Protocol>();
const listener = Deno.listen({ hostname: "127.0.0.1", port });
console.log("ready");
for await (const conn of listener) new Handler(users, options).serve(conn);
