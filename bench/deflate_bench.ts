// permessage-deflate: what compression costs and saves.
//
//   deno run -A --config deno.json bench/deflate_bench.ts [--quick] [--part codec,bomb,echo,fanout]
//
//   codec:  the candidates for the implementation, in this process: µs a message to
//           compress and inflate, bytes out, memory of a zlib context.
//   bomb:   a 32 KiB frame that inflates to 32 MiB, fed to a Core in a fresh process:
//           time to the 1009, and peak memory.
//   echo:   one connection, 16 messages in flight, to our server with compression off
//           and in each mode: server CPU and wire bytes a message.
//   fanout: 1,000 receivers and a sender; every message goes to all of them. Ours
//           against npm ws with perMessageDeflate: deliveries per server CPU-second.
//
// Servers run pinned to core 0, this process (its clients) to core 1; loopback only.
// Server CPU is read from /proc/PID/task/*/schedstat: nanoseconds, every thread (ws
// compresses in Node's thread pool). Figures are medians of 3 runs, with [min-max]. The
// machine is shared with other work: the spread says how far to trust a median.
import { parseArgs } from "@std/cli/parse-args";
import { constants, deflateRawSync, inflateRawSync } from "node:zlib";
import { Core, resolveOptions } from "../_core.ts";
import { ZlibStream } from "../_deflate.ts";
import { encodeFrame, Opcode } from "../frame.ts";

const flags = parseArgs(Deno.args, {
  boolean: ["quick"],
  string: ["part", "bomb-child", "memory-child"],
});
const QUICK = flags.quick;
const PARTS = (flags.part ?? "codec,bomb,echo,fanout").split(",");
const REPS = 3;
const HERE = new URL(".", import.meta.url).pathname;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;
const encoder = new TextEncoder();
const KiB = 1024;

// ---------------------------------------------------------------- helpers

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function median(
  values: number[],
): { median: number; min: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    median: sorted[Math.floor(sorted.length / 2)],
    min: sorted[0],
    max: sorted.at(-1)!,
  };
}

function spread(values: number[], digits = 1): string {
  const { median: m, min, max } = median(values);
  return `${m.toFixed(digits)} [${min.toFixed(digits)}-${max.toFixed(digits)}]`;
}

