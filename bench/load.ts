// Side-by-side load benchmark: our server, Deno.upgradeWebSocket and Node's ws.
//
//   deno task bench:load [--quick] [--servers ours,deno,ws] [--scenario echo|fanout|connect]
//
// Each server runs pinned to core 0, the load generator to core 1; loopback only. The load
// generator is bench/loadgen.c (epoll, single-threaded), built into bench/results/ with the
// system's C compiler. Every figure is the median of 3 repetitions. Results: a table, and
// bench/results/latest.json.
import { parseArgs } from "@std/cli/parse-args";

const flags = parseArgs(Deno.args, {
  boolean: ["quick"],
  string: ["servers", "scenario"],
});
const QUICK = flags.quick;
const REPS = 3;
const RUN_SECONDS = QUICK ? 0.25 : 1.5;
const SERVERS: string[] = (flags.servers ?? "ours,deno,ws").split(",");
const HERE = new URL(".", import.meta.url).pathname;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;
const CLK_TCK = Number(
  new TextDecoder().decode(
    new Deno.Command("getconf", { args: ["CLK_TCK"] }).outputSync().stdout,
  ),
);
const PINNED = new Deno.Command("taskset", {
  args: ["-pc", "1", String(Deno.pid)],
  stdout: "null",
}).outputSync()
  .success;

// ---------------------------------------------------------------- processes

const cpuTicks = (pid: number) => {
  const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1]
    .split(" ");
  return Number(fields[11]) + Number(fields[12]); // utime + stime
};
const rssKiB = (pid: number) =>
  Number(
    /VmRSS:\s+(\d+)/.exec(Deno.readTextFileSync(`/proc/${pid}/status`))![1],
  );
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Server {
  pid: number;
  port: number;
  stop(): Promise<void>;
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
  ws: ["node", `${HERE}servers/ws_node.mjs`],
};

