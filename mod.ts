/**
 * A WebSocket server for Deno (RFC 6455), continuing the TwistedWebsocket API:
 * subclass {@linkcode Protocol}, override its callbacks, and serve connections.
 *
 * @example A broadcast handler, as in TwistedWebsocket's README
 * ```ts
 * import { Protocol } from "./mod.ts";
 * import { assertEquals } from "@std/assert";
 *
 * class Handler extends Protocol {
 *   override onMessage(msg: string | Uint8Array) {
 *     Protocol.broadcast(this.users.values(), msg);
 *   }
 * }
 * const users = new Map<string, Protocol>();
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const socket = new WebSocket(`ws://127.0.0.1:${listener.addr.port}/`);
 * const served = new Handler(users).serve(await listener.accept());
 * listener.close();
 * const echoed = await new Promise((resolve) => {
 *   socket.onopen = () => socket.send("hello");
 *   socket.onmessage = (event) => resolve(event.data);
 * });
 * assertEquals(echoed, "hello"); // to every user, the sender included
 * assertEquals(users.size, 1);
 * socket.close();
 * await served;
 * assertEquals(users.size, 0);
 * ```
 *
 * @module
 */
export * from "./errors.ts";
export * from "./frame.ts";
export * from "./protocol.ts";
export * from "./bus.ts";
