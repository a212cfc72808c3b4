// npm ws 8 for bench/deflate_bench.ts: echo, or broadcast to every user (the sender
// included, no connect notices), with perMessageDeflate off, with ws's default context
// takeover, or without context takeover; threshold and level as ours (256 B, level 6).
// Usage: node ws_deflate_node.mjs PORT off|context-takeover|no-context-takeover [--echo]
import { WebSocketServer } from "ws";

const port = Number(process.argv[2]);
const mode = process.argv[3];
if (!["off", "context-takeover", "no-context-takeover"].includes(mode)) {
  throw new Error(`unknown mode ${mode}`);
}
const echo = process.argv.includes("--echo");
const noContext = mode === "no-context-takeover";
const perMessageDeflate = mode === "off" ? false : {
  threshold: 256,
  serverNoContextTakeover: noContext,
  clientNoContextTakeover: noContext,
  zlibDeflateOptions: { level: 6 },
};
const server = new WebSocketServer({
  host: "127.0.0.1",
  port,
  perMessageDeflate,
  maxPayload: 64 << 20,
});
const users = new Set();

server.on("listening", () => console.log("ready"));
server.on("connection", (socket) => {
  users.add(socket);
  socket.on("message", (data, isBinary) => {
    if (echo) return socket.send(data, { binary: isBinary });
    for (const user of users) user.send(data, { binary: isBinary });
  });
  socket.on("close", () => users.delete(socket));
});