async function startServer(name: string, echo: boolean): Promise<Server> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const [program, ...args] = COMMANDS[name];
  const command = PINNED ? ["taskset", "-c", "0", program] : [program];
  const child = new Deno.Command(command[0], {
    args: [
      ...command.slice(1),
      ...args,
      String(port),
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

// ---------------------------------------------------------------- the load generator

const LOADGEN_SOURCE = `${HERE}loadgen.c`;
const LOADGEN = `${HERE}results/loadgen`; // bench/results/ is git-ignored

// Builds the load generator when it is missing or older than its source.
async function buildLoadgen(): Promise<void> {
  const source = (await Deno.stat(LOADGEN_SOURCE)).mtime!;
  const built = (await Deno.stat(LOADGEN).catch(() => null))?.mtime;
  if (built && built >= source) return;
  await Deno.mkdir(`${HERE}results`, { recursive: true });
  const compilers = ["cc", "gcc", "clang"];
  for (const cc of compilers) {
    let output: Deno.CommandOutput;
    try {
      output = await new Deno.Command(cc, {
        args: ["-O2", "-Wall", "-Wextra", "-o", LOADGEN, LOADGEN_SOURCE],
      }).output();
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
    `bench:load needs a C compiler for its load generator (bench/loadgen.c): none of ${compilers.join(", ")} found`,
  );
}

// One JSON line of the load generator: the connections' setup, or a run.
interface Report {
  wall_s: number;
  cpu_s: number; // the load generator's own CPU seconds
  messages: number; // echo
  deliveries: number; // fanout
  p50_ms: number | null;
  p99_ms: number | null;
}

// A running load generator: it opens its connections and reports ("ready"), then does a
// run per "run" line on its stdin; the end of its stdin closes them (see loadgen.c).
class Loadgen {
  #lines: ReadableStreamDefaultReader<string>;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #buffered = "";
  #failed = false;

  private constructor(readonly child: Deno.ChildProcess) {
    this.#lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    this.#stdin = child.stdin.getWriter();
  }

  // Starts one and waits for its connections: returns it and the setup's report.
  static async open(args: (string | number)[]): Promise<[Loadgen, Report]> {
    const command = PINNED ? ["taskset", "-c", "1", LOADGEN] : [LOADGEN];
    const loadgen = new Loadgen(
      new Deno.Command(command[0], {
        args: [...command.slice(1), ...args.map(String)],
        stdin: "piped",
        stdout: "piped",
        stderr: "inherit",
      }).spawn(),
    );
    return [loadgen, await loadgen.#report()];
  }

  async run(): Promise<Report> {
    await this.#stdin.write(new TextEncoder().encode("run\n"));
    return this.#report();
  }

  async #report(): Promise<Report> {
    while (!this.#buffered.includes("\n")) {
      const { value, done } = await this.#lines.read();
      if (done) {
        this.#failed = true;
        throw new Error(
          `the load generator exited (status ${(await this.child.status).code})`,
        );
      }
      this.#buffered += value;
    }
    const end = this.#buffered.indexOf("\n");
    const line = this.#buffered.slice(0, end);
    this.#buffered = this.#buffered.slice(end + 1);
    return JSON.parse(line);
  }

  // Ends its input: it closes its connections and exits.
  async close(): Promise<void> {
    await this.#stdin.close().catch(() => {});
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    const status = await this.child.status;
    clearTimeout(timer);
    await this.#lines.cancel().catch(() => {});
    if (!status.success && !this.#failed) {
      throw new Error(`the load generator exited with status ${status.code}`);
    }
  }
}

// ---------------------------------------------------------------- measurements

interface Figures {
  rate: number; // messages (or deliveries, or handshakes) per second
  mbPerSec?: number;
  p50?: number; // ms
  p99?: number; // ms
  serverUs: number; // server CPU µs per message
  loadCpu: number; // the load generator's own CPU %
  rssPerConnKiB?: number;
}

// Runs `body` and returns its result and the server's CPU seconds meanwhile.
async function measured<T>(
  pid: number,
  body: () => Promise<T>,
): Promise<[T, number]> {
  const server0 = cpuTicks(pid);
  const result = await body();
  return [result, (cpuTicks(pid) - server0) / CLK_TCK];
}

const loadCpu = (report: Report) => report.cpu_s / report.wall_s * 100;

interface EchoCase {
  conns: number;
  size: number;
  window: number;
  text: boolean;
}

// Every connection keeps `window` messages in flight; each echo is answered by a new message.
async function echoRun(
  server: Server,
  loadgen: Loadgen,
  spec: EchoCase,
): Promise<Figures> {
  const [report, serverCpu] = await measured(server.pid, () => loadgen.run());
  return {
    rate: report.messages / report.wall_s,
    mbPerSec: report.messages * spec.size / report.wall_s / 1e6,
    p50: report.p50_ms ?? undefined,
    p99: report.p99_ms ?? undefined,
    serverUs: serverCpu / report.messages * 1e6,
    loadCpu: loadCpu(report),
  };
}

// One sender, `receivers` others, all reading; the sender keeps `window` messages
// in flight, counted done when it receives its own copy.
async function fanoutRun(server: Server, loadgen: Loadgen): Promise<Figures> {
  const [report, serverCpu] = await measured(server.pid, () => loadgen.run());
  return {
    rate: report.deliveries / report.wall_s,
    p50: report.p50_ms ?? undefined,
    p99: report.p99_ms ?? undefined,
    serverUs: serverCpu / report.deliveries * 1e6,
    loadCpu: loadCpu(report),
  };
}

// Opens `count` connections that then sit idle; handshakes/s and RSS per idle connection.
async function connectRun(server: Server, count: number): Promise<Figures> {
  await sleep(300);
  const rssBefore = rssKiB(server.pid);
  const [[loadgen, report], serverCpu] = await measured(
    server.pid,
    () => Loadgen.open(["connect", server.port, count]),
  );
  try {
    // Idle clients still read what arrives (the servers announce every connect).
    await sleep(500);
    const rssPerConnKiB = (rssKiB(server.pid) - rssBefore) / count;
    return {
      rate: count / report.wall_s,
      serverUs: serverCpu / count * 1e6,
      loadCpu: loadCpu(report),
      rssPerConnKiB,
    };
  } finally {
    await loadgen.close();
    await sleep(500);
  }
}

// ---------------------------------------------------------------- scenarios

const KiB = 1024;
const MiB = 1024 * 1024;
const ECHO: (EchoCase & { name: string })[] = [];
for (
  const [label, size] of [["32 B", 32], ["16 KiB", 16 * KiB], [
    "1 MiB",
    MiB,
  ]] as const
) {
  for (const conns of [1, 64]) {
    for (const window of [1, 32]) {
      // Bound what is in flight at once to 64 MiB.
      if (size * conns * window > 64 * MiB) continue;
      ECHO.push({
        name: `echo ${conns} conn × ${label} × window ${window}`,
        conns,
        size,
        window,
        text: false,
      });
    }
  }
}
ECHO.push({
  name: "echo 1 conn × 1 MiB text × window 1",
  conns: 1,
  size: MiB,
  window: 1,
  text: true,
});
ECHO.push({
  name: "echo 1 conn × 1 MiB text × window 32",
  conns: 1,
  size: MiB,
  window: 32,
  text: true,
});

type Results = Record<string, Record<string, Figures>>; // scenario -> server -> figures

function median(runs: Figures[]): Figures {
  const pick = (key: keyof Figures) => {
    const values = runs.map((run) => run[key]).filter((value) => value !== undefined) as number[];
    values.sort((a, b) => a - b);
    return values.length ? values[Math.floor(values.length / 2)] : undefined;
  };
  return Object.fromEntries(
    Object.keys(runs[0]).map((key) => [key, pick(key as keyof Figures)]),
  ) as unknown as Figures;
}

async function repeat(run: () => Promise<Figures>): Promise<Figures> {
  const runs: Figures[] = [];
  for (let i = 0; i < REPS; i++) runs.push(await run());
  return median(runs);
}

async function benchServer(name: string, results: Results): Promise<void> {
  const want = (scenario: string) => !flags.scenario || scenario.startsWith(flags.scenario);
  const record = (scenario: string, figures: Figures) => {
    (results[scenario] ??= {})[name] = figures;
    console.error(
      `  ${name.padEnd(4)} ${scenario}: ${format(figures.rate)}/s, ${figures.serverUs.toFixed(2)} µs CPU each`,
    );
  };
  if (ECHO.some((spec) => want(spec.name))) {
    const server = await startServer(name, true);
    try {
      for (const spec of ECHO.filter((spec) => want(spec.name))) {
        const { conns, size, window, text } = spec;
        const [loadgen] = await Loadgen.open(
          [
            "echo",
            server.port,
            conns,
            size,
            window,
            RUN_SECONDS,
            text ? "text" : "binary",
          ],
        );
        try {
          record(spec.name, await repeat(() => echoRun(server, loadgen, spec)));
        } finally {
          await loadgen.close();
        }
        await sleep(100);
      }
    } finally {
      await server.stop();
    }
  }
  for (const receivers of [100, 1000]) {
    const scenario = `fanout 1 sender → ${receivers} receivers`;
    if (!want(scenario)) continue;
    const server = await startServer(name, false);
    try {
      const [loadgen] = await Loadgen.open([
        "fanout",
        server.port,
        receivers,
        8,
        RUN_SECONDS,
      ]);
      try {
        await sleep(500); // the connect notices arrive (and are skipped)
        record(scenario, await repeat(() => fanoutRun(server, loadgen)));
      } finally {
        await loadgen.close();
      }
    } finally {
      await server.stop();
    }
  }
  // Quick mode opens fewer: the reference servers announce each connect to all (O(n²)).
  const handshakes = QUICK ? 300 : 1000;
  const scenario = `connect ${handshakes} handshakes`;
  if (want(scenario)) {
    const server = await startServer(name, false);
    try {
      record(scenario, await repeat(() => connectRun(server, handshakes)));
    } finally {
      await server.stop();
    }
  }
}

// ---------------------------------------------------------------- the table

function format(value: number | undefined, digits = 0): string {
  if (value === undefined || Number.isNaN(value)) return "–";
  return value >= 1e6
    ? `${(value / 1e6).toFixed(2)}M`
    : value >= 1e4
    ? `${(value / 1e3).toFixed(1)}k`
    : value.toFixed(digits);
}

const ratio = (ours: number | undefined, theirs: number | undefined) =>
  ours === undefined || theirs === undefined ? "–" : `${(ours / theirs).toFixed(2)}×`;

function table(results: Results): string {
  const others = SERVERS.filter((name) => name !== "ours");
  const header = [
    "scenario",
    ...SERVERS.map((name) => `${name} rate/s`),
    ...others.map((name) => `ours/${name} rate`),
    ...SERVERS.map((name) => `${name} µs CPU/msg`),
    ...others.map((name) => `ours/${name} msgs per CPU-s`),
    ...SERVERS.map((name) => `${name} p50/p99 ms`),
    "load CPU %",
  ];
  const rows = Object.entries(results).map(([scenario, byServer]) => {
    const ours = byServer.ours;
    const mb = ours?.mbPerSec && ours.mbPerSec >= 1
      ? ` (${SERVERS.map((n) => format(byServer[n]?.mbPerSec)).join("/")} MB/s)`
      : "";
    const rss = ours?.rssPerConnKiB !== undefined
      ? ` (RSS/conn KiB ${
        SERVERS.map((n) => byServer[n]?.rssPerConnKiB?.toFixed(1) ?? "–").join(
          "/",
        )
      })`
      : "";
    return [
      scenario + mb + rss,
      ...SERVERS.map((name) => format(byServer[name]?.rate)),
      ...others.map((name) => ratio(ours?.rate, byServer[name]?.rate)),
      ...SERVERS.map((name) => byServer[name]?.serverUs.toFixed(2) ?? "–"),
      ...others.map((name) => ratio(byServer[name]?.serverUs, ours?.serverUs)),
      ...SERVERS.map((name) =>
        byServer[name]?.p50 === undefined ? "–" : `${byServer[name].p50!.toFixed(2)}/${byServer[name].p99!.toFixed(2)}`
      ),
      SERVERS.map((name) => byServer[name]?.loadCpu.toFixed(0) ?? "–").join(
        "/",
      ),
    ];
  });
  return [header, header.map(() => "---"), ...rows].map((row) => `| ${row.join(" | ")} |`).join("\n");
}

if (import.meta.main) {
  if (!PINNED) {
    console.error(
      "taskset is not available: server and load are not pinned to separate cores",
    );
  }
  if (
    SERVERS.includes("ws") &&
    !(await Deno.stat(`${HERE}node_modules/ws`).catch(() => null))
  ) {
    const install = await new Deno.Command("npm", {
      args: ["ci", "--prefix", HERE, "--no-audit", "--no-fund"],
    }).output();
    if (!install.success) {
      throw new Error(
        `npm ci in bench/ failed: ${new TextDecoder().decode(install.stderr)}`,
      );
    }
  }
  await buildLoadgen();
  const started = performance.now();
  const results: Results = {};
  for (const name of SERVERS) {
    console.error(`${name}:`);
    await benchServer(name, results);
  }
  const elapsed = (performance.now() - started) / 1000;
  console.log(table(results));
  console.log(
    `\n${QUICK ? "quick" : "full"} run, ${REPS} repetitions of ${RUN_SECONDS} s, median shown; ` +
      `${elapsed.toFixed(0)} s in all; ${Deno.build.target}, Deno ${Deno.version.deno}`,
  );
  await Deno.mkdir(`${HERE}results`, { recursive: true });
  await Deno.writeTextFile(
    `${HERE}results/latest.json`,
    JSON.stringify(
      {
        quick: QUICK,
        date: new Date().toISOString(),
        seconds: elapsed,
        results,
      },
      null,
      2,
    ),
  );
}
