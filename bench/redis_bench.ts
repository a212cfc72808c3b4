// What Redis and workers cost the broadcast server: `deno task bench:redis [--quick]`.
//
// 1. Latency a cross-node publish adds: one message at a time from a client of node A to
//    a client of the same room, on node A (no Redis; and with Redis on) or on node B (the
//    message goes through Redis). The clients are this process's WebSockets; their cost
//    is in every case, so the difference is what Redis adds.
// 2. A node's fan-out with Redis off and on: bench/loadgen.c (fanout: one sender, 100
//    receivers, 32 messages in flight) against node A; with Redis on, every message is
//    also published to Redis and node B (subscribed, no clients) receives it.
// 3. One worker against two (`--workers`), the same fan-out; on a 2-core machine the
//    load generator shares a core with the second worker.
//
// Pinning, where taskset exists: node A (or the workers' process) on core 0, node B,
// redis-server and the load generator on core 1; this process is not pinned. Every
// figure is the median of 3 runs. Loopback only. Results: a table, and
// bench/results/redis.json.
import { parseArgs } from "@std/cli/parse-args";
import { Lines, RedisServer, ServerProcess } from "../testdata/cluster.ts";

const flags = parseArgs(Deno.args, { boolean: ["quick"], string: ["receivers"] });
const REPS = 3;
const RUN_SECONDS = flags.quick ? 0.5 : 1.5;
const SAMPLES = flags.quick ? 300 : 2000;
const RECEIVERS = Number(flags.receivers ?? 100);
const HERE = new URL(".", import.meta.url).pathname;
const LOADGEN = `${HERE}results/loadgen`;
const CLK_TCK = Number(
  new TextDecoder().decode(new Deno.Command("getconf", { args: ["CLK_TCK"] }).outputSync().stdout),
);
const PINNED = new Deno.Command("taskset", { args: ["-c", "0", "true"] }).outputSync().success;
const cpu = (core: string) => PINNED ? core : undefined;

