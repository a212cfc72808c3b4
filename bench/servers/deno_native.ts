// Reference server: Deno.serve + Deno.upgradeWebSocket, the same behaviour as server.ts.
// Usage: deno run -N deno_native.ts PORT [--echo]
const port = Number(Deno.args[0]);
const echo = Deno.args.includes("--echo");
const users = new Map<string, WebSocket>();

Deno.serve({
  hostname: "127.0.0.1",
  port,
  onListen: () => console.log("ready"),
}, (request) => {
  const { socket, response } = Deno.upgradeWebSocket(request);
  const id = crypto.randomUUID();
  const broadcast = (data: string | ArrayBuffer, except?: WebSocket) => {
    for (const user of users.values()) {
      if (user !== except && user.readyState === WebSocket.OPEN) {
        user.send(data);
      }
    }
  };
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    if (!echo) broadcast(`${id} connected`);
    users.set(id, socket);
  };
  socket.onmessage = (event) => echo ? socket.send(event.data) : broadcast(event.data);
  socket.onclose = () => {
    users.delete(id);
    if (!echo) broadcast(`${id} disconnected`);
  };
  return response;
});
