// Reference server: Node + npm ws 8, the same behaviour as server.ts.
// Usage: node ws_node.mjs PORT [--echo]
import { randomUUID } from "node:crypto";
import { WebSocket, WebSocketServer } from "ws";

const port = Number(process.argv[2]);
const echo = process.argv.includes("--echo");
const users = new Map();
const server = new WebSocketServer({
  host: "127.0.0.1",
  port,
  perMessageDeflate: false,
  maxPayload: 64 << 20,
});

function broadcast(data, isBinary, except) {
  for (const user of users.values()) {
    if (user !== except && user.readyState === WebSocket.OPEN) {
      user.send(data, { binary: isBinary });
    }
  }
}

server.on("listening", () => console.log("ready"));
server.on("connection", (socket) => {
  const id = randomUUID();
  if (!echo) broadcast(`${id} connected`, false);
  users.set(id, socket);
  socket.on(
    "message",
    (data, isBinary) => echo ? socket.send(data, { binary: isBinary }) : broadcast(data, isBinary),
  );
  socket.on("close", () => {
    users.delete(id);
    if (!echo) broadcast(`${id} disconnected`, false);
  });
});
