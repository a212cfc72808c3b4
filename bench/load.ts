// Side-by-side load benchmark: our server, Deno.upgradeWebSocket and Node's ws.
//
//   deno task bench:load [--quick] [--servers ours,deno,ws] [--scenario echo|fanout|connect]
//
// Each server runs pinned to core 0, this load generator to core 1; loopback only.
// Every figure is the median of 3 repetitions. Results: a table, and bench/results/latest.json.
import { parseArgs } from "@std/cli/parse-args";
import { encodeFrame, Opcode } from "../frame.ts";
import { type Client, openMany } from "./client.ts";

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

function percentile(sorted: number[], p: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

// Runs `body` and returns the wall time, the server's and our own CPU seconds.
async function measured(pid: number, body: () => Promise<void>) {
  const [server0, self0, wall0] = [
    cpuTicks(pid),
    cpuTicks(Deno.pid),
    performance.now(),
  ];
  await body();
  const wall = (performance.now() - wall0) / 1000;
  return {
    wall,
    serverCpu: (cpuTicks(pid) - server0) / CLK_TCK,
    selfCpu: (cpuTicks(Deno.pid) - self0) / CLK_TCK,
  };
}

interface EchoCase {
  conns: number;
  size: number;
  window: number;
  text: boolean;
}

// Every connection keeps `window` messages in flight; each echo is answered by a new message.
async function echoRun(
  server: Server,
  clients: Client[],
  spec: EchoCase,
): Promise<Figures> {
  const frame = encodeFrame(
    spec.text ? Opcode.Text : Opcode.Binary,
    spec.text ? "x".repeat(spec.size) : new Uint8Array(spec.size),
    { mask: true },
  );
  const batches = new Map<number, Uint8Array>();
  const batch = (count: number) => {
    if (spec.size >= 64 * 1024) return null; // large frames go one write each
    let bytes = batches.get(count);
    if (!bytes) {
      bytes = new Uint8Array(frame.length * count);
      for (let i = 0; i < count; i++) bytes.set(frame, i * frame.length);
      batches.set(count, bytes);
    }
    return bytes;
  };
  const send = async (client: Client, count: number) => {
    const bytes = batch(count);
    if (bytes) await client.write(bytes);
    else for (let i = 0; i < count; i++) await client.write(frame);
  };
  const latencies: number[] = [];
  let messages = 0;
  const deadline = performance.now() + RUN_SECONDS * 1000;
  const usage = await measured(server.pid, async () => {
    await Promise.all(clients.map(async (client) => {
      const sentAt: number[] = [];
      let next = 0;
      const now = performance.now();
      for (let i = 0; i < spec.window; i++) sentAt.push(now);
      await send(client, spec.window);
      let inFlight = spec.window;
      while (inFlight > 0) {
        let received = 0;
        const open = await client.read((reply) => {
          if (reply.opcode !== Opcode.Text && reply.opcode !== Opcode.Binary) {
            return;
          }
          latencies.push(performance.now() - sentAt[next++]);
          received++;
        });
        if (!open) throw new Error("the server closed the connection");
        messages += received;
        inFlight -= received;
        if (received > 0 && performance.now() < deadline) {
          const time = performance.now();
          for (let i = 0; i < received; i++) sentAt.push(time);
          inFlight += received;
          await send(client, received);
        }
      }
    }));
  });
  latencies.sort((a, b) => a - b);
  return {
    rate: messages / usage.wall,
    mbPerSec: messages * spec.size / usage.wall / 1e6,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    serverUs: usage.serverCpu / messages * 1e6,
    loadCpu: usage.selfCpu / usage.wall * 100,
  };
}

// One sender, `receivers` others, all reading; the sender keeps `window` messages
// in flight, counted done when it receives its own copy.
async function fanoutRun(
  server: Server,
  clients: Client[],
  window: number,
): Promise<Figures> {
  const sender = clients[0];
  const sentAt: number[] = [];
  const latencies: number[] = [];
  let deliveries = 0;
  let acknowledged = 0;
  let wake = () => {};
  let reading = true;
  const deadline = performance.now() + RUN_SECONDS * 1000;
  const usage = await measured(server.pid, async () => {
    const readers = clients.map(async (client) => {
      while (reading) {
        const open = await client.read((frame) => {
          if (frame.opcode !== Opcode.Binary) return; // connect notices
          const sequence = new DataView(
            frame.payload.buffer,
            frame.payload.byteOffset,
          ).getUint32(0);
          latencies.push(performance.now() - sentAt[sequence]);
          deliveries++;
          if (client === sender) {
            acknowledged++;
            wake();
          }
        });
        if (!open) return;
      }
    });
    const payload = new Uint8Array(32);
    for (let sequence = 0; performance.now() < deadline; sequence++) {
      while (sequence - acknowledged >= window) {
        await new Promise<void>((resolve) => wake = resolve);
      }
      new DataView(payload.buffer).setUint32(0, sequence);
      sentAt[sequence] = performance.now();
      await sender.write(encodeFrame(Opcode.Binary, payload, { mask: true }));
    }
    const expected = sentAt.length * clients.length;
    const drainBy = performance.now() + 10_000;
    while (deliveries < expected && performance.now() < drainBy) await sleep(5);
    reading = false;
    // Wake the readers with one last message so that they return.
    await sender.write(encodeFrame(Opcode.Text, "stop", { mask: true }));
    await Promise.race([Promise.all(readers), sleep(2000)]);
  });
  latencies.sort((a, b) => a - b);
  return {
    rate: deliveries / usage.wall,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    serverUs: usage.serverCpu / deliveries * 1e6,
    loadCpu: usage.selfCpu / usage.wall * 100,
  };
}

// Opens `count` connections that then sit idle; handshakes/s and RSS per idle connection.
async function connectRun(server: Server, count: number): Promise<Figures> {
  await sleep(300);
  const rssBefore = rssKiB(server.pid);
  let clients: Client[] = [];
  const usage = await measured(server.pid, async () => {
    clients = await openMany(server.port, count);
  });
  // Idle clients still read what arrives (the servers announce every connect).
  let reading = true;
  const readers = clients.map(async (client) => {
    while (reading && (await client.read(() => {})));
  });
  await sleep(500);
  const rssPerConnKiB = (rssKiB(server.pid) - rssBefore) / count;
  reading = false;
  clients.forEach((client) => client.close());
  await Promise.race([Promise.all(readers), sleep(2000)]);
  await sleep(500);
  return {
    rate: count / usage.wall,
    serverUs: usage.serverCpu / count * 1e6,
    loadCpu: usage.selfCpu / usage.wall * 100,
    rssPerConnKiB,
  };
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
        const clients = await openMany(server.port, spec.conns);
        record(spec.name, await repeat(() => echoRun(server, clients, spec)));
        clients.forEach((client) => client.close());
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
      const clients = await openMany(server.port, receivers + 1);
      await sleep(500);
      record(scenario, await repeat(() => fanoutRun(server, clients, 8)));
      clients.forEach((client) => client.close());
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
