/**
 * The chat page the broadcast server answers plain `GET /` requests with.
 *
 * @module
 */

/**
 * A self-contained HTML chat client (no build step, no CDN) that connects back to
 * the host and path that served it (the path is the room), by ws: or wss: after the
 * page's scheme. Messages are shown
 * as text (`textContent`), never as HTML.
 *
 * @example
 * ```ts
 * import { CHAT_PAGE } from "./chat_page.ts";
 * import { assert, assertFalse } from "@std/assert";
 *
 * assert(CHAT_PAGE.startsWith("<!doctype html>"));
 * assertFalse(CHAT_PAGE.includes("innerHTML"));
 * ```
 */
export const CHAT_PAGE: string = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>twistedws chat</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 40rem; padding: 1rem; color: #222; }
  h1 { font-size: 1.2rem; margin: 0 0 .5rem; }
  #room { font-weight: normal; color: #555; }
  #state { display: inline-block; padding: .1rem .5rem; border-radius: .8rem; background: #eee; font-size: .85rem; }
  #state.open { background: #d8f5d0; } #state.closed { background: #f8d7d3; }
  #log { list-style: none; padding: .5rem; margin: 1rem 0; height: 20rem; overflow-y: auto;
         border: 1px solid #ddd; border-radius: .4rem; background: #fafafa; }
  #log li { padding: .15rem 0; white-space: pre-wrap; overflow-wrap: anywhere; }
  #log li.notice { color: #777; font-style: italic; }
  form { display: flex; gap: .5rem; }
  #text { flex: 1; padding: .4rem; font: inherit; }
  #send { padding: .4rem 1rem; font: inherit; }
</style>
</head>
<body>
<h1>twistedws chat <span id="room"></span> <span id="state">connecting</span></h1>
<ul id="log"></ul>
<form id="form"><input id="text" autocomplete="off" placeholder="Say something" autofocus><button id="send">Send</button></form>
<script>
  const state = document.getElementById("state");
  const log = document.getElementById("log");
  const input = document.getElementById("text");
  // The room is the page's path: /lobby chats with the other clients of /lobby.
  document.getElementById("room").textContent = location.pathname;
  const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + location.pathname);
  socket.binaryType = "arraybuffer";
  function show(text, className) {
    const item = document.createElement("li");
    item.textContent = text;
    if (className) item.className = className;
    log.append(item);
    log.scrollTop = log.scrollHeight;
  }
  function setState(text, className) {
    state.textContent = text;
    state.className = className;
  }
  socket.onopen = () => setState("open", "open");
  socket.onclose = (event) => setState("closed (" + event.code + ")", "closed");
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") return show("<" + event.data.byteLength + " bytes>", "notice");
    const notice = /^[0-9a-f-]{36} (dis)?connected$/.test(event.data);
    show(event.data, notice ? "notice" : "");
  };
  document.getElementById("form").onsubmit = (event) => {
    event.preventDefault();
    if (input.value && socket.readyState === WebSocket.OPEN) socket.send(input.value);
    input.value = "";
  };
</script>
</body>
</html>
`;
