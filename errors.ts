/**
 * Errors raised by the frame codec and the connection protocol. Each carries the
 * RFC 6455 close code to close the connection with, a stable `code` string to match
 * on, and, for handshake failures, the HTTP status to answer.
 *
 * @module
 */

/**
 * Options for {@linkcode WebSocketError} and its subclasses.
 *
 * @example
 * ```ts
 * import { ProtocolError, type WebSocketErrorOptions } from "./errors.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const options: WebSocketErrorOptions = { status: 401, code: "APP_UNAUTHORIZED" };
 * const error = new ProtocolError("missing token", options);
 * assertEquals([error.status, error.code, error.closeCode], [401, "APP_UNAUTHORIZED", 1002]);
 * ```
 */
export interface WebSocketErrorOptions {
  /** RFC 6455 7.4.1 close code to close the connection with. */
  closeCode?: number;
  /** Stable identifier of the failure, such as `WS_ERR_UNEXPECTED_RSV`. */
  code?: string;
  /** HTTP status to answer when the failure happens during the handshake. */
  status?: number;
  /** The error that caused this one. */
  cause?: unknown;
}

/**
 * Base class of the module's errors.
 *
 * @example Match on the close code
 * ```ts
 * import { WebSocketError } from "./errors.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const error = new WebSocketError("too big", { closeCode: 1009, code: "WS_ERR_TOO_BIG" });
 * assertEquals(error.closeCode, 1009);
 * assertEquals(error.code, "WS_ERR_TOO_BIG");
 * ```
 */
export class WebSocketError extends Error {
  /** RFC 6455 7.4.1 close code to close the connection with. */
  readonly closeCode: number;
  /** Stable identifier of the failure. */
  readonly code: string;
  /** HTTP status to answer, for failures during the opening handshake. */
  readonly status: number;

  /**
   * Makes an error with a message and its codes.
   *
   * @param message What was expected and what was found.
   * @param options The close code, error code, HTTP status and cause.
   */
  constructor(message: string, options: WebSocketErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = "WebSocketError";
    this.closeCode = options.closeCode ?? 1002;
    this.code = options.code ?? "WS_ERR_PROTOCOL";
    this.status = options.status ?? 400;
  }
}

/**
 * A malformed or forbidden frame. Its `closeCode` is 1002 (protocol error), 1007
 * (invalid UTF-8) or 1009 (too big).
 *
 * @example
 * ```ts
 * import { Frame } from "./frame.ts";
 * import { FrameError } from "./errors.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * // RSV1 set without a negotiated extension.
 * const error = assertThrows(() => new Frame(new Uint8Array([0xc1, 0x00])), FrameError);
 * assertEquals(error.closeCode, 1002);
 * assertEquals(error.code, "WS_ERR_UNEXPECTED_RSV");
 * ```
 */
export class FrameError extends WebSocketError {
  /**
   * Makes a frame error.
   *
   * @param message What was expected and what was found.
   * @param options The close code (default 1002) and error code.
   */
  constructor(message: string, options: WebSocketErrorOptions = {}) {
    super(message, options);
    this.name = "FrameError";
  }
}

/**
 * A violation of the connection protocol: a bad opening handshake (with the HTTP
 * `status` to answer) or a bad sequence of frames (with the `closeCode`).
 *
 * Throw it from `onHandshake` to refuse a connection with a status of your choice.
 *
 * @example
 * ```ts
 * import { ProtocolError } from "./errors.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const error = new ProtocolError("origin not allowed", { status: 403 });
 * assertEquals(error.status, 403);
 * ```
 */
export class ProtocolError extends WebSocketError {
  /**
   * Makes a protocol error.
   *
   * @param message What was expected and what was found.
   * @param options The close code (default 1002), HTTP status (default 400) and error code.
   */
  constructor(message: string, options: WebSocketErrorOptions = {}) {
    super(message, options);
    this.name = "ProtocolError";
  }
}
