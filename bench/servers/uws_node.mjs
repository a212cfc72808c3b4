// Reference server: uWebSockets.js (npm uwebsockets) on Node, the same behaviour as the others:
// /echo echoes each message to its sender; any other path broadcasts each message to every
// connection, the sender included (uWS's own pub/sub, one topic); no connect notices.
// Usage: node uws_node.mjs PORT
import uws from "uwebsockets";

const port = Number(process.argv[2]);
// Loads keep far more in flight than the defaults allow (64 KiB of backpressure, 16 KiB
// messages); over maxBackpressure uWS drops messages, which the load generator reports.
const behaviour = {
  compression: uws.DISABLED,
  maxPayloadLength: 64 << 20,
  maxBackpressure: 256 << 20,
  idleTimeout: 0,
  sendPingsAutomatically: false,
};

const app = uws.App();
app
  .ws("/echo", {
    ...behaviour,
    message: (ws, message, isBinary) => ws.send(message, isBinary),
  })
  .ws("/*", {
    ...behaviour,
    open: (ws) => ws.subscribe("all"),
    message: (_ws, message, isBinary) => app.publish("all", message, isBinary),
  })
  .listen("127.0.0.1", port, (token) => {
    if (!token) {
      console.error(`uws_node.mjs: cannot listen on 127.0.0.1:${port}`);
      process.exit(1);
    }
    console.log("ready");
  });
