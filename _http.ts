// HTTP/1.1 for the opening handshake (RFC 6455 4.2, RFC 7230): parsing the request head,
// the accept key, and the responses. Private to the module; protocol.ts re-exports the
// public parts.

import { ProtocolError } from "./errors.ts";

/**
 * The parsed opening handshake request, as `this.request` in a {@linkcode Protocol}.
 *
 * @example Refuse connections without a token in the query
 * ```ts
 * import { Protocol } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * class Handler extends Protocol {
 *   override onHandshake() {
 *     return this.request?.query.get("token") === "secret";
 *   }
 * }
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * async function opens(token: string): Promise<boolean> {
 *   const socket = new WebSocket(`ws://127.0.0.1:${listener.addr.port}/?token=${token}`);
 *   const served = new Handler(new Map()).serve(await listener.accept());
 *   const opened = await new Promise<boolean>((resolve) => {
 *     socket.onopen = () => resolve(true);
 *     socket.onerror = () => resolve(false);
 *   });
 *   socket.close();
 *   await served;
 *   return opened;
 * }
 * assertEquals(await opens("secret"), true);
 * assertEquals(await opens("guess"), false); // refused with 403
 * listener.close();
 * ```
 */
export interface HandshakeRequest {
  /** The request method, such as `GET`. */
  method: string;
  /** The request target's path, such as `/chat`. */
  path: string;
  /** The request target's query parameters. */
  query: URLSearchParams;
  /** The request headers. */
  headers: Headers;
}

/**
 * An HTTP answer to a request that is not a WebSocket upgrade (see `onHttpRequest`).
 *
 * @example
 * ```ts
 * import { type HandshakeRequest, type HttpResponse, Protocol } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * class Handler extends Protocol {
 *   override onHttpRequest(request: HandshakeRequest): HttpResponse | undefined {
 *     if (request.path === "/health") return { status: 200, body: "ok" };
 *   }
 * }
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const response = fetch(`http://127.0.0.1:${listener.addr.port}/health`);
 * const served = new Handler(new Map()).serve(await listener.accept());
 * listener.close();
 * assertEquals([(await response).status, await (await response).text()], [200, "ok"]);
 * await served;
 * ```
 */
export interface HttpResponse {
  /** The status code. */
  status: number;
  /** Extra headers; `Content-Length` and `Connection: close` are added. */
  headers?: Record<string, string>;
  /** The body. */
  body?: string | Uint8Array;
}

// RFC 6455 1.3: the GUID appended to Sec-WebSocket-Key.
const WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const STATUS_TEXT: Readonly<Record<number, string>> = {
  101: "Switching Protocols",
  200: "OK",
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  426: "Upgrade Required",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  503: "Service Unavailable",
};
const encoder = new TextEncoder();

/**
 * The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (RFC 6455 4.2.2): the
 * base64 SHA-1 of the key and the protocol's GUID.
 *
 * @example The RFC 6455 1.3 example
 * ```ts
 * import { computeAcceptKey } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(await computeAcceptKey("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
 * ```
 *
 * @param key The client's `Sec-WebSocket-Key`.
 * @returns The base64 accept value.
 */
// deno-lint-ignore require-await
export async function computeAcceptKey(key: string): Promise<string> {
  return acceptKey(key);
}

// The accept value, synchronously: crypto.subtle.digest is an async op, which cost a
// handshake about 30 µs of server CPU in a connect storm (10% of it); this takes 1-2 µs.
export function acceptKey(key: string): string {
  return sha1(encoder.encode(key + WEBSOCKET_GUID)).toBase64();
}

