// Python websockets as a real peer: Debian's python3 (the pyenv python3 first on PATH
// cannot see Debian's modules), and its scripts here, driven by JSON lines. Not part of the module.
import { peerMissing, Queue } from "../test_util.ts";

const PYTHON = "/usr/bin/python3";
export const pythonMissing: boolean = peerMissing(() =>
  new Deno.Command(PYTHON, { args: ["-c", "import websockets"], stderr: "null" }).outputSync().success
);

/** What python_peer.py prints, one JSON object a line. */
export type PeerScriptEvent =
  | { ev: "open"; extensions: string | null }
  | { ev: "text"; data: string }
  | { ev: "binary"; b64: string }
  | { ev: "close"; code: number; reason: string };

/** A Python script of testdata/ that reads commands from its stdin and prints events, one JSON object a line. */
export interface PythonChild<T> {
  readonly process: Deno.ChildProcess;
  /** The events it printed, in order. */
  readonly events: Queue<T>;
  /** Resolves once its stdout has ended. */
  readonly reading: Promise<void>;
  /** Writes one command. */
  send(command: unknown): void;
  /** Closes its stdin, which ends the script. */
  endInput(): Promise<void>;
}

export function pythonChild<T>(script: string, args: string[] = []): PythonChild<T> {
  const process = new Deno.Command(PYTHON, {
    args: [new URL(script, import.meta.url).pathname, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const events = new Queue<T>();
  const reading = (async () => {
    let pending = "";
    for await (const chunk of process.stdout.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      for (let newline = pending.indexOf("\n"); newline >= 0; newline = pending.indexOf("\n")) {
        events.push(JSON.parse(pending.slice(0, newline)));
        pending = pending.slice(newline + 1);
      }
    }
  })();
  const stdin = process.stdin.getWriter();
  const encoder = new TextEncoder();
  return {
    process,
    events,
    reading,
    send: (command) => void stdin.write(encoder.encode(JSON.stringify(command) + "\n")),
    endInput: () => stdin.close().catch(() => {}),
  };
}
