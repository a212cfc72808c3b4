// Our server under load: server.ts's broadcast server, or an echo Protocol with --echo.
// Usage: deno run -N ours.ts PORT [--echo]
import { Protocol } from "../../protocol.ts";
import { startServer } from "../../server.ts";

const port = Number(Deno.args[0]);
// Loads keep far more in flight than the defaults allow one user; heartbeats stay off.
const options = {
  pingInterval: 0,
  idleTimeout: 0,
  maxBackpressure: 256 << 20,
  maxPayload: 64 << 20,
};

class Echo extends Protocol {
  override onMessage(msg: string | Uint8Array): void {
    this.sendMessage(msg);
  }
}

if (Deno.args.includes("--echo")) {
  const users = new Map<string, Protocol>();
  const listener = Deno.listen({ hostname: "127.0.0.1", port });
  console.log("ready");
  for await (const conn of listener) new Echo(users, options).serve(conn);
} else {
  startServer({
    hostname: "127.0.0.1",
    port,
    quiet: true,
    page: false,
    ...options,
  });
  console.log("ready");
}
