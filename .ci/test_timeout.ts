// A time bound for every test: `deno test --preload .ci/test_timeout.ts` gives each
// Deno.test that sets no `timeout` of its own one of TEST_TIMEOUT_MS milliseconds
// (default 60,000). Deno 2.9.6 has the per-test `timeout` option but no flag or
// deno.json setting for a default, and doc tests cannot set it; this wrapper covers
// both. A hung test then fails with "Test timed out after N ms" under its own name,
// and the run goes on to the next test.

const timeout = Number(Deno.env.get("TEST_TIMEOUT_MS") ?? 60_000);
// Deno reads a test's location from this symbol on its function when set (cli/js
// 40_test.js), else from the caller, which would be this file.
const LOCATION = Symbol.for("Deno.test.location");
const register = Deno.test;

type TestFn = (t: Deno.TestContext) => void | Promise<void>;
type Registered = TestFn & { [LOCATION]?: string };

// The caller of Deno.test: the third line of the stack, after Error and bounded().
function callerLocation(): string | undefined {
  const line = new Error().stack?.split("\n")[3];
  return line?.match(/\(?((?:file|data):.*:\d+:\d+)\)?$/)?.[1];
}

function bounded(...args: unknown[]): void {
  if (typeof args[0] === "string" && typeof args[1] === "function") {
    args = [args[0], { timeout }, args[1]];
  } else if (typeof args[0] === "string" && typeof args[1] === "object") {
    args[1] = { timeout, ...args[1] };
  } else if (typeof args[0] === "object") {
    args[0] = { timeout, ...args[0] };
  }
  const fn = (args.find((arg) => typeof arg === "function") ?? (args[0] as { fn?: TestFn }).fn) as
    | Registered
    | undefined;
  const location = callerLocation();
  if (fn !== undefined && location !== undefined && fn[LOCATION] === undefined) fn[LOCATION] = location;
  return (register as (...args: unknown[]) => void)(...args);
}

if (Number.isFinite(timeout) && timeout > 0) {
  Object.assign(bounded, register); // test.ignore, test.only, the hooks
  (Deno as { test: unknown }).test = bounded;
}
