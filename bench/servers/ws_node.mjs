// Reference server: Node + npm ws 8, no compression. /echo echoes each message to its
// sender; any other path broadcasts each message to every connection, the sender included;
// no connect notices.
// Usage: node ws_node.mjs PORT
import { WebSocket, WebSocketServer } from "ws";

const port = Number(process.argv[2]);
const users = new Set();
const server = new WebSocketServer({
  host: "127.0.0.1",
  port,
  perMessageDeflate: false,
  maxPayload: 64 << 20,
});

server.on("listening", () => console.log("ready"));
server.on("connection", (socket, request) => {
  if (new URL(request.url, "ws://127.0.0.1").pathname === "/echo") {
    socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }));
    return;
  }
  users.add(socket);
  socket.on("message", (data, isBinary) => {
    for (const user of users) {
      if (user.readyState === WebSocket.OPEN) user.send(data, { binary: isBinary });
    }
  });
  socket.on("close", () => users.delete(socket));
});
