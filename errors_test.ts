import { assert, assertEquals } from "@std/assert";
import { FrameError, ProtocolError, WebSocketError } from "./errors.ts";

Deno.test("errors: without options, close code 1002, code WS_ERR_PROTOCOL, status 400", () => {
  for (const error of [new WebSocketError("x"), new FrameError("x"), new ProtocolError("x")]) {
    assertEquals([error.closeCode, error.code, error.status, error.message], [1002, "WS_ERR_PROTOCOL", 400, "x"]);
    assert(error instanceof WebSocketError && error instanceof Error);
  }
});

Deno.test("errors: each class has its own name, shown in its stack", () => {
  const names = [new WebSocketError("x"), new FrameError("x"), new ProtocolError("x")].map((error) => error.name);
  assertEquals(names, ["WebSocketError", "FrameError", "ProtocolError"]);
  assert(String(new FrameError("bad frame")).startsWith("FrameError: bad frame"));
});

Deno.test("errors: the cause given is kept, for every class", () => {
  const cause = new TypeError("underneath");
  for (
    const error of [
      new WebSocketError("x", { cause }),
      new FrameError("x", { cause }),
      new ProtocolError("x", { cause }),
    ]
  ) {
    assertEquals(error.cause, cause);
  }
  assertEquals(new WebSocketError("x").cause, undefined);
});
