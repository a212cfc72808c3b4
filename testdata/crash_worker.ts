// A worker for workers_test.ts that speaks the pool's protocol (see _workers.ts) and
// crashes with an uncaught error when told to; it answers "ping" with its start count
// and the peers it was given a port to.
/// <reference lib="deno.worker" />
let started = "";
const peers: string[] = [];
self.onmessage = (event: MessageEvent) => {
  const message = event.data;
  if (message.type === "start") {
    started = `${message.index}:${message.generation ?? ""}`;
    peers.push(...Object.keys(message.peers));
    self.postMessage({ type: "ready" });
  } else if (message.type === "crash") {
    setTimeout(() => {
      throw new Error("told to crash");
    });
  } else if (message.type === "peer") {
    peers.push(message.index);
  } else if (message.type === "ping") {
    self.postMessage({ type: "pong", started: `${started} peers ${peers.join(",")}` });
  } else if (message.type === "shutdown") {
    self.postMessage({ type: "stopped" });
  }
};
