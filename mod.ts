/**
 * A WebSocket server for Deno (RFC 6455), continuing the TwistedWebsocket API:
 * subclass {@linkcode Protocol}, override its callbacks, and serve connections.
 *
 * @example A broadcast handler, as in TwistedWebsocket's README
 * ```ts
 * import { Protocol } from "./mod.ts";
 *
 * class Handler extends Protocol {
 *   override onMessage(msg: string | Uint8Array) {
 *     Protocol.broadcast(this.users.values(), msg);
 *   }
 * }
 * const users = new Map<string, Protocol>();
 * const handler = new Handler(users);
 * ```
 *
 * @module
 */
export * from "./errors.ts";
export * from "./frame.ts";
export * from "./protocol.ts";
export * from "./bus.ts";
