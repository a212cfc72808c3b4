// This module under load, used as a user would, through its public entry point only:
// /echo echoes each message with sendMessage; any other path broadcasts each message to
// every user, the sender included, with Protocol.broadcast; no connect notices.
// Usage: deno run -N ours.ts PORT
import { Protocol, type ProtocolOptions } from "../../mod.ts";

const port = Number(Deno.args[0]);
// Loads keep far more in flight than the defaults allow one user; heartbeats stay off.
const options: ProtocolOptions = {
  pingInterval: 0,
  idleTimeout: 0,
  maxBackpressure: 256 << 20,
  maxPayload: 64 << 20,
};

class Handler extends Protocol {
  #echo = false;

  override onHandshake(): void {
    this.#echo = this.request?.path === "/echo";
  }

  override onMessage(msg: string | Uint8Array): void {
    if (this.#echo) this.sendMessage(msg);
    else Protocol.broadcast(this.users.values(), msg);
  }
}

const users = new Map<string, Protocol>();
const listener = Deno.listen({ hostname: "127.0.0.1", port });
console.log("ready");
for await (const conn of listener) new Handler(users, options).serve(conn);