// SHA-1 (FIPS 180-4 6.1) for short inputs such as the handshake's 60 bytes: what RFC
// 6455 4.2.2 asks for, not for any use that needs a secure hash.
const schedule = new Int32Array(80);
export function sha1(message: Uint8Array): Uint8Array {
  // FIPS 180-4 5.1.1: a 1 bit, zeros, and the length in bits as 64 bits, to whole 64-byte blocks.
  const padded = new Uint8Array((((message.length + 8) >> 6) + 1) * 64);
  padded.set(message);
  padded[message.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(message.length / 0x20000000));
  view.setUint32(padded.length - 4, (message.length * 8) >>> 0);
  let h0 = 0x67452301, h1 = -0x10325477, h2 = -0x67452302, h3 = 0x10325476, h4 = -0x3c2d1e10;
  const w = schedule;
  for (let offset = 0; offset < padded.length; offset += 64) {
    for (let t = 0; t < 16; t++) w[t] = view.getInt32(offset + 4 * t);
    for (let t = 16; t < 80; t++) {
      const x = w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16];
      w[t] = (x << 1) | (x >>> 31);
    }
    let a = h0, b = h1, c = h2, d = h3, e = h4;
    for (let t = 0; t < 80; t++) {
      // FIPS 180-4 4.1.1 and 4.2.1: the function and constant of each 20 rounds.
      const f = t < 20
        ? ((b & c) | (~b & d)) + 0x5a827999
        : t < 40
        ? (b ^ c ^ d) + 0x6ed9eba1
        : t < 60
        ? ((b & c) | (b & d) | (c & d)) - 0x70e44324
        : (b ^ c ^ d) - 0x359d3e2a;
      const next = (((a << 5) | (a >>> 27)) + f + e + w[t]) | 0;
      e = d;
      d = c;
      c = (b << 30) | (b >>> 2);
      b = a;
      a = next;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
  }
  const digest = new Uint8Array(20);
  const out = new DataView(digest.buffer);
  [h0, h1, h2, h3, h4].forEach((h, i) => out.setInt32(4 * i, h));
  return digest;
}

