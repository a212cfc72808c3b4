// Side-by-side load benchmark: this module (bench/servers/ours.ts, public API only), Deno's own
// Deno.serve + Deno.upgradeWebSocket, and uWebSockets.js on Node (npm uwebsockets).
//
//   deno task bench:load [--quick] [--runs N] [--seconds S] [--servers ours,deno,uws,ws]
//                        [--scenario TEXT[,TEXT]] [--write-docs]
//
// --quick      a subset of the scenarios, at shorter durations (about two minutes in all)
// --runs N     measured runs of every scenario on every server (default 3): medians, min-max
// --seconds S  length of one run (default 1.5, or 0.5 with --quick)
// --servers    which servers (default ours,deno,uws; ws is npm ws 8 on Node; floor is
//              bench/servers/floor.ts, the least JavaScript a server on Deno.Conn can have;
//              base is bench/servers/ours.ts run from a checkout of main: before/after)
// --scenario   only the scenarios whose name contains one of these texts (from the full list)
// --write-docs also copy the chart to docs/bench.svg
//
// All servers run at once, pinned to core 0 and idle unless measured; the load generator
// (bench/loadgen.c, epoll in C, built with the system's C compiler) is pinned to core 1, and
// so is this script. Loopback only. For each scenario, every server gets its own load
// generator with its connections open, one warm-up run, then the runs take turns: run i of
// every server, in an order rotated by i, so the ratios pair runs taken seconds apart on a
// machine whose load changes. Server CPU time is the sum over the server's threads of the
// time each ran (/proc/PID/task/*/schedstat, in nanoseconds).
//
// Results: a Markdown table on stdout; JSON lines in bench/results/load-DATE.jsonl (and
// latest.jsonl): a "meta" line, a "run" line per measured run, a "summary" line per scenario
// and server, and a "ratio" line per scenario and reference; the chart of the ratios of
// messages per server CPU-second in bench/results/ratios.svg.
import { parseArgs } from "@std/cli/parse-args";
import { dropMissed, type Kind, misses } from "./_targets.ts";

const flags = parseArgs(Deno.args, {
  boolean: ["quick", "write-docs"],
  string: ["servers", "scenario", "runs", "seconds"],
});
const QUICK = flags.quick;
const RUNS = Number(flags.runs ?? 3);
const SECONDS = Number(flags.seconds ?? (QUICK ? 0.5 : 1.5));
const WARMUP_SECONDS = Math.min(SECONDS, QUICK ? 0.2 : 0.5);
if (!(Number.isInteger(RUNS) && RUNS >= 1 && RUNS <= 20)) {
  throw new Error("--runs must be an integer from 1 to 20");
}
if (!(SECONDS > 0 && SECONDS <= 30)) {
  throw new Error("--seconds must be over 0 and at most 30");
}
const SERVERS: string[] = (flags.servers ?? "ours,deno,uws").split(",");
const HERE = new URL(".", import.meta.url).pathname;
const ROOT = new URL("../", import.meta.url).pathname;
const CONFIG = `${ROOT}deno.json`;
// --servers ...,base: a checkout of main made with `git worktree add --detach DIR main`
// (default /work/wt/base, or BENCH_BASE=DIR).
const BASE = (Deno.env.get("BENCH_BASE") ?? "/work/wt/base").replace(
  /\/?$/,
  "/",
);
const RESULTS = `${HERE}results/`; // git-ignored
const CLK_TCK = Number(
  new TextDecoder().decode(
    new Deno.Command("getconf", { args: ["CLK_TCK"] }).outputSync().stdout,
  ),
);
const PINNED = new Deno.Command("taskset", {
  args: ["-pc", "1", String(Deno.pid)],
  stdout: "null",
  stderr: "null",
})
  .outputSync().success;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------- scenarios

const KiB = 1024;
const MiB = 1024 * KiB;

interface Scenario {
  name: string;
  kind: Kind;
  conns: number; // echo: connections; fanout: receivers (plus the sender); connect: handshakes
  size: number; // bytes a message
  window: number; // messages in flight per connection (fanout: on the sender)
  text: boolean;
  quick: boolean; // part of --quick
}

const sizeLabel = (size: number) => size >= MiB ? `${size / MiB} MiB` : size >= KiB ? `${size / KiB} KiB` : `${size} B`;