// CPU nanoseconds of every thread of a process.
function cpuNs(pid: number): number {
  let total = 0;
  for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      total += Number(
        Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/schedstat`).split(
          " ",
        )[0],
      );
    } catch {
      // The thread ended meanwhile.
    }
  }
  return total;
}

function statusKiB(pid: number | "self", field: string): number {
  return Number(
    new RegExp(`${field}:\\s+(\\d+)`).exec(
      Deno.readTextFileSync(`/proc/${pid}/status`),
    )![1],
  );
}

function pin(core: number): boolean {
  return new Deno.Command("taskset", {
    args: ["-apc", String(core), String(Deno.pid)],
    stdout: "null",
  })
    .outputSync().success;
}

// JSON-like text: records that repeat in shape, not in content.
function json(size: number, seed: number): string {
  let text = "[";
  for (let i = 0; text.length < size; i++) {
    const id = seed * 100_000 + i;
    text += JSON.stringify({
      id,
      user: `user${(id * 7919) % 1000}`,
      room: `room-${id % 13}`,
      ts: 1_700_000_000_000 + id * 1371,
      text: `message ${id}: ${Math.sin(id).toString(36).slice(2, 12)}`,
      ok: id % 3 === 0,
    }) + ",";
  }
  return text.slice(0, size);
}

type Kind = "32 B JSON" | "1 KiB JSON" | "16 KiB JSON" | "16 KiB random";
const KINDS: Kind[] = [
  "32 B JSON",
  "1 KiB JSON",
  "16 KiB JSON",
  "16 KiB random",
];
const VARIANTS = 64;

// 64 different messages of a kind: text, or random bytes.
function messagesOf(kind: Kind): (string | Uint8Array)[] {
  const size = kind.startsWith("32 B") ? 32 : kind.startsWith("1 KiB") ? KiB : 16 * KiB;
  return Array.from(
    { length: VARIANTS },
    (_, i) => kind.endsWith("random") ? crypto.getRandomValues(new Uint8Array(size)) : json(size, i),
  );
}

const bytesOf = (msg: string | Uint8Array) => typeof msg === "string" ? encoder.encode(msg) : msg;

// ---------------------------------------------------------------- part: codec

async function codecPart(): Promise<void> {
  console.log(
    "\n## The candidates: µs a message on one core, bytes out as % of in\n",
  );
  const { Z_SYNC_FLUSH, Z_FULL_FLUSH } = constants;
  const rounds = QUICK ? 3 : 20;
  const time = (
    run: (input: Uint8Array, i: number) => number,
    inputs: Uint8Array[],
  ) => {
    for (const [i, input] of inputs.entries()) run(input, i); // warm up
    const runs: number[] = [];
    let outBytes = 0;
    let inBytes = 0;
    for (let r = 0; r < 5; r++) {
      outBytes = inBytes = 0;
      const start = performance.now();
      for (let k = 0; k < rounds; k++) {
        for (const [i, input] of inputs.entries()) {
          outBytes += run(input, i);
          inBytes += input.length;
        }
      }
      runs.push((performance.now() - start) * 1000 / (rounds * inputs.length));
    }
    return `${spread(runs)} µs, ${(outBytes / inBytes * 100).toFixed(0)}%`;
  };
  const asyncTime = async (
    run: (input: Uint8Array<ArrayBuffer>) => Promise<number>,
    inputs: Uint8Array<ArrayBuffer>[],
  ) => {
    const runs: number[] = [];
    for (let r = 0; r < 5; r++) {
      const start = performance.now();
      for (let k = 0; k < Math.max(1, rounds >> 2); k++) {
        for (const input of inputs) {
          await run(input);
        }
      }
      runs.push(
        (performance.now() - start) * 1000 /
          (Math.max(1, rounds >> 2) * inputs.length),
      );
    }
    return `${spread(runs)} µs`;
  };
  for (const kind of ["1 KiB JSON", "16 KiB JSON", "16 KiB random"] as Kind[]) {
    const inputs = messagesOf(kind).map((msg) => bytesOf(msg) as Uint8Array<ArrayBuffer>);
    const shared = new ZlibStream("deflate");
    const own = new ZlibStream("deflate");
    const stream = new CompressionStream("deflate-raw");
    const writer = stream.writable.getWriter();
    const reader = stream.readable.getReader();
    const compressed = inputs.map((input) => deflateRawSync(input, { finishFlush: Z_SYNC_FLUSH }));
    const inflater = new ZlibStream("inflate");
    const rows: [string, string][] = [
      [
        "deflate: node:zlib handle, shared, Z_FULL_FLUSH (no context takeover)",
        time((input) => shared.deflate(input, Z_FULL_FLUSH).length, inputs),
      ],
      [
        "deflate: node:zlib handle, own window (context takeover)",
        time((input) => own.deflate(input, Z_SYNC_FLUSH).length, inputs),
      ],
      [
        "deflate: deflateRawSync, a zlib stream a call",
        time(
          (input) => deflateRawSync(input, { finishFlush: Z_SYNC_FLUSH }).length - 4,
          inputs,
        ),
      ],
      [
        "deflate: CompressionStream deflate-raw, one stream (async)",
        await asyncTime(async (input) => {
          void writer.write(input);
          return (await reader.read()).value!.length;
        }, inputs),
      ],
      [
        "inflate: node:zlib handle, reset each message",
        time((_, i) => {
          let length = 0;
          inflater.inflate(compressed[i], (piece) => length += piece.length);
          inflater.reset();
          return length;
        }, inputs),
      ],
      [
        "inflate: inflateRawSync with maxOutputLength",
        time((_, i) =>
          inflateRawSync(compressed[i], {
            finishFlush: Z_SYNC_FLUSH,
            maxOutputLength: 1 << 24,
          }).length, inputs),
      ],
    ];
    console.log(`${kind}:`);
    for (const [name, figures] of rows) {
      console.log(`  ${name.padEnd(70)} ${figures}`);
    }
    for (const zlib of [shared, own, inflater]) zlib.close();
    await writer.close();
  }

  // DecompressionStream cannot bound what one chunk inflates to.
  const bomb = deflateRawSync(new Uint8Array(32 << 20), { finishFlush: Z_SYNC_FLUSH });
  const decompression = new DecompressionStream("deflate-raw");
  void decompression.writable.getWriter().write(bomb as Uint8Array<ArrayBuffer>);
  const first = await decompression.readable.getReader().read();
  console.log(
    `\nDecompressionStream: the first chunk a ${bomb.length}-byte bomb gives is ${first.value!.length} bytes`,
  );

  console.log("\n## Memory of a connection's zlib contexts (context takeover): 500 in a fresh process\n");
  const labels: Record<string, string> = {
    "deflate": "deflate (level 6, window 15, memLevel 8)",
    "deflate-small": "deflate (level 6, window 9, memLevel 1)",
    "inflate": "inflate (window 15)",
  };
  for (const kind of Object.keys(labels)) {
    const runs = [];
    for (let i = 0; i < REPS; i++) runs.push(JSON.parse(await child(["--memory-child", kind])));
    const label = labels[kind];
    console.log(
      `  ${label.padEnd(42)} ${spread(runs.map((r) => r.kiB), 0)} KiB each once used; made and first used in ${
        spread(runs.map((r) => r.us), 0)
      } µs`,
    );
  }
}

// Runs this script with `args` in a fresh process; its stdout.
async function child(args: string[]): Promise<string> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--v8-flags=--expose-gc", "--config", CONFIG, import.meta.filename!, ...args],
  }).output();
  if (!output.success) throw new Error(new TextDecoder().decode(output.stderr));
  return new TextDecoder().decode(output.stdout);
}

function memoryChild(kind: string): void {
  const input = bytesOf(json(KiB, 1));
  const packet = deflateRawSync(input, { finishFlush: constants.Z_SYNC_FLUSH });
  const count = 500;
  (globalThis as { gc?: () => void }).gc?.();
  const before = statusKiB("self", "VmRSS");
  const start = performance.now();
  const streams = Array.from({ length: count }, () => {
    const stream = kind === "inflate"
      ? new ZlibStream("inflate")
      : kind === "deflate-small"
      ? new ZlibStream("deflate", 9, 6, 1)
      : new ZlibStream("deflate");
    if (kind !== "inflate") stream.deflate(input, constants.Z_SYNC_FLUSH);
    else stream.inflate(packet, () => {});
    return stream;
  });
  const us = (performance.now() - start) * 1000 / count;
  (globalThis as { gc?: () => void }).gc?.();
  console.log(JSON.stringify({ kiB: (statusKiB("self", "VmRSS") - before) / count, us, streams: streams.length }));
}

// ---------------------------------------------------------------- part: bomb

// In a fresh process (its peak RSS is its own): a Core with compression on gets the bomb.
function bombChild(spec: string): void {
  const [opcodeName, limit] = spec.split(":");
  const zeros = new Uint8Array(32 * 1024 * 1024);
  const bomb = deflateRawSync(zeros, { finishFlush: constants.Z_SYNC_FLUSH })
    .subarray(0, -4);
  const frame = encodeFrame(
    opcodeName === "text" ? Opcode.Text : Opcode.Binary,
    bomb,
    { maskKey: new Uint8Array(4) },
  );
  frame[0] |= 0x40;
  const core = new Core(
    resolveOptions({ compression: true, maxPayload: Number(limit) }),
  );
  core.receiveData(
    encoder.encode(
      "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
        "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    ),
  );
  core.takeEvents();
  core.accept("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "", 0);
  (globalThis as { gc?: () => void }).gc?.();
  const rssBefore = statusKiB("self", "VmRSS");
  const peakBefore = statusKiB("self", "VmHWM");
  const start = performance.now();
  core.receiveData(frame);
  const ms = performance.now() - start;
  const peak = statusKiB("self", "VmHWM");
  console.log(JSON.stringify({
    frameBytes: frame.length,
    closeCode: core.closeCode,
    ms,
    // Growth of the peak over what the process held before (the zeros and the bomb included).
    peakGrowthMiB: (peak - Math.max(rssBefore, peakBefore)) / 1024,
    peakOverRssMiB: (peak - rssBefore) / 1024,
  }));
}

async function bombPart(): Promise<void> {
  console.log(
    "\n## The bomb: one 32 KiB frame that inflates to 32 MiB (3 fresh processes each)\n",
  );
  for (
    const [opcode, limit] of [["binary", 16 << 20], ["text", 16 << 20], ["binary", 1 << 20], ["text", 1 << 20]] as const
  ) {
    const results = [];
    for (let i = 0; i < REPS; i++) {
      results.push(JSON.parse(await child(["--bomb-child", `${opcode}:${limit}`])));
    }
    console.log(
      `  ${opcode}, maxPayload ${limit >> 20} MiB: close ${results[0].closeCode} after ${
        spread(results.map((r) => r.ms))
      } ms; peak RSS above the process's before: ${spread(results.map((r) => r.peakOverRssMiB))} MiB (frame ${
        results[0].frameBytes
      } B)`,
    );
  }
}

// ---------------------------------------------------------------- clients

// A raw client connection: a handshake, then frames counted from their headers alone.
class Client {
  frames = 0; // data messages received (final frames)
  compressed = 0; // of which with RSV1
  bytesRead = 0;
  bytesWritten = 0;
  extensions: string | null = null;
  onMessage: (() => void) | undefined;
  readonly #conn: Deno.TcpConn;
  #buffer: Uint8Array;
  #start = 0;
  #end = 0;
  #queue: Uint8Array[] = [];
  #writing = false;

  private constructor(conn: Deno.TcpConn, bufferSize: number) {
    this.#conn = conn;
    this.#buffer = new Uint8Array(bufferSize);
  }

  static async open(
    port: number,
    offer: string | null,
    bufferSize = 16 * KiB,
  ): Promise<Client> {
    const client = new Client(
      await Deno.connect({ hostname: "127.0.0.1", port }),
      bufferSize,
    );
    client.#conn.setNoDelay(true);
    await client.#writeAll(encoder.encode(
      `GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n` +
        (offer ? `Sec-WebSocket-Extensions: ${offer}\r\n` : "") + "\r\n",
    ));
    client.bytesWritten = 0;
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      const count = await client.#conn.read(
        client.#buffer.subarray(client.#end),
      );
      if (count === null) {
        throw new Error("connection closed during the handshake");
      }
      client.#end += count;
      head = new TextDecoder("latin1").decode(
        client.#buffer.subarray(0, client.#end),
      );
    }
    if (!head.startsWith("HTTP/1.1 101")) {
      throw new Error(`handshake refused: ${head.split("\r\n")[0]}`);
    }
    client.extensions = /^sec-websocket-extensions:\s*(.*)\r$/im.exec(head)?.[1] ?? null;
    client.#start = head.indexOf("\r\n\r\n") + 4;
    client.#parse();
    void client.#readLoop();
    return client;
  }

  send(frame: Uint8Array): void {
    this.#queue.push(frame);
    if (!this.#writing) void this.#writeQueue();
  }

  close(): void {
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
  }

  async #writeQueue(): Promise<void> {
    this.#writing = true;
    try {
      while (this.#queue.length > 0) await this.#writeAll(this.#queue.shift()!);
    } catch {
      // The connection was closed.
    } finally {
      this.#writing = false;
    }
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    for (let offset = 0; offset < bytes.length;) {
      offset += await this.#conn.write(bytes.subarray(offset));
    }
    this.bytesWritten += bytes.length;
  }

  async #readLoop(): Promise<void> {
    try {
      while (true) {
        if (this.#end === this.#buffer.length) {
          this.#makeRoom(this.#buffer.length * 2);
        }
        const count = await this.#conn.read(this.#buffer.subarray(this.#end));
        if (count === null) return;
        this.#end += count;
        this.bytesRead += count;
        this.#parse();
      }
    } catch {
      // Closed.
    }
  }

  #makeRoom(size: number): void {
    const pending = this.#buffer.subarray(this.#start, this.#end);
    const buffer = size > this.#buffer.length ? new Uint8Array(size) : this.#buffer;
    buffer.set(pending);
    this.#buffer = buffer;
    this.#end = pending.length;
    this.#start = 0;
  }

  #parse(): void {
    const buffer = this.#buffer;
    while (this.#end - this.#start >= 2) {
      const start = this.#start;
      let length = buffer[start + 1] & 0x7f;
      let header = 2;
      if (length === 126) {
        if (this.#end - start < 4) break;
        length = (buffer[start + 2] << 8) | buffer[start + 3];
        header = 4;
      } else if (length === 127) {
        if (this.#end - start < 10) break;
        length = new DataView(buffer.buffer, buffer.byteOffset + start + 2, 8)
          .getUint32(4);
        header = 10;
      }
      if (this.#end - start < header + length) {
        if (header + length > buffer.length) {
          this.#makeRoom(2 * (header + length));
        } else if (start > 0) this.#makeRoom(buffer.length);
        return;
      }
      const first = buffer[start];
      this.#start += header + length;
      if ((first & 0x0f) <= 0x2 && (first & 0x80) !== 0) {
        this.frames++;
        if ((first & 0x40) !== 0) this.compressed++;
        this.onMessage?.();
      }
    }
    if (this.#start === this.#end) this.#start = this.#end = 0;
  }
}

const OFFER = "permessage-deflate; client_max_window_bits"; // what browsers offer
const MASK = new Uint8Array([0x12, 0x34, 0x56, 0x78]);

// The client's frames for messages: masked, and compressed (each on its own, which any
// agreement allows) when the extension is in force and the message is long enough.
function clientFrames(
  messages: (string | Uint8Array)[],
  compress: boolean,
): Uint8Array[] {
  return messages.map((msg) => {
    const opcode = typeof msg === "string" ? Opcode.Text : Opcode.Binary;
    const bytes = bytesOf(msg);
    if (!compress || bytes.length < 256) {
      return encodeFrame(opcode, bytes, { maskKey: MASK });
    }
    const compressed = deflateRawSync(bytes, {
      finishFlush: constants.Z_SYNC_FLUSH,
    }).subarray(0, -4);
    const frame = encodeFrame(opcode, compressed, { maskKey: MASK });
    frame[0] |= 0x40;
    return frame;
  });
}

// ---------------------------------------------------------------- servers

interface Server {
  pid: number;
  port: number;
  stop(): Promise<void>;
}

async function startServer(
  name: "ours" | "ws",
  mode: string,
  echo: boolean,
): Promise<Server> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const command = name === "ours"
    ? [
      Deno.execPath(),
      "run",
      "-A",
      "--config",
      CONFIG,
      `${HERE}servers/ours_deflate.ts`,
    ]
    : ["node", `${HERE}servers/ws_deflate_node.mjs`];
  const child = new Deno.Command("taskset", {
    args: [
      "-c",
      "0",
      ...command,
      String(port),
      mode,
      ...(echo ? ["--echo"] : []),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let output = "";
  const deadline = Date.now() + 30_000;
  while (!output.includes("ready")) {
    if (Date.now() > deadline) throw new Error(`${name} did not start`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`${name} exited before it was ready`);
    output += value;
  }
  reader.releaseLock();
  const draining = child.stdout.pipeTo(new WritableStream()).catch(() => {});
  // taskset execs the server: the child's pid is the server's.
  return {
    pid: child.pid,
    port,
    async stop() {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
      await child.status;
      clearTimeout(timer);
      await draining;
    },
  };
}

// ---------------------------------------------------------------- part: echo

interface EchoFigures {
  serverUs: number;
  up: number; // wire bytes a message, client to server
  down: number; // server to client
  compressedShare: number; // of the echoes, with RSV1
}

async function echoRun(
  server: Server,
  kind: Kind,
  compress: boolean,
): Promise<EchoFigures> {
  const client = await Client.open(
    server.port,
    compress ? OFFER : null,
    64 * KiB,
  );
  const frames = clientFrames(messagesOf(kind), client.extensions !== null);
  const window = 16;
  const seconds = QUICK ? 0.3 : 1.5;
  const done = Promise.withResolvers<void>();
  let sent = 0;
  let deadline = Infinity;
  client.onMessage = () => {
    if (performance.now() < deadline) {
      client.send(frames[sent++ % frames.length]);
    } else if (client.frames === sent) done.resolve();
  };
  // Warm up, then measure.
  for (let i = 0; i < window; i++) client.send(frames[sent++ % frames.length]);
  await sleep(200);
  const [frames0, cpu0, down0, compressed0] = [client.frames, cpuNs(server.pid), client.bytesRead, client.compressed];
  deadline = performance.now() + seconds * 1000;
  await done.promise;
  const messages = client.frames - frames0;
  const figures = {
    serverUs: (cpuNs(server.pid) - cpu0) / 1000 / messages,
    up: frames.reduce((sum, frame) => sum + frame.length, 0) / frames.length, // sent in turn
    down: (client.bytesRead - down0) / messages,
    compressedShare: (client.compressed - compressed0) / messages,
  };
  client.close();
  return figures;
}

async function echoPart(): Promise<void> {
  console.log(
    "\n## Echo: one connection, 16 messages in flight; server CPU µs and wire bytes a message\n",
  );
  console.log(
    `| message | compression | server CPU µs | bytes up | bytes down | echoes compressed |`,
  );
  console.log(`|---|---|---|---|---|---|`);
  for (const mode of ["off", "no-context-takeover", "context-takeover"]) {
    const server = await startServer("ours", mode, true);
    try {
      for (const kind of KINDS) {
        const runs: EchoFigures[] = [];
        for (let i = 0; i < REPS; i++) {
          runs.push(await echoRun(server, kind, mode !== "off"));
        }
        console.log(
          `| ${kind} | ${mode} | ${spread(runs.map((r) => r.serverUs))} | ${
            median(runs.map((r) => r.up)).median.toFixed(0)
          } | ${median(runs.map((r) => r.down)).median.toFixed(0)} | ${
            (median(runs.map((r) => r.compressedShare)).median * 100).toFixed(0)
          }% |`,
        );
      }
    } finally {
      await server.stop();
    }
  }
}

// ---------------------------------------------------------------- part: fanout

interface FanoutFigures {
  perCpuSecond: number; // deliveries per server CPU-second
  serverUs: number; // server CPU µs a delivery
  wirePerDelivery: number;
  compressedShare: number;
  idleKiB: number; // RSS a connection, connected and idle
  afterKiB: number; // RSS a connection, after the run
}

async function fanoutRun(
  name: "ours" | "ws",
  mode: string,
  receivers: number,
  kind: Kind,
): Promise<FanoutFigures> {
  const server = await startServer(name, mode, false);
  const clients: Client[] = [];
  try {
    await sleep(300);
    const rss0 = statusKiB(server.pid, "VmRSS");
    for (let i = 0; i <= receivers; i += 50) {
      const batch = Array.from(
        { length: Math.min(50, receivers + 1 - i) },
        () => Client.open(server.port, mode === "off" ? null : OFFER),
      );
      clients.push(...await Promise.all(batch));
    }
    await sleep(300);
    const idleKiB = (statusKiB(server.pid, "VmRSS") - rss0) / clients.length;
    const [sender] = clients;
    const frames = clientFrames(messagesOf(kind), mode !== "off");
    // Compressing for each of 1,000 recipients takes 0.2-0.8 ms a delivery: fewer large messages.
    const total = (QUICK ? 30 : 150) / (kind === "16 KiB JSON" ? 3 : 1);
    const window = 4;
    const delivered = new Int32Array(total);
    let fully = 0;
    let sent = 0;
    const done = Promise.withResolvers<void>();
    const trySend = () => {
      while (sent < total && sent - fully < window) {
        sender.send(frames[sent++ % frames.length]);
      }
    };
    for (const client of clients) {
      client.onMessage = () => {
        if (
          ++delivered[client.frames - 1] === clients.length && ++fully === total
        ) done.resolve();
        trySend();
      };
    }
    const read0 = clients.reduce((sum, client) => sum + client.bytesRead, 0);
    const cpu0 = cpuNs(server.pid);
    trySend();
    await done.promise;
    const cpuSeconds = (cpuNs(server.pid) - cpu0) / 1e9;
    const deliveries = total * clients.length;
    const wire = clients.reduce((sum, client) => sum + client.bytesRead, 0) -
      read0;
    const compressed = clients.reduce(
      (sum, client) => sum + client.compressed,
      0,
    );
    return {
      perCpuSecond: deliveries / cpuSeconds,
      serverUs: cpuSeconds * 1e6 / deliveries,
      wirePerDelivery: wire / deliveries,
      compressedShare: compressed / deliveries,
      idleKiB,
      afterKiB: (statusKiB(server.pid, "VmRSS") - rss0) / clients.length,
    };
  } finally {
    for (const client of clients) client.close();
    await server.stop();
  }
}

async function fanoutPart(): Promise<void> {
  const receivers = 1000;
  for (const kind of ["1 KiB JSON", "16 KiB JSON"] as Kind[]) {
    console.log(
      `\n## Fan-out: a sender and ${receivers} receivers, ${kind} messages, 4 in flight\n`,
    );
    console.log(
      "| server | compression | deliveries / server CPU-s | server µs a delivery | wire B a delivery | compressed | RSS KiB a connection, idle / after |",
    );
    console.log("|---|---|---|---|---|---|---|");
    for (
      const [name, mode] of [
        ["ours", "off"],
        ["ours", "no-context-takeover"],
        ["ours", "context-takeover"],
        ["ws", "off"],
        ["ws", "context-takeover"],
        ["ws", "no-context-takeover"],
      ] as const
    ) {
      const runs: FanoutFigures[] = [];
      for (let i = 0; i < REPS; i++) {
        runs.push(await fanoutRun(name, mode, receivers, kind));
      }
      const m = (key: keyof FanoutFigures) => median(runs.map((r) => r[key])).median;
      console.log(
        `| ${name} | ${mode} | ${spread(runs.map((r) => r.perCpuSecond / 1000), 1)}k | ${
          spread(runs.map((r) => r.serverUs), 2)
        } | ${m("wirePerDelivery").toFixed(0)} | ${(m("compressedShare") * 100).toFixed(0)}% | ${
          m("idleKiB").toFixed(1)
        } / ${m("afterKiB").toFixed(1)} |`,
      );
    }
  }
}

// ---------------------------------------------------------------- main

if (flags["bomb-child"]) {
  bombChild(flags["bomb-child"]);
} else if (flags["memory-child"]) {
  memoryChild(flags["memory-child"]);
} else {
  if (!pin(1)) console.log("(taskset failed: processes are not pinned)");
  console.log(
    `# permessage-deflate bench ${QUICK ? "(quick) " : ""}— Deno ${Deno.version.deno}, load average ${
      Deno.loadavg().map((l) => l.toFixed(1)).join(" ")
    }`,
  );
  if (PARTS.includes("codec")) await codecPart();
  if (PARTS.includes("bomb")) await bombPart();
  if (PARTS.includes("echo")) await echoPart();
  if (PARTS.includes("fanout")) await fanoutPart();
}