function cpuSeconds(pid: number): number {
  const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK; // utime + stime
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

async function buildLoadgen(): Promise<void> {
  const source = `${HERE}loadgen.c`;
  const built = await Deno.stat(LOADGEN).then((info) => info.mtime!, () => undefined);
  if (built !== undefined && built >= (await Deno.stat(source)).mtime!) return;
  await Deno.mkdir(`${HERE}results`, { recursive: true });
  const output = await new Deno.Command("cc", { args: ["-O2", "-Wall", "-o", LOADGEN, source] }).output();
  if (!output.success) throw new Error(`cc could not build loadgen.c:\n${new TextDecoder().decode(output.stderr)}`);
}

// ---------------------------------------------------------------- 1. latency

// Sends `count` messages one at a time from `from` to `to` (same room); returns the
// milliseconds from each send to its arrival.
async function latencies(from: string, to: string, count: number): Promise<number[]> {
  const open = (url: string) =>
    new Promise<WebSocket>((resolve, reject) => {
      const socket = new WebSocket(url);
      socket.onopen = () => resolve(socket);
      socket.onerror = () => reject(new Error(`cannot connect to ${url}`));
    });
  const receiver = await open(to);
  const sender = await open(from);
  let arrived: ((text: string) => void) | undefined;
  receiver.onmessage = (event) => arrived?.(event.data);
  try {
    // Both are in the room once the receiver gets the sender's messages: wait for one.
    const samples: number[] = [];
    for (let i = -50; i < count; i++) {
      const text = `m${i}`;
      const got = new Promise<void>((resolve) => arrived = (data) => data === text && resolve());
      const start = performance.now();
      sender.send(text);
      await got;
      if (i >= 0) samples.push(performance.now() - start);
    }
    return samples.sort((a, b) => a - b);
  } finally {
    sender.close();
    receiver.close();
  }
}

// ---------------------------------------------------------------- 2, 3. fan-out

interface FanoutReport {
  deliveries: number;
  p50_ms: number;
  p99_ms: number;
  wall_s: number;
}

// Runs loadgen fanout against `port` once; returns its report and the server's CPU seconds.
async function fanout(port: number, serverPid: number): Promise<[FanoutReport, number]> {
  const args = ["fanout", String(port), String(RECEIVERS), "32", String(RUN_SECONDS)];
  const command = PINNED ? ["taskset", "-c", "1", LOADGEN, ...args] : [LOADGEN, ...args];
  const child = new Deno.Command(command[0], { args: command.slice(1), stdin: "piped", stdout: "piped" }).spawn();
  const lines = new Lines(child.stdout);
  const stdin = child.stdin.getWriter();
  try {
    await lines.waitFor(/"ready":true/, 20_000);
    const before = cpuSeconds(serverPid);
    await stdin.write(new TextEncoder().encode("run\n"));
    const line = await lines.waitFor(/"mode":"fanout"/, 60_000);
    return [JSON.parse(line), cpuSeconds(serverPid) - before];
  } finally {
    await stdin.close().catch(() => {}); // the end of its input: it closes its connections and exits
    const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
    await child.status;
    clearTimeout(timer);
    await lines.done;
  }
}

interface Fanout {
  rate: number;
  p50: number;
  p99: number;
  serverUs: number;
}

async function fanouts(port: number, pid: number): Promise<Fanout> {
  const runs: Fanout[] = [];
  for (let rep = 0; rep < REPS; rep++) {
    const [report, serverCpu] = await fanout(port, pid);
    runs.push({
      rate: report.deliveries / report.wall_s,
      p50: report.p50_ms,
      p99: report.p99_ms,
      serverUs: serverCpu / report.deliveries * 1e6,
    });
  }
  return {
    rate: median(runs.map((run) => run.rate)),
    p50: median(runs.map((run) => run.p50)),
    p99: median(runs.map((run) => run.p99)),
    serverUs: median(runs.map((run) => run.serverUs)),
  };
}

// ---------------------------------------------------------------- the runs

await buildLoadgen();
const results: Record<string, unknown> = { pinned: PINNED, receivers: RECEIVERS, runSeconds: RUN_SECONDS };
const redis = await RedisServer.start(undefined, cpu("1"));
const started: { stop(): Promise<unknown> }[] = [redis];
try {
  // 1. Latency.
  const plain = await ServerProcess.start([], [], cpu("0"));
  started.push(plain);
  const nodeA = await ServerProcess.start(["--redis", redis.url], [], cpu("0"));
  started.push(nodeA);
  const nodeB = await ServerProcess.start(["--redis", redis.url], [], cpu("1"));
  started.push(nodeB);
  const latency: Record<string, { p50: number; p99: number }> = {};
  const cases: [string, string, string][] = [
    ["single node, no Redis", plain.url("/lat"), plain.url("/lat")],
    ["single node, Redis on", nodeA.url("/lat"), nodeA.url("/lat")],
    ["cross-node through Redis", nodeA.url("/lat"), nodeB.url("/lat")],
  ];
  for (const [name, from, to] of cases) {
    const runs = [];
    for (let rep = 0; rep < REPS; rep++) runs.push(await latencies(from, to, SAMPLES));
    latency[name] = {
      p50: median(runs.map((run) => percentile(run, 0.5))),
      p99: median(runs.map((run) => percentile(run, 0.99))),
    };
  }
  results.latency = latency;

  // 2. Fan-out on node A, Redis off (the plain node) and on (node B subscribed, no clients).
  const fanout: Record<string, Fanout> = {};
  fanout["Redis off"] = await fanouts(plain.port, plain.pid);
  fanout["Redis on"] = await fanouts(nodeA.port, nodeA.pid);
  for (const server of [plain, nodeA, nodeB]) await server.stop();
  started.length = 1;

  // 3. Workers.
  for (const count of [1, 2]) {
    const server = await ServerProcess.start(
      ["--workers", String(count)],
      ["--unstable-net"],
      cpu(count === 1 ? "0" : "0,1"),
    );
    started.push(server);
    fanout[`${count} worker${count === 1 ? "" : "s"}`] = await fanouts(server.port, server.pid);
    await server.stop();
    started.pop();
  }
  results.fanout = fanout;

  const ms = (value: number) => value.toFixed(3);
  console.log(`\nLatency of one message, p50 / p99 ms (${SAMPLES} samples, median of ${REPS} runs):`);
  console.log("| path | p50 ms | p99 ms |\n| --- | --- | --- |");
  for (const [name, { p50, p99 }] of Object.entries(latency)) console.log(`| ${name} | ${ms(p50)} | ${ms(p99)} |`);
  const base = latency["single node, no Redis"];
  const cross = latency["cross-node through Redis"];
  console.log(`Added by Redis across nodes: p50 +${ms(cross.p50 - base.p50)} ms, p99 +${ms(cross.p99 - base.p99)} ms`);
  console.log(`\nFan-out 1 sender -> ${RECEIVERS} receivers, window 32 (${RUN_SECONDS} s runs, median of ${REPS}):`);
  console.log("| server | deliveries/s | server µs CPU a delivery | p50 / p99 ms |\n| --- | --- | --- | --- |");
  for (const [name, run] of Object.entries(fanout)) {
    console.log(`| ${name} | ${Math.round(run.rate)} | ${run.serverUs.toFixed(2)} | ${ms(run.p50)} / ${ms(run.p99)} |`);
  }
  console.log(`Redis on / off: ${(fanout["Redis on"].rate / fanout["Redis off"].rate).toFixed(2)}x deliveries/s`);
  console.log(`2 workers / 1: ${(fanout["2 workers"].rate / fanout["1 worker"].rate).toFixed(2)}x deliveries/s`);
  if (!PINNED) console.log("(taskset is missing: nothing was pinned)");
  await Deno.mkdir(`${HERE}results`, { recursive: true });
  await Deno.writeTextFile(`${HERE}results/redis.json`, JSON.stringify(results, null, 2) + "\n");
} finally {
  for (const process of started.reverse()) await process.stop();
}
