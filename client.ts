/**
 * A command-line WebSocket client, like wscat: prints each message that arrives and
 * sends each line typed as a text message. At the end of input it closes with 1000.
 *
 * ```sh
 * deno run -N client.ts ws://localhost:9999/
 * deno run -N -R client.ts --cert certs/cert.pem wss://localhost:9999/
 * ```
 *
 * Exit status: 0 after a normal close (1000), 1 after any other close code or an
 * error (printed to stderr), 2 for wrong arguments.
 *
 * @example Parse a command line
 * ```ts
 * import { parseClientArgs } from "./client.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const parsed = parseClientArgs(["ws://localhost:9999/", "--protocol", "chat", "--header", "Origin: http://x"]);
 * assertEquals(parsed?.url, "ws://localhost:9999/");
 * assertEquals(parsed?.options.protocols, ["chat"]);
 * assertEquals(parsed?.options.headers, { Origin: "http://x" });
 * ```
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";
import { type ClientOptions, Protocol } from "./protocol.ts";
import { CloseCode } from "./frame.ts";

const USAGE = `Usage: deno run -N client.ts URL [OPTIONS]

A WebSocket client: prints what arrives, sends each line typed.

Options:
  --protocol NAME       offer this subprotocol (repeatable)
  --header "NAME: VALUE"  send this request header (repeatable)
  --cert FILE           trust this PEM certificate for wss:// (needs -R)
  --help                show this help

Exit status: 0 after a normal close (1000), 1 otherwise, 2 for wrong arguments.`;

/**
 * What a command line asks for: where to connect and how.
 *
 * @example
 * ```ts
 * import type { ClientArgs } from "./client.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const args: ClientArgs = { url: "ws://localhost:9999/", options: {} };
 * assertEquals(args.url, "ws://localhost:9999/");
 * ```
 */
export interface ClientArgs {
  /** The ws:// or wss:// URL. */
  url: string;
  /** The connect options: subprotocols, headers, trusted certificates. */
  options: ClientOptions;
}

/**
 * Parses the command line; throws `Error` with a message for the user when an
 * argument is wrong.
 *
 * @example
 * ```ts
 * import { parseClientArgs } from "./client.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * assertEquals(parseClientArgs(["--help"]), undefined);
 * assertThrows(() => parseClientArgs(["http://localhost/"]), Error, "ws:// or wss://");
 * ```
 *
 * @param args The arguments, as `Deno.args`.
 * @returns The URL and options, or `undefined` when `--help` was asked for.
 */
export function parseClientArgs(args: string[]): ClientArgs | undefined {
  const flags = parseArgs(args, {
    string: ["protocol", "header", "cert"],
    collect: ["protocol", "header"],
    boolean: ["help"],
    unknown: (arg: string) => {
      if (arg.startsWith("-")) throw new Error(`Unknown option ${arg}`);
      return true;
    },
  });
  if (flags.help) return undefined;
  if (flags._.length !== 1) throw new Error(`Expected one URL, got ${flags._.length}`);
  const url = String(flags._[0]);
  if (!/^wss?:\/\//i.test(url)) throw new Error(`URL must start with ws:// or wss://, got ${url}`);
  const options: ClientOptions = { pingInterval: 0, idleTimeout: 0 };
  if (flags.protocol.length > 0) options.protocols = flags.protocol as string[];
  if (flags.header.length > 0) {
    const headers: Record<string, string> = {};
    for (const header of flags.header as string[]) {
      const colon = header.indexOf(":");
      if (colon <= 0) throw new Error(`--header must be "NAME: VALUE", got ${JSON.stringify(header)}`);
      headers[header.slice(0, colon).trim()] = header.slice(colon + 1).trim();
    }
    options.headers = headers;
  }
  if (flags.cert !== undefined) {
    try {
      options.caCerts = [Deno.readTextFileSync(flags.cert)];
    } catch (error) {
      throw new Error(`--cert ${flags.cert}: ${error instanceof Error ? error.message : error}`);
    }
  }
  return { url, options };
}

// Prints what arrives and remembers how the connection ended.
class Printer extends Protocol {
  print: (line: string) => void = console.log;
  ended = Promise.withResolvers<void>();

  override onMessage(msg: string | Uint8Array): void {
    this.print(typeof msg === "string" ? msg : `<binary, ${msg.length} bytes>`);
  }

  override onDisconnect(): void {
    this.ended.resolve();
  }
}

/**
 * Connects, sends each line of `input` as a text message, prints each message that
 * arrives with `print`, and closes with 1000 at the end of input. Resolves with the
 * exit status: 0 after a normal close, 1 otherwise.
 *
 * @example Against the broadcast server, which sends each line back
 * ```ts
 * import { runClient } from "./client.ts";
 * import { startServer } from "./server.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const server = startServer({ port: 0, hostname: "127.0.0.1", quiet: true });
 * const printed: string[] = [];
 * const input = ReadableStream.from([new TextEncoder().encode("hello\n")]);
 * const url = `ws://127.0.0.1:${server.addr.port}/`;
 * const status = await runClient({ url, options: {} }, input, (line) => printed.push(line), AbortSignal.timeout(5000));
 * assertEquals(status, 0);
 * assertEquals(printed, ["hello"]);
 * await server.shutdown();
 * ```
 *
 * @param args Where to connect and how.
 * @param input The lines to send.
 * @param print Where messages and the close go (stdout in the CLI).
 * @param signal Aborts the connect and the wait for the end.
 * @returns The exit status.
 */
export async function runClient(
  args: ClientArgs,
  input: ReadableStream<Uint8Array>,
  print: (line: string) => void,
  signal?: AbortSignal,
): Promise<number> {
  const client = await Printer.connect(args.url, args.options);
  client.print = print;
  const aborted = new Promise<void>((resolve) => signal?.addEventListener("abort", () => resolve()));
  const sending = (async () => {
    let pending = "";
    for await (const text of input.pipeThrough(new TextDecoderStream())) {
      const lines = (pending + text).split("\n");
      pending = lines.pop()!;
      // Each line waits for its write: input never outruns the connection.
      for (const line of lines) await client.sendMessage(line.replace(/\r$/, ""));
    }
    if (pending !== "") await client.sendMessage(pending);
    client.close(CloseCode.NormalClosure);
  })();
  await Promise.race([client.ended.promise, aborted, sending.then(() => client.ended.promise)]);
  if (client.state !== "closed") client.close(CloseCode.GoingAway, "Aborted");
  const code = client.closeCode;
  if (code === CloseCode.NormalClosure) return 0;
  console.error(`closed: ${code}${client.closeReason ? ` ${client.closeReason}` : ""}`);
  return 1;
}

if (import.meta.main) {
  let args: ClientArgs | undefined;
  try {
    args = parseClientArgs(Deno.args);
  } catch (error) {
    console.error(`error: ${error instanceof Error ? error.message : error}\n\n${USAGE}`);
    Deno.exit(2);
  }
  if (args === undefined) {
    console.log(USAGE);
    Deno.exit(0);
  }
  try {
    Deno.exit(await runClient(args, Deno.stdin.readable, console.log));
  } catch (error) {
    console.error(`error: ${error instanceof Error ? error.message : error}`);
    Deno.exit(1);
  }
}
