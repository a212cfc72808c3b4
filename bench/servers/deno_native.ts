// Reference server: Deno.serve + Deno.upgradeWebSocket. /echo echoes each message to its
// sender; any other path broadcasts each message to every connection, the sender included;
// no connect notices.
// Usage: deno run -N deno_native.ts PORT
const port = Number(Deno.args[0]);
const users = new Set<WebSocket>();

Deno.serve({
  hostname: "127.0.0.1",
  port,
  onListen: () => console.log("ready"),
}, (request) => {
  // Heartbeats off, as in the other servers (its default pings after 30 s idle and closes
  // without a pong, and the load generator answers none).
  const { socket, response } = Deno.upgradeWebSocket(request, { idleTimeout: 0 });
  socket.binaryType = "arraybuffer";
  if (new URL(request.url).pathname === "/echo") {
    socket.onmessage = (event) => socket.send(event.data);
    return response;
  }
  socket.onopen = () => users.add(socket);
  socket.onmessage = (event) => {
    for (const user of users) {
      if (user.readyState === WebSocket.OPEN) user.send(event.data);
    }
  };
  socket.onclose = () => users.delete(socket);
  return response;
});