// RFC 7230 3.1.1 and 3.2: request line, then header fields, no obsolete line folding.
export function parseRequestHead(head: string, maxHeaders: number): HandshakeRequest {
  const lines = head.split("\r\n");
  const requestLine = lines[0].split(" ");
  if (requestLine.length !== 3 || !requestLine[0] || !requestLine[1]) {
    throw new ProtocolError("Malformed request line");
  }
  const [method, target, version] = requestLine;
  if (version !== "HTTP/1.1") throw new ProtocolError(`HTTP version must be HTTP/1.1, got ${version}`);
  if (lines.length - 1 > maxHeaders) {
    throw new ProtocolError(`More than ${maxHeaders} header fields`, { status: 431 });
  }
  const headers = new Headers();
  for (let i = 1; i < lines.length; i++) {
    const colon = lines[i].indexOf(":");
    const name = lines[i].slice(0, colon);
    if (colon <= 0 || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) {
      throw new ProtocolError(`Malformed header line ${JSON.stringify(lines[i].slice(0, 40))}`);
    }
    try {
      headers.append(name, lines[i].slice(colon + 1).trim());
    } catch (cause) {
      throw new ProtocolError(`Invalid value of header ${name}`, { cause });
    }
  }
  // RFC 7230 5.3: origin-form ("/path?query"); absolute-form is accepted too.
  const url = URL.parse(target, "http://localhost");
  if (url === null || !(target.startsWith("/") || /^https?:\/\//i.test(target))) {
    throw new ProtocolError(`Malformed request target ${JSON.stringify(target.slice(0, 40))}`);
  }
  return { method, path: url.pathname, query: url.searchParams, headers };
}

// Whether a comma-separated header value holds `token`, case-insensitively.
export function hasToken(value: string | null, token: string): boolean {
  return value !== null && value.split(",").some((part) => part.trim().toLowerCase() === token);
}

// An HTTP/1.1 response that closes the connection: for refusals and plain requests.
export function httpResponse(response: HttpResponse): Uint8Array {
  const body = typeof response.body === "string" ? encoder.encode(response.body) : response.body ?? new Uint8Array(0);
  const headers = new Headers({ "Content-Type": "text/plain; charset=utf-8", ...response.headers });
  if (response.status === 426) headers.set("Sec-WebSocket-Version", "13");
  if (response.status === 405) headers.set("Allow", "GET");
  headers.set("Content-Length", `${body.length}`);
  headers.set("Connection", "close");
  let head = `HTTP/1.1 ${response.status} ${STATUS_TEXT[response.status] ?? ""}\r\n`;
  for (const [name, value] of headers) head += `${name}: ${value}\r\n`;
  const headBytes = encoder.encode(head + "\r\n");
  const bytes = new Uint8Array(headBytes.length + body.length);
  bytes.set(headBytes);
  bytes.set(body, headBytes.length);
  return bytes;
}

// The 101 answer that completes the handshake (RFC 6455 4.2.2), with the accepted
// extension (RFC 6455 9.1; only permessage-deflate is implemented), or none.
export function switchingProtocols(accept: string, protocol: string, extensions = ""): Uint8Array {
  return encoder.encode(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept}\r\n` + (protocol ? `Sec-WebSocket-Protocol: ${protocol}\r\n` : "") +
      (extensions ? `Sec-WebSocket-Extensions: ${extensions}\r\n` : "") + "\r\n",
  );
}

/** What a valid upgrade request asks for: its key and the subprotocols it offers. */
export interface UpgradeRequest {
  key: string;
  offered: string[];
}

// RFC 6455 4.2.1: a request is a WebSocket opening handshake if it carries any of the
// handshake's headers; only requests with none of them are plain HTTP.
export function isUpgradeAttempt(headers: Headers): boolean {
  return headers.has("upgrade") || headers.has("sec-websocket-key") || headers.has("sec-websocket-version") ||
    hasToken(headers.get("connection"), "upgrade");
}

// RFC 6455 4.2.1 and 4.2.2: checks an opening handshake; throws ProtocolError with the
// HTTP status to answer.
export function checkUpgrade(
  request: HandshakeRequest,
  allowedOrigins?: readonly string[] | ((origin: string | null) => boolean),
): UpgradeRequest {
  const { headers } = request;
  if (request.method !== "GET") throw new ProtocolError(`Method must be GET, got ${request.method}`, { status: 405 });
  if (!headers.has("host")) throw new ProtocolError("Missing Host header");
  if (!hasToken(headers.get("upgrade"), "websocket")) throw new ProtocolError("Upgrade header must be websocket");
  if (!hasToken(headers.get("connection"), "upgrade")) {
    throw new ProtocolError("Connection header must contain upgrade");
  }
  // 16 bytes in base64: 22 characters, the last holding 2 bits, then "==".
  const key = headers.get("sec-websocket-key") ?? "";
  if (!/^[A-Za-z0-9+/]{21}[AQgw]==$/.test(key)) throw new ProtocolError("Sec-WebSocket-Key must be 16 bytes in base64");
  const version = headers.get("sec-websocket-version");
  if (version === null) throw new ProtocolError("Missing Sec-WebSocket-Version header");
  if (version.trim() !== "13") {
    throw new ProtocolError(`Unsupported Sec-WebSocket-Version ${version}; this server speaks 13`, { status: 426 });
  }
  // RFC 6455 10.2: the server decides which origins may connect.
  const origin = headers.get("origin");
  const allowed = allowedOrigins === undefined ||
    (typeof allowedOrigins === "function"
      ? allowedOrigins(origin)
      : origin !== null && allowedOrigins.includes(origin));
  if (!allowed) throw new ProtocolError(`Origin ${origin} is not allowed`, { status: 403 });
  const offered = (headers.get("sec-websocket-protocol") ?? "").split(",").map((p) => p.trim()).filter(Boolean);
  return { key, offered };
}

/** What a client asks for in its opening handshake (RFC 6455 4.1). */
export interface ClientRequest {
  url: URL;
  key: string;
  protocols: readonly string[];
  headers: Readonly<Record<string, string>>;
  /** The `Sec-WebSocket-Extensions` offer, if any. */
  extensions?: string;
}

// RFC 6455 4.1: the client's opening handshake; the caller's headers come after ours
// and may not replace them.
export function requestHead(request: ClientRequest): Uint8Array {
  const { url } = request;
  const lines = [
    `GET ${url.pathname}${url.search} HTTP/1.1`,
    `Host: ${url.host}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    `Sec-WebSocket-Key: ${request.key}`,
    "Sec-WebSocket-Version: 13",
  ];
  if (request.protocols.length > 0) lines.push(`Sec-WebSocket-Protocol: ${request.protocols.join(", ")}`);
  if (request.extensions !== undefined) lines.push(`Sec-WebSocket-Extensions: ${request.extensions}`);
  const reserved = new Set([
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol", // offered with `protocols`, so that the answer can be checked
    "sec-websocket-extensions", // offered with `compression`
  ]);
  for (const [name, value] of Object.entries(request.headers)) {
    if (reserved.has(name.toLowerCase())) throw new TypeError(`Header ${name} is set by the handshake`);
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || /[\r\n]/.test(value)) {
      throw new TypeError(`Invalid header ${JSON.stringify(name)}`);
    }
    lines.push(`${name}: ${value}`);
  }
  return encoder.encode(lines.join("\r\n") + "\r\n\r\n");
}