// The echo matrix; what is in flight at once stays within 256 MiB (256 x 1 MiB x 4 is left out).
const QUICK_ECHO = new Set([
  "1 32 B 1 binary",
  "1 1 MiB 1 binary",
  "32 1 KiB 4 binary",
  "32 1 KiB 4 text",
  "32 64 KiB 1 binary",
  "256 32 B 4 binary",
  "256 1 KiB 1 binary",
]);
const SCENARIOS: Scenario[] = [];
for (const conns of [1, 32, 256]) {
  for (const size of [32, KiB, 64 * KiB, MiB]) {
    for (const text of [false, true]) {
      for (const window of [1, 4]) {
        if (conns * size * window > 256 * MiB) continue;
        const type = text ? "text" : "binary";
        SCENARIOS.push({
          name: `echo ${conns} conn × ${sizeLabel(size)} ${type} × ${window} in flight`,
          kind: "echo",
          conns,
          size,
          window,
          text,
          quick: QUICK_ECHO.has(
            `${conns} ${sizeLabel(size)} ${window} ${type}`,
          ),
        });
      }
    }
  }
}
// One sender, 32 B messages, each to all connections (the sender too); a message is in flight
// until every connection has it, so the window bounds every server's backlog alike.
for (const window of [8, 64]) {
  for (const receivers of [1000, 5000]) {
    SCENARIOS.push({
      name: `fanout 1 → ${receivers} receivers × ${window} in flight`,
      kind: "fanout",
      conns: receivers,
      size: 32,
      window,
      text: false,
      quick: window === 8,
    });
  }
}
SCENARIOS.push({
  name: "connect 1000 handshakes",
  kind: "connect",
  conns: 1000,
  size: 0,
  window: 0,
  text: false,
  quick: true,
});

function chosenScenarios(): Scenario[] {
  if (flags.scenario) {
    const texts: string[] = flags.scenario.split(",");
    return SCENARIOS.filter((scenario) => texts.some((text) => scenario.name.includes(text)));
  }
  return QUICK ? SCENARIOS.filter((scenario) => scenario.quick) : SCENARIOS;
}

// ---------------------------------------------------------------- processes

const cpuTicks = (pid: number) => {
  const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1]
    .split(" ");
  return Number(fields[11]) + Number(fields[12]); // utime + stime, over all threads
};

