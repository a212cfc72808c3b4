// Summarises a V8 .cpuprofile (from `deno run --cpu-prof`) by self time: the functions
// where the samples fell, then by kind (JavaScript, ops, GC, native), then by file. "(idle)" is the thread waiting for
// events; "(program)" is native code outside any JavaScript function (the event loop,
// op dispatch); op_* are Deno's ops, including the system calls made inside them.
//
//   deno run -R bench/cpuprofile.ts FILE.cpuprofile [TOP]
//
// To profile the server under load: start it with
//   deno run -A --cpu-prof --cpu-prof-dir=DIR [--cpu-prof-interval=MICROSECONDS] bench/servers/ours.ts PORT
// run bench/results/loadgen against it, and end it with a signal it exits on (the profile
// is written at exit: add `Deno.addSignalListener("SIGTERM", () => Deno.exit(0))`).

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

const [file, topArg] = Deno.args;
if (!file) {
  throw new Error(
    "usage: deno run -R bench/cpuprofile.ts FILE.cpuprofile [TOP]",
  );
}
const top = Number(topArg ?? 40);
const profile: Profile = JSON.parse(Deno.readTextFileSync(file));
const nodes = new Map(profile.nodes.map((node) => [node.id, node]));

// Each sample's time is the delta to the next one.
const byFunction = new Map<string, number>();
const byFile = new Map<string, number>();
let total = 0;
profile.samples.forEach((id, i) => {
  const time = profile.timeDeltas[i + 1] ?? 0;
  const { functionName, url, lineNumber } = nodes.get(id)!.callFrame;
  const name = url.replace(/^.*\//, "");
  const where = name ? `${name}:${lineNumber + 1}` : "";
  const key = `${functionName || "(anonymous)"} ${where}`.trim();
  byFunction.set(key, (byFunction.get(key) ?? 0) + time);
  byFile.set(name || "(native)", (byFile.get(name || "(native)") ?? 0) + time);
  total += time;
});

const idle = byFunction.get("(idle)") ?? 0;
// Shares of all samples and of those not idle.
function line(time: number, what: string): string {
  const busy = what === "(idle)" ? "" : `${(time / (total - idle) * 100).toFixed(1)}%`;
  const all = `${(time / total * 100).toFixed(1)}%`;
  return `${all.padStart(6)} ${busy.padStart(7)} ${(time / 1000).toFixed(0).padStart(7)} ms  ${what}`;
}
console.log(
  `${(total / 1000).toFixed(0)} ms sampled, ${((total - idle) / 1000).toFixed(0)} ms not idle`,
);
console.log("   all    busy      self  function");
for (
  const [key, time] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)
) console.log(line(time, key));
// Where the busy time went: JavaScript (the module's and Deno's own), ops (their Rust
// side, system calls included), the garbage collector, and native code outside both.
const byKind = new Map<string, number>();
for (const [key, time] of byFunction) {
  const kind = key === "(idle)"
    ? "(idle)"
    : key === "(garbage collector)"
    ? "GC"
    : key.startsWith("op_")
    ? "ops"
    : key === "(program)"
    ? "native (event loop, op dispatch)"
    : "JavaScript";
  byKind.set(kind, (byKind.get(kind) ?? 0) + time);
}
console.log("\n   all    busy      self  kind");
for (const [key, time] of [...byKind].sort((a, b) => b[1] - a[1])) {
  console.log(line(time, key));
}
console.log("\n   all    busy      self  file");
for (
  const [key, time] of [...byFile].sort((a, b) => b[1] - a[1]).slice(0, 15)
) console.log(line(time, key));