/** What a client's request asked for, to check the answer against. */
export interface ExpectedAnswer {
  /** The `Sec-WebSocket-Accept` the key gives. */
  accept: string;
  /** The subprotocols offered. */
  protocols: readonly string[];
  /** Whether extensions were offered; the caller checks the answer's (`extensions`). */
  extensions: boolean;
}

/** What the server chose: a subprotocol (or ""), and its `Sec-WebSocket-Extensions`, if any. */
export interface Answer {
  protocol: string;
  extensions: string | null;
}

// RFC 6455 4.1 (the client's checks of the answer, 4.2.2 on the server's side): 101,
// Upgrade and Connection, the accept key, and no subprotocol or extension that was not
// asked for. Any failure throws ProtocolError with the answer's status.
export function checkResponse(head: string, expected: ExpectedAnswer): Answer {
  const lines = head.split("\r\n");
  const match = /^HTTP\/1\.1 (\d{3})(?: (.*))?$/.exec(lines[0]);
  if (match === null) throw new ProtocolError(`Malformed status line ${JSON.stringify(lines[0].slice(0, 40))}`);
  const status = Number(match[1]);
  const fail = (message: string, code: string) => new ProtocolError(message, { status, code });
  if (status !== 101) {
    // Redirects are not followed: the caller decides where to connect.
    throw fail(`Server answered ${status} ${match[2] ?? ""}, not 101`.trim(), "WS_ERR_HANDSHAKE_STATUS");
  }
  const headers = new Headers();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon <= 0) throw fail(`Malformed header line ${JSON.stringify(line.slice(0, 40))}`, "WS_ERR_HANDSHAKE");
    try {
      headers.append(line.slice(0, colon), line.slice(colon + 1).trim());
    } catch {
      throw fail(`Malformed header line ${JSON.stringify(line.slice(0, 40))}`, "WS_ERR_HANDSHAKE");
    }
  }
  if (!hasToken(headers.get("upgrade"), "websocket")) {
    throw fail("Upgrade header must be websocket", "WS_ERR_HANDSHAKE");
  }
  if (!hasToken(headers.get("connection"), "upgrade")) {
    throw fail("Connection header must contain upgrade", "WS_ERR_HANDSHAKE");
  }
  const answered = headers.get("sec-websocket-accept");
  if (answered !== expected.accept) {
    throw fail(`Sec-WebSocket-Accept must be ${expected.accept}, got ${answered}`, "WS_ERR_INVALID_ACCEPT");
  }
  const extensions = headers.get("sec-websocket-extensions");
  if (extensions !== null && !expected.extensions) {
    throw fail(`Extension ${extensions} was not requested`, "WS_ERR_UNREQUESTED_EXTENSION");
  }
  const protocol = headers.get("sec-websocket-protocol") ?? "";
  if (protocol !== "" && !expected.protocols.includes(protocol)) {
    throw fail(`Subprotocol ${protocol} was not requested`, "WS_ERR_UNREQUESTED_PROTOCOL");
  }
  return { protocol, extensions };
}
