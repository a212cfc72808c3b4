// A worker for bus_test.ts: its own users map on a PortBus (the port comes in the first
// message), with one subscriber of "ping" over an in-memory connection; every message it
// gets is published back on "pong".
import { attachBus, PortBus } from "../bus.ts";
import { Protocol } from "../protocol.ts";
import { openInMemory } from "./memory_conn.ts";

class Relay extends Protocol {
  override onConnect(): void {
    this.subscribe("ping");
  }
}

const users = new Map<string, Protocol>();
const bus = new PortBus();
attachBus(users, bus);
const port = await new Promise<MessagePort>((resolve) => self.onmessage = (event) => resolve(event.data));
bus.connect("main", port);
const relay = new Relay(users, { pingInterval: 0, idleTimeout: 0 });
const { conn } = await openInMemory(relay);
let relayed = 0;
// Each message the subscriber is sent goes back out on "pong", as a server's handler would.
(async () => {
  while (true) {
    const messages = await conn.received(relayed + 1, 10_000);
    for (const msg of messages.slice(relayed)) relay.publish("pong", msg);
    relayed = messages.length;
  }
})();
self.postMessage("ready");
self.onmessage = async () => {
  relay.close();
  await bus.close();
  self.postMessage("closed");
};
