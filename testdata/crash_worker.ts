// A worker for workers_test.ts that speaks the pool's protocol (see _workers.ts) and
// crashes with an uncaught error when told to; it answers "ping" with its start count.
/// <reference lib="deno.worker" />
let started = "";
self.onmessage = (event: MessageEvent) => {
  const message = event.data;
  if (message.type === "start") {
    started = `${message.index}:${message.generation ?? ""}`;
    self.postMessage({ type: "ready" });
  } else if (message.type === "crash") {
    setTimeout(() => {
      throw new Error("told to crash");
    });
  } else if (message.type === "ping") {
    self.postMessage({ type: "pong", started });
  } else if (message.type === "shutdown") {
    self.postMessage({ type: "stopped" });
  }
};
