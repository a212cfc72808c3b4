/**
 * The chat page the broadcast server answers plain `GET /` requests with.
 *
 * @module
 */

/**
 * A self-contained HTML chat client (no build step, no CDN) that connects back to
 * the host that served it, by ws: or wss: after the page's scheme.
 *
 * @example
 * ```ts
 * import { CHAT_PAGE } from "./chat_page.ts";
 *
 * console.log(CHAT_PAGE.startsWith("<!doctype html>")); // true
 * ```
 */
export const CHAT_PAGE: string = `<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>twistedws chat</title>
<p id="state">connecting</p>
<ul id="log"></ul>
<form id="form"><input id="text" autocomplete="off"><button>Send</button></form>
<script>
const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/");
const log = document.getElementById("log");
socket.onopen = () => document.getElementById("state").textContent = "open";
socket.onclose = (e) => document.getElementById("state").textContent = "closed (" + e.code + ")";
socket.onmessage = (e) => {
  const item = document.createElement("li");
  item.textContent = e.data;
  log.append(item);
};
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  if (input.value) socket.send(input.value);
  input.value = "";
};
</script>
</html>
`;
