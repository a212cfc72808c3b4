// GET /metrics of the broadcast server, in-process, with a LocalBus: the Prometheus text
// for rooms, messages and bytes both ways, closes by code, and the bus.
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { LocalBus } from "./bus.ts";
import { startServer } from "./server.ts";
import { Client } from "./testdata/cluster.ts";

function samples(text: string): Map<string, number> {
  const lines = text.split("\n").filter((line) => line !== "" && !line.startsWith("#"));
  return new Map(
    lines.map((line) => [line.slice(0, line.lastIndexOf(" ")), Number(line.slice(line.lastIndexOf(" ") + 1))]),
  );
}

Deno.test("metrics: GET /metrics counts rooms, messages and bytes, closes by code, and the bus", async () => {
  const bus = new LocalBus(`metrics-test-${crypto.randomUUID()}`);
  const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true, metrics: true, bus });
  const plain = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
  const url = (room: string) => `ws://127.0.0.1:${server.addr.port}${room}`;
  const clients: Client[] = [];
  try {
    const [a, b, c] = [await Client.open(url("/")), await Client.open(url("/")), await Client.open(url("/lobby"))];
    clients.push(a, b, c);
    await a.notice(/ connected$/);
    a.socket.send("héllo"); // 6 bytes in UTF-8, to 2 members of /
    await a.received(1);
    await b.received(1);
    c.socket.send(new Uint8Array(100)); // to 1 member of /lobby
    await c.received(1);
    b.socket.close(4000, "bye");
    await b.closed;
    await a.notice(/ disconnected$/);

    const response = await fetch(`http://127.0.0.1:${server.addr.port}/metrics`);
    assertEquals(response.status, 200);
    assertEquals(response.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    const text = await response.text();
    assertStringIncludes(
      text,
      "# HELP twistedws_connections Open WebSocket connections, by room.\n# TYPE twistedws_connections gauge\n",
    );
    assertStringIncludes(text, "# TYPE twistedws_closes_total counter\n");
    const values = samples(text);
    const notice = 36 + " connected".length;
    assertEquals(Object.fromEntries(values), {
      'twistedws_connections{room="/"}': 1,
      'twistedws_connections{room="/lobby"}': 1,
      twistedws_messages_received_total: 2,
      twistedws_received_bytes_total: 6 + 100,
      // b's connect notice to a, "héllo" to a and b, the binary to c, b's disconnect notice to a
      twistedws_messages_sent_total: 5,
      twistedws_sent_bytes_total: notice + 2 * 6 + 100 + (notice + 3),
      'twistedws_closes_total{code="4000"}': 1,
      twistedws_backpressure_drops_total: 0,
      twistedws_bus_connected: 1,
      twistedws_bus_published_total: 6, // 3 connect notices, 2 messages, 1 disconnect notice
      twistedws_bus_unsent_total: 0,
      twistedws_bus_received_total: 0,
      twistedws_bus_reconnects_total: 0,
      twistedws_bus_undecodable_total: 0,
    });

    // Off by default: /metrics is then only another room's chat page.
    const off = await fetch(`http://127.0.0.1:${plain.addr.port}/metrics`);
    const body = await off.text();
    assert(!body.includes("twistedws_"), "metrics were served without --metrics");
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await server.shutdown();
    await plain.shutdown();
    await bus.close();
  }
});