// Nanoseconds each of a process's threads has run (/proc/PID/task/TID/schedstat, first
// field): ticks of 10 ms left a run of 1,000 handshakes (about 0.1 s of CPU) with ±10%.
function threadNanos(pid: number): Map<string, number> {
  const nanos = new Map<string, number>();
  for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const line = Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/schedstat`);
      nanos.set(task.name, Number(line.split(" ")[0]));
    } catch { /* the thread ended meanwhile */ }
  }
  return nanos;
}

// The CPU seconds a process's threads ran between two readings; a thread that ended in
// between is missed for that stretch (the servers' threads live as long as they do).
function cpuSecondsBetween(before: Map<string, number>, after: Map<string, number>): number {
  let nanos = 0;
  for (const [thread, now] of after) nanos += now - (before.get(thread) ?? 0);
  return nanos / 1e9;
}

// Ticks core 0 spent on processes and interrupts (including stolen by the hypervisor), and
// in softirqs, where the kernel does much of loopback TCP for whoever sent.
const core0Ticks = (): [number, number] => {
  const line = Deno.readTextFileSync("/proc/stat").split("\n").find((line) => line.startsWith("cpu0 "))!;
  const [user, nice, system, _idle, _iowait, irq, softirq, steal] = line.split(
    /\s+/,
  ).slice(1).map(Number);
  return [user + nice + system + irq + steal, softirq];
};

// This process's open-file limits, [soft, hard]: children inherit them.
function fileLimits(): [number, number] {
  const line = Deno.readTextFileSync("/proc/self/limits").split("\n").find((
    line,
  ) => line.startsWith("Max open files"))!;
  const [soft, hard] = line.slice("Max open files".length).trim().split(/\s+/);
  const value = (text: string) => text === "unlimited" ? Infinity : Number(text);
  return [value(soft), value(hard)];
}

const COMMANDS: Record<string, string[]> = {
  ours: [
    Deno.execPath(),
    "run",
    "-A",
    "--config",
    CONFIG,
    `${HERE}servers/ours.ts`,
  ],
  deno: [
    Deno.execPath(),
    "run",
    "-A",
    "--config",
    CONFIG,
    `${HERE}servers/deno_native.ts`,
  ],
  uws: ["node", `${HERE}servers/uws_node.mjs`],
  ws: ["node", `${HERE}servers/ws_node.mjs`],
  floor: [
    Deno.execPath(),
    "run",
    "-A",
    "--config",
    CONFIG,
    `${HERE}servers/floor.ts`,
  ],
  // main's code from a detached checkout beside this one, for before/after in one run
  base: [
    Deno.execPath(),
    "run",
    "-A",
    "--config",
    `${BASE}deno.json`,
    `${BASE}bench/servers/ours.ts`,
  ],
};
const NODE_PACKAGES: Record<string, string> = { uws: "uwebsockets", ws: "ws" };
const TITLES: Record<string, string> = {
  ours: "ours",
  deno: "Deno",
  uws: "uWebSockets.js",
  ws: "ws",
  floor: "Deno.Conn floor",
  base: "base (main)",
};

// Every process this script started and has not seen exit, killed by PID on the way out.
const children = new Set<Deno.ChildProcess>();
function spawn(
  command: string[],
  options: Deno.CommandOptions,
): Deno.ChildProcess {
  const child = new Deno.Command(command[0], {
    ...options,
    args: command.slice(1),
  }).spawn();
  children.add(child);
  child.status.finally(() => children.delete(child));
  return child;
}
function killChildren(): void {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }
}

// Prefixes a command with its core, and with a raised soft limit of open files when the
// inherited one is below `files` (sh's ulimit, then exec: the PID stays the server's).
function placed(command: string[], core: number, files: number): string[] {
  const pinned = PINNED ? ["taskset", "-c", String(core), ...command] : command;
  const [soft, hard] = fileLimits();
  if (soft >= files) return pinned;
  if (hard < files) {
    throw new Error(
      `${files} open files are needed, and the hard limit is ${hard}: raise it (ulimit -Hn) first`,
    );
  }
  return ["sh", "-c", 'ulimit -Sn "$0" && exec "$@"', String(files), ...pinned];
}

class Server {
  #child: Deno.ChildProcess;
  #draining: Promise<void>;

  private constructor(
    readonly name: string,
    readonly port: number,
    child: Deno.ChildProcess,
    draining: Promise<void>,
  ) {
    this.#child = child;
    this.#draining = draining;
  }

  get pid(): number {
    return this.#child.pid;
  }

  static async start(name: string, files: number): Promise<Server> {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = listener.addr.port;
    listener.close();
    const child = spawn(placed([...COMMANDS[name], String(port)], 0, files), {
      stdout: "piped",
      stderr: "inherit",
      env: { NO_COLOR: "1" },
    });
    const reader = child.stdout.pipeThrough(new TextDecoderStream())
      .getReader();
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    try {
      let output = "";
      while (!output.includes("ready")) {
        const { value, done } = await reader.read();
        if (done) {
          throw new Error(`the ${name} server exited before it was ready`);
        }
        output += value;
      }
    } finally {
      clearTimeout(timer);
    }
    // Whatever it prints later is read and dropped, so that it never blocks on a full pipe.
    const draining = (async () => {
      while (!(await reader.read()).done) { /* dropped */ }
    })().catch(() => {});
    return new Server(name, port, child, draining);
  }

  // Whether it has exited (a crash): its status has settled.
  async exited(): Promise<boolean> {
    return await Promise.race([
      this.#child.status.then(() => true),
      sleep(0).then(() => false),
    ]);
  }

  async stop(): Promise<void> {
    try {
      this.#child.kill("SIGTERM");
    } catch { /* already gone */ }
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* gone meanwhile */ }
    }, 3000);
    await this.#child.status;
    clearTimeout(timer);
    await this.#draining;
  }
}

// Waits until none of the servers is using CPU (no tick in 60 ms), at most 2 s: what the
// last run left behind (closing connections, garbage collection) is not charged to the next.
async function quiet(servers: Server[]): Promise<void> {
  const deadline = Date.now() + 2000;
  let before = servers.map((server) => cpuTicks(server.pid));
  while (Date.now() < deadline) {
    await sleep(60);
    const now = servers.map((server) => cpuTicks(server.pid));
    if (now.every((ticks, i) => ticks === before[i])) return;
    before = now;
  }
}

// ---------------------------------------------------------------- the load generator

const LOADGEN_SOURCE = `${HERE}loadgen.c`;
const LOADGEN = `${RESULTS}loadgen`;

// Builds the load generator when it is missing or older than its source.
async function buildLoadgen(): Promise<void> {
  const source = (await Deno.stat(LOADGEN_SOURCE)).mtime!;
  const built = (await Deno.stat(LOADGEN).catch(() => null))?.mtime;
  if (built && built >= source) return;
  const compilers = ["cc", "gcc", "clang"];
  for (const cc of compilers) {
    let output: Deno.CommandOutput;
    try {
      output = await new Deno.Command(cc, {
        args: ["-O2", "-Wall", "-Wextra", "-o", LOADGEN, LOADGEN_SOURCE],
      })
        .output();
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) continue;
      throw error;
    }
    if (!output.success) {
      throw new Error(
        `${cc} could not build bench/loadgen.c:\n${new TextDecoder().decode(output.stderr)}`,
      );
    }
    return;
  }
  throw new Error(
    `bench:load needs a C compiler for bench/loadgen.c: none of ${compilers.join(", ")} found`,
  );
}

// One JSON line of the load generator: the connections' setup, or a run.
interface Report {
  wall_s: number;
  cpu_s: number; // the load generator's own CPU seconds
  messages?: number; // echo
  deliveries?: number; // fanout
  p50_ms?: number | null;
  p99_ms?: number | null;
}

// A running load generator: it opens its connections and reports, then does a run per "run"
// line on its stdin; the end of its stdin closes them (see loadgen.c).
class Loadgen {
  #lines: ReadableStreamDefaultReader<string>;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #buffered = "";

  private constructor(readonly child: Deno.ChildProcess) {
    this.#lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    this.#stdin = child.stdin.getWriter();
  }

  // Starts one, waits for its connections, and returns it with the setup's report.
  static async open(
    args: (string | number)[],
    timeoutSeconds: number,
  ): Promise<[Loadgen, Report]> {
    const child = spawn(placed([LOADGEN, ...args.map(String)], 1, 0), {
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    });
    const loadgen = new Loadgen(child);
    try {
      return [loadgen, await loadgen.#report(timeoutSeconds)];
    } catch (error) {
      await loadgen.close();
      throw error;
    }
  }

  async run(seconds: number): Promise<Report> {
    await this.#stdin.write(new TextEncoder().encode(`run ${seconds}\n`));
    // loadgen.c gives up by itself after the run, 30 s of draining and a 10 s stall.
    return await this.#report(seconds + 60);
  }

  async #report(timeoutSeconds: number): Promise<Report> {
    const timer = setTimeout(
      () => this.child.kill("SIGKILL"),
      timeoutSeconds * 1000,
    );
    try {
      while (!this.#buffered.includes("\n")) {
        const { value, done } = await this.#lines.read();
        if (done) {
          throw new Error(
            `the load generator exited (status ${(await this.child.status).code})`,
          );
        }
        this.#buffered += value;
      }
    } finally {
      clearTimeout(timer);
    }
    const end = this.#buffered.indexOf("\n");
    const line = this.#buffered.slice(0, end);
    this.#buffered = this.#buffered.slice(end + 1);
    return JSON.parse(line);
  }

  // Ends its input: it closes its connections and exits (killed if it has not in 5 s).
  async close(): Promise<void> {
    await this.#stdin.close().catch(() => {});
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await this.child.status;
    clearTimeout(timer);
    await this.#lines.cancel().catch(() => {});
  }
}

// ---------------------------------------------------------------- measurements

interface Run {
  rate: number; // messages (echo), deliveries (fanout) or handshakes (connect) a second
  mbPerSec?: number; // echo
  p50?: number; // ms
  p99?: number; // ms
  perCpuSecond: number; // messages (deliveries, handshakes) a second of server CPU time
  serverCpu: number; // server CPU seconds
  wall: number; // seconds
  loadCpu: number; // the load generator's CPU %
  core0Other: number; // % of core 0 busy but not for the server: other processes, steal, irqs
  core0Softirq: number; // % of core 0 in softirqs (loopback TCP, for the server and others)
}

function figures(
  scenario: Scenario,
  report: Report,
  serverCpu: number,
  core0: [number, number],
): Run {
  const count = scenario.kind === "echo"
    ? report.messages!
    : scenario.kind === "fanout"
    ? report.deliveries!
    : scenario.conns;
  return {
    rate: count / report.wall_s,
    mbPerSec: scenario.kind === "echo" ? count * scenario.size / report.wall_s / 1e6 : undefined,
    p50: report.p50_ms ?? undefined,
    p99: report.p99_ms ?? undefined,
    perCpuSecond: count / Math.max(serverCpu, 1e-3),
    serverCpu,
    wall: report.wall_s,
    loadCpu: report.cpu_s / report.wall_s * 100,
    core0Other: Math.max(
      0,
      (core0[0] / CLK_TCK - serverCpu) / report.wall_s * 100,
    ),
    core0Softirq: core0[1] / CLK_TCK / report.wall_s * 100,
  };
}

// Runs `body` and returns its result, the server's CPU seconds meanwhile, and core 0's ticks.
async function measured<T>(
  pid: number,
  body: () => Promise<T>,
): Promise<[T, number, [number, number]]> {
  const server0 = threadNanos(pid), [busy0, softirq0] = core0Ticks();
  const result = await body();
  const [busy, softirq] = core0Ticks();
  return [result, cpuSecondsBetween(server0, threadNanos(pid)), [busy - busy0, softirq - softirq0]];
}

const loadgenArgs = (scenario: Scenario, port: number): (string | number)[] =>
  scenario.kind === "echo"
    ? [
      "echo",
      port,
      scenario.conns,
      scenario.size,
      scenario.window,
      SECONDS,
      scenario.text ? "text" : "binary",
    ]
    : ["fanout", port, scenario.conns, scenario.window, SECONDS, "all"];

// Seconds to allow for opening `count` connections (loadgen.c gives up after 120 s itself).
const setupSeconds = (count: number) => 30 + count / 50;

// Runs one scenario on every server: RUNS runs each, taking turns. Returns the runs by
// server; a server whose load generator failed has fewer, and its error is logged.
async function runScenario(
  scenario: Scenario,
  servers: Server[],
): Promise<Map<string, Run[]>> {
  const runs = new Map<string, Run[]>(
    servers.map((server) => [server.name, []]),
  );
  const failed = new Set<string>();
  const fail = (server: Server, error: unknown) => {
    failed.add(server.name);
    console.error(
      `  ${server.name}: ${scenario.name} failed: ${error instanceof Error ? error.message : error}`,
    );
  };
  if (scenario.kind === "connect") {
    // A run is about 0.1 s of CPU, and its cost moves with what the runs before left
    // (60-140 µs a handshake for one server): one round unmeasured, then three times the runs.
    for (let i = -1; i < 3 * RUNS; i++) {
      for (const server of rotated(servers, Math.max(i, 0))) {
        if (failed.has(server.name)) continue;
        await quiet(servers);
        try {
          const [[loadgen, report], serverCpu, core0] = await measured(
            server.pid,
            () =>
              Loadgen.open(
                ["connect", server.port, scenario.conns],
                setupSeconds(scenario.conns),
              ),
          );
          await loadgen.close();
          if (i >= 0) runs.get(server.name)!.push(figures(scenario, report, serverCpu, core0));
        } catch (error) {
          fail(server, error);
        }
      }
    }
    return runs;
  }
  const loadgens = new Map<string, Loadgen>();
  try {
    for (const server of servers) {
      try {
        const [loadgen] = await Loadgen.open(
          loadgenArgs(scenario, server.port),
          setupSeconds(scenario.conns),
        );
        loadgens.set(server.name, loadgen);
        await loadgen.run(WARMUP_SECONDS);
      } catch (error) {
        fail(server, error);
      }
    }
    for (let i = 0; i < RUNS; i++) {
      for (const server of rotated(servers, i)) {
        const loadgen = loadgens.get(server.name);
        if (!loadgen || failed.has(server.name)) continue;
        await quiet(servers);
        try {
          const [report, serverCpu, core0] = await measured(
            server.pid,
            () => loadgen.run(SECONDS),
          );
          runs.get(server.name)!.push(
            figures(scenario, report, serverCpu, core0),
          );
        } catch (error) {
          fail(server, error);
        }
      }
    }
  } finally {
    for (const loadgen of loadgens.values()) await loadgen.close();
  }
  return runs;
}

const rotated = <T>(items: T[], by: number): T[] => items.map((_, i) => items[(i + by) % items.length]);

// ---------------------------------------------------------------- statistics

interface Spread {
  median: number;
  min: number;
  max: number;
}

function spread(values: number[]): Spread | undefined {
  const sorted = values.filter((value) => Number.isFinite(value)).sort((a, b) => a - b);
  if (sorted.length === 0) return undefined;
  const middle = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  return { median, min: sorted[0], max: sorted[sorted.length - 1] };
}

type Summary = { [K in keyof Run]?: Spread };

function summarize(runs: Run[]): Summary {
  const keys = Object.keys(runs[0] ?? {}) as (keyof Run)[];
  return Object.fromEntries(
    keys.map((
      key,
    ) => [
      key,
      spread(
        runs.map((run) => run[key]).filter((value) => value !== undefined) as number[],
      ),
    ]),
  );
}

// Ratios of ours to a reference, run i to run i (taken seconds apart), for three figures.
interface Ratios {
  perCpuSecond?: Spread; // messages per server CPU-second, ours / theirs: over 1 favours ours
  rate?: Spread; // messages a second, ours / theirs: over 1 favours ours
  p99?: Spread; // p99 latency, ours / theirs: under 1 favours ours
}

function ratios(ours: Run[], theirs: Run[]): Ratios {
  const paired = (key: keyof Run) => {
    const values: number[] = [];
    for (let i = 0; i < Math.min(ours.length, theirs.length); i++) {
      const a = ours[i][key], b = theirs[i][key];
      if (a !== undefined && b !== undefined && b > 0) values.push(a / b);
    }
    return spread(values);
  };
  return {
    perCpuSecond: paired("perCpuSecond"),
    rate: paired("rate"),
    p99: paired("p99"),
  };
}

// ---------------------------------------------------------------- the table

function format(value: number | undefined, digits = 0): string {
  if (value === undefined || !Number.isFinite(value)) return "–";
  return value >= 1e6
    ? `${(value / 1e6).toFixed(2)}M`
    : value >= 1e4
    ? `${(value / 1e3).toFixed(1)}k`
    : value >= 100
    ? value.toFixed(0)
    : value.toFixed(Math.max(digits, value >= 10 ? 1 : 2));
}

const times = (value: Spread | undefined) =>
  value ? `${value.median.toFixed(2)}× (${value.min.toFixed(2)}-${value.max.toFixed(2)})` : "–";

interface Result {
  scenario: Scenario;
  summaries: Map<string, Summary>;
  ratios: Map<string, Ratios>; // by reference
}

function table(results: Result[]): string {
  const others = SERVERS.filter((name) => name !== "ours");
  const names = SERVERS.join(" · ");
  const header = [
    "scenario",
    `msgs/s: ${names}`,
    `MB/s: ${names}`,
    `p50/p99 ms: ${names}`,
    `µs server CPU a msg: ${names}`,
    ...others.map((name) => `per CPU-s ours/${name}`),
    ...others.map((name) => `msgs/s ours/${name}`),
    ...others.map((name) => `p99 ours/${name}`),
    `load CPU %: ${names}`,
    "core 0 other / softirq %",
  ];
  const rows = results.map(({ scenario, summaries, ratios }) => {
    const each = (pick: (summary: Summary) => string) =>
      SERVERS.map((name) => summaries.get(name) ? pick(summaries.get(name)!) : "–").join(" / ");
    return [
      scenario.name,
      each((s) => format(s.rate?.median)),
      scenario.kind === "echo" ? each((s) => format(s.mbPerSec?.median)) : "–",
      scenario.kind === "connect" ? "–" : each((s) => `${format(s.p50?.median, 2)}/${format(s.p99?.median, 2)}`),
      each((s) => s.perCpuSecond ? format(1e6 / s.perCpuSecond.median, 2) : "–"),
      ...others.map((name) => times(ratios.get(name)?.perCpuSecond)),
      ...others.map((name) => times(ratios.get(name)?.rate)),
      ...others.map((name) => scenario.kind === "connect" ? "–" : times(ratios.get(name)?.p99)),
      each((s) => format(s.loadCpu?.median)),
      `${format(Math.max(...SERVERS.map((name) => summaries.get(name)?.core0Other?.median ?? 0)))} / ` +
      format(
        Math.max(
          ...SERVERS.map((name) => summaries.get(name)?.core0Softirq?.median ?? 0),
        ),
      ),
    ];
  });
  return [header, header.map(() => "---"), ...rows].map((row) => `| ${row.join(" | ")} |`).join("\n");
}

// Where ours misses issue 13's targets (bench/_targets.ts), by the median of each ratio.
function shortfalls(results: Result[]): string[] {
  const lines: string[] = [];
  for (const { scenario, ratios } of results) {
    const missed = misses(scenario.kind, ({ reference, figure }) => ratios.get(reference)?.[figure]?.median)
      .map(({ label, reference, figure }) => `${label}: ${times(ratios.get(reference)?.[figure])}`);
    if (missed.length) lines.push(`${scenario.name}: ${missed.join("; ")}`);
  }
  for (const { window, kept } of fanoutScaling(results)) {
    const ours = kept.get("ours"), deno = kept.get("deno");
    if (ours !== undefined && deno !== undefined && dropMissed(ours, deno)) {
      lines.push(
        `fanout 1000 → 5000 receivers × ${window} in flight: ours keeps ${ours.toFixed(2)}× of its ` +
          `deliveries per CPU-s, Deno ${deno.toFixed(2)}×`,
      );
    }
  }
  return lines;
}

// What each server keeps of its fan-out deliveries per CPU-second going from 1,000 to 5,000
// receivers (medians), for each window measured at both.
function fanoutScaling(
  results: Result[],
): { window: number; kept: Map<string, number> }[] {
  const fanouts = results.filter(({ scenario }) => scenario.kind === "fanout");
  return fanouts.filter(({ scenario }) => scenario.conns === 1000).flatMap(
    (small) => {
      const large = fanouts.find(({ scenario }) =>
        scenario.conns === 5000 && scenario.window === small.scenario.window
      );
      if (!large) return [];
      const kept = new Map<string, number>();
      for (const name of SERVERS) {
        const a = small.summaries.get(name)?.perCpuSecond?.median,
          b = large.summaries.get(name)?.perCpuSecond?.median;
        if (a && b) kept.set(name, b / a);
      }
      return [{ window: small.scenario.window, kept }];
    },
  );
}

// ---------------------------------------------------------------- the chart

const escapeXml = (text: string) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

// Horizontal bars of ours / reference in messages per server CPU-second, one group per
// scenario, on a log scale from 1.0 (the line), whiskers from the lowest to the highest run.
function chart(
  results: Result[],
  references: string[],
  subtitle: string[],
): string {
  const colors = ["#3465a4", "#e07b00", "#4e9a06", "#75507b"];
  const label = 330, plot = 500, right = 70, top = 100, bar = 11, gap = 12;
  const group = references.length * bar + gap;
  const width = label + plot + right;
  const height = top + results.length * group + 40;
  const values = results.flatMap(({ ratios }) =>
    references.flatMap((name) => {
      const r = ratios.get(name)?.perCpuSecond;
      return r ? [r.min, r.max] : [];
    })
  );
  const lo = Math.min(-2, Math.floor(Math.log2(Math.min(...values, 1)))); // at least 0.25 to 4
  const hi = Math.max(2, Math.ceil(Math.log2(Math.max(...values, 1))));
  const x = (ratio: number) => label + (Math.log2(ratio) - lo) / (hi - lo) * plot;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">Messages per server CPU-second: this module ÷ reference (over 1 favours this module)</text>`,
    ...subtitle.map((line, i) => `<text x="10" y="${40 + 15 * i}" fill="#555">${escapeXml(line)}</text>`),
  ];
  references.forEach((name, i) => {
    out.push(
      `<rect x="${10 + i * 170}" y="68" width="12" height="12" fill="${colors[i % colors.length]}"/>`,
      `<text x="${28 + i * 170}" y="78">ours / ${escapeXml(TITLES[name])}</text>`,
    );
  });
  out.push(
    `<text x="${10 + references.length * 170}" y="78" fill="#555">whiskers: lowest and highest run; log scale</text>`,
  );
  for (let power = lo; power <= hi; power++) {
    const ratio = 2 ** power, at = x(ratio).toFixed(1);
    out.push(
      `<line x1="${at}" y1="${top - 6}" x2="${at}" y2="${height - 34}" stroke="${power === 0 ? "#000" : "#ddd"}"` +
        `${power === 0 ? ' stroke-width="1.5"' : ""}/>`,
      `<text x="${at}" y="${height - 20}" text-anchor="middle" fill="#555">${
        ratio >= 1 ? ratio : ratio.toFixed(3).replace(/0+$/, "")
      }×</text>`,
    );
  }
  const at08 = x(0.8).toFixed(1);
  out.push(
    `<line x1="${at08}" y1="${top - 6}" x2="${at08}" y2="${height - 34}" stroke="#e07b00" stroke-dasharray="4 3"/>`,
    `<text x="${at08}" y="${top - 10}" text-anchor="end" fill="#e07b00" font-size="10">0.8× uWS target</text>`,
  );
  results.forEach(({ scenario, ratios }, row) => {
    const y0 = top + row * group;
    out.push(
      `<text x="${label - 8}" y="${(y0 + references.length * bar / 2 + 4).toFixed(1)}" text-anchor="end">` +
        `${escapeXml(scenario.name)}</text>`,
    );
    references.forEach((name, i) => {
      const r = ratios.get(name)?.perCpuSecond;
      const y = y0 + i * bar;
      if (!r) {
        out.push(
          `<text x="${x(1) + 4}" y="${y + bar - 2}" font-size="10" fill="#999">no result</text>`,
        );
        return;
      }
      const a = x(Math.min(1, r.median)), b = x(Math.max(1, r.median));
      const mid = (y + (bar - 2) / 2).toFixed(1);
      out.push(
        `<rect x="${a.toFixed(1)}" y="${y}" width="${Math.max(1, b - a).toFixed(1)}" height="${bar - 2}" ` +
          `fill="${colors[i % colors.length]}"/>`,
        `<line x1="${x(r.min).toFixed(1)}" y1="${mid}" x2="${x(r.max).toFixed(1)}" y2="${mid}" stroke="#222"/>`,
        `<text x="${(Math.max(b, x(r.max)) + 4).toFixed(1)}" y="${y + bar - 2}" font-size="10">${
          r.median.toFixed(2)
        }×</text>`,
      );
    });
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

// ---------------------------------------------------------------- main

async function installNodePackages(): Promise<void> {
  const installed = (name: string) => {
    try {
      return Deno.statSync(
        `${HERE}node_modules/${NODE_PACKAGES[name]}/package.json`,
      ).isFile;
    } catch {
      return false;
    }
  };
  const missing = SERVERS.filter((name) => NODE_PACKAGES[name] && !installed(name));
  if (missing.length === 0) return;
  console.error(
    `installing ${missing.map((name) => NODE_PACKAGES[name]).join(", ")} (npm ci in bench/)`,
  );
  const install = await new Deno.Command("npm", {
    args: [
      "ci",
      "--prefix",
      HERE,
      "--no-audit",
      "--no-fund",
      "--ignore-scripts",
    ],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!install.success) throw new Error("npm ci in bench/ failed");
}

async function main(): Promise<void> {
  for (const name of SERVERS) {
    if (!COMMANDS[name]) {
      throw new Error(
        `unknown server '${name}' (ours, deno, uws, ws, floor, base)`,
      );
    }
  }
  if (!SERVERS.includes("ours")) {
    throw new Error(
      "--servers must include ours: every figure is a ratio to it",
    );
  }
  const scenarios = chosenScenarios();
  if (scenarios.length === 0) {
    throw new Error(`no scenario matches '${flags.scenario}'`);
  }
  if (!PINNED) {
    console.error(
      "taskset is not available: servers and load are not pinned to separate cores",
    );
  }
  await Deno.mkdir(RESULTS, { recursive: true });
  await installNodePackages();
  await buildLoadgen();

  const started = new Date();
  const stamp = started.toISOString().replace(/[:.]/g, "-");
  const jsonl = `${RESULTS}load-${stamp}.jsonl`;
  const write = (record: Record<string, unknown>) =>
    Deno.writeTextFileSync(jsonl, JSON.stringify(record) + "\n", {
      append: true,
    });
  const loadavg = () => Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  const meta = {
    type: "meta",
    date: started.toISOString(),
    mode: `${QUICK ? "quick" : "full"}${flags.scenario ? ` (scenarios matching ${flags.scenario})` : ""}`,
    runs: RUNS,
    seconds: SECONDS,
    warmupSeconds: WARMUP_SECONDS,
    servers: SERVERS,
    pinned: PINNED,
    cores: navigator.hardwareConcurrency,
    loadavg: loadavg(),
    target: Deno.build.target,
    deno: Deno.version.deno,
    node: SERVERS.some((name) => NODE_PACKAGES[name])
      ? new TextDecoder().decode(
        new Deno.Command("node", { args: ["--version"] }).outputSync().stdout,
      ).trim()
      : undefined,
  };
  write(meta);
  console.error(
    `${meta.mode} run: ${scenarios.length} scenarios × ${
      SERVERS.join(", ")
    }, ${RUNS} runs of ${SECONDS} s; load average ${meta.loadavg}`,
  );

  const files = Math.max(...scenarios.map((scenario) => scenario.conns)) + 256;
  const servers: Server[] = [];
  const results: Result[] = [];
  try {
    for (const name of SERVERS) servers.push(await Server.start(name, files));
    for (const [index, scenario] of scenarios.entries()) {
      // A server that has crashed is started again for the next scenario, and said so.
      for (const [i, server] of servers.entries()) {
        if (await server.exited()) {
          console.error(
            `  the ${server.name} server had exited; starting it again`,
          );
          servers[i] = await Server.start(server.name, files);
        }
      }
      const runs = await runScenario(scenario, servers);
      for (const [server, list] of runs) {
        list.forEach((run, rep) => write({ type: "run", scenario: scenario.name, server, rep, ...run }));
      }
      const summaries = new Map(
        [...runs].filter(([, list]) => list.length > 0).map((
          [name, list],
        ) => [name, summarize(list)]),
      );
      const byReference = new Map(
        SERVERS.filter((name) => name !== "ours").map((
          name,
        ) => [name, ratios(runs.get("ours")!, runs.get(name)!)]),
      );
      for (const [server, summary] of summaries) {
        write({ type: "summary", scenario: scenario.name, server, ...summary });
      }
      for (const [reference, value] of byReference) {
        write({ type: "ratio", scenario: scenario.name, reference, ...value });
      }
      results.push({ scenario, summaries, ratios: byReference });
      const rates = SERVERS.map((name) => `${name} ${format(summaries.get(name)?.rate?.median)}/s`).join(", ");
      const perCpu = [...byReference].map(([name, r]) => `ours/${name} ${times(r.perCpuSecond)}`).join(", ");
      console.error(
        `[${index + 1}/${scenarios.length}] ${scenario.name}: ${rates}; per CPU-s ${perCpu}`,
      );
    }
  } finally {
    for (const server of servers) await server.stop();
  }

  const elapsed = (Date.now() - started.getTime()) / 1000;
  const about = [
    `${started.toISOString().slice(0, 16).replace("T", " ")} UTC, ${meta.mode} run: ${RUNS} runs of ${SECONDS} s ` +
    `each, medians (min-max); ${elapsed.toFixed(0)} s in all`,
    `${Deno.build.target}, ${meta.cores} cores, Deno ${Deno.version.deno}${meta.node ? `, Node ${meta.node}` : ""}; ` +
    `load average ${meta.loadavg} → ${loadavg()}`,
  ];
  const scaling = fanoutScaling(results);
  for (const { window, kept } of scaling) {
    write({ type: "fanoutScaling", window, kept: Object.fromEntries(kept) });
  }
  write({ type: "end", seconds: elapsed, loadavg: loadavg() });
  await Deno.copyFile(jsonl, `${RESULTS}latest.jsonl`);
  const references = SERVERS.filter((name) => name !== "ours");
  const svg = chart(results, references, about);
  await Deno.writeTextFile(`${RESULTS}ratios.svg`, svg);
  if (flags["write-docs"]) {
    await Deno.writeTextFile(`${ROOT}docs/bench.svg`, svg);
    // deno fmt formats SVG too, and `deno task check` checks docs/ with the project's settings.
    await new Deno.Command(Deno.execPath(), {
      args: ["fmt", "--config", CONFIG, `${ROOT}docs/bench.svg`],
      stdout: "null",
      stderr: "null",
    }).output();
  }

  console.log(table(results));
  console.log(`\n${about.join("; ")}`);
  for (const { window, kept } of scaling) {
    const each = [...kept].map(([name, value]) => `${name} ${value.toFixed(2)}×`).join(", ");
    console.log(
      `\nFan-out 1000 → 5000 receivers × ${window} in flight, deliveries per CPU-s kept: ${each}`,
    );
  }
  const misses = shortfalls(results);
  console.log(
    misses.length ? `\nBelow target:\n${misses.map((line) => `- ${line}`).join("\n")}` : "\nEvery target met.",
  );
  console.log(
    `\nbench/results/${jsonl.slice(RESULTS.length)}, bench/results/ratios.svg${
      flags["write-docs"] ? ", docs/bench.svg" : ""
    }`,
  );
}

if (import.meta.main) {
  // Interrupted: the servers and load generators go too.
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => {
      killChildren();
      Deno.exit(130);
    });
  }
  try {
    await main();
  } finally {
    killChildren();
  }
}
