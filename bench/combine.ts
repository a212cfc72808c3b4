// Puts several `bench:load` result files side by side: for every scenario, each file's median
// ratio of ours to Deno and to uWebSockets.js (per server CPU-second, and p99 against Deno's),
// and whether the median of those medians meets issue 13's targets.
//
//   deno run -R bench/combine.ts bench/results/load-A.jsonl bench/results/load-B.jsonl ...
//
// Prints a Markdown table; each cell is "median of the files' medians (file 1 · file 2 · ...)".
// The targets are bench/_targets.ts's, which bench/load.ts checks one run against.
import { dropMissed, kindOf, median, misses } from "./_targets.ts";

interface Ratio {
  type: "ratio";
  scenario: string;
  reference: string;
  perCpuSecond: { median: number };
  rate: { median: number };
  p99?: { median: number };
}

interface Summary {
  type: "summary";
  scenario: string;
  server: string;
  perCpuSecond: { median: number };
}

const files = Deno.args;
if (files.length === 0) {
  throw new Error("usage: deno run -R bench/combine.ts FILE.jsonl...");
}
// "server, window" → per file: deliveries per CPU-second at 5,000 ÷ at 1,000 receivers
const drops = new Map<string, number[]>();
// scenario → reference → figure → one median per file
const table = new Map<string, Map<string, Map<string, number[]>>>();
// scenario → per file: the floor server's median per CPU-second ÷ Deno's
const floorToDeno = new Map<string, number[]>();
for (const file of files) {
  const perCpuSecond = new Map<string, number>(); // "server scenario" → median
  for (const line of Deno.readTextFileSync(file).split("\n")) {
    if (line.includes('"type":"summary"')) {
      const summary: Summary = JSON.parse(line);
      perCpuSecond.set(
        `${summary.server} ${summary.scenario}`,
        summary.perCpuSecond.median,
      );
    }
    if (!line.includes('"type":"ratio"')) continue;
    const ratio: Ratio = JSON.parse(line);
    const byReference = table.get(ratio.scenario) ?? new Map();
    table.set(ratio.scenario, byReference);
    const figures = byReference.get(ratio.reference) ?? new Map();
    byReference.set(ratio.reference, figures);
    for (const figure of ["perCpuSecond", "rate", "p99"] as const) {
      const values = figures.get(figure) ?? [];
      values.push(ratio[figure]?.median ?? NaN);
      figures.set(figure, values);
    }
  }
  for (const scenario of table.keys()) {
    const floor = perCpuSecond.get(`floor ${scenario}`),
      deno = perCpuSecond.get(`deno ${scenario}`);
    if (floor && deno) {
      floorToDeno.set(scenario, [
        ...floorToDeno.get(scenario) ?? [],
        floor / deno,
      ]);
    }
  }
  for (const [key, at5000] of perCpuSecond) {
    const match = /^(\S+) fanout 1 → 5000 receivers × (\d+)/.exec(key);
    const at1000 = match && perCpuSecond.get(key.replace("5000", "1000"));
    if (!match || !at1000) continue;
    const name = `${match[1]}, ${match[2]} in flight`;
    drops.set(name, [...drops.get(name) ?? [], at5000 / at1000]);
  }
}

function cell(values: number[] | undefined): string {
  if (!values?.length || values.some((value) => !Number.isFinite(value))) {
    return "–";
  }
  return `${median(values).toFixed(2)}× (${values.map((value) => value.toFixed(2)).join(" · ")})`;
}

// A before/after column when the runs measured base (main before a change) too, and two
// for the floor of Deno's public API when they measured it: against Deno's own server, and ours against it.
const withBase = [...table.values()].some((byReference) => byReference.has("base"));
const withFloor = floorToDeno.size > 0;
console.log(
  `| scenario |${withBase ? " per CPU-s ours/base |" : ""} per CPU-s ours/Deno |${
    withFloor ? " per CPU-s floor/Deno | per CPU-s ours/floor |" : ""
  } msgs/s ours/Deno | p99 ours/Deno | per CPU-s ours/uWS | short of |`,
);
console.log(
  `| --- |${withBase ? " --- |" : ""} --- |${withFloor ? " --- | --- |" : ""} --- | --- | --- | --- |`,
);
for (const [scenario, byReference] of table) {
  const deno = byReference.get("deno"), uws = byReference.get("uws");
  const base = withBase ? ` ${cell(byReference.get("base")?.get("perCpuSecond"))} |` : "";
  const floor = withFloor
    ? ` ${cell(floorToDeno.get(scenario))} | ${cell(byReference.get("floor")?.get("perCpuSecond"))} |`
    : "";
  const short = misses(kindOf(scenario), ({ reference, figure }) => {
    const values = byReference.get(reference)?.get(figure);
    return values?.length ? median(values) : undefined;
  }).map(({ label }) => label);
  const p99 = scenario.startsWith("connect") ? "–" : cell(deno?.get("p99"));
  console.log(
    `| ${scenario} |${base} ${cell(deno?.get("perCpuSecond"))} |${floor} ${cell(deno?.get("rate"))} | ${p99} | ${
      cell(uws?.get("perCpuSecond"))
    } | ${short.join(", ") || "–"} |`,
  );
}

console.log(
  "\nFan-out 1,000 → 5,000 receivers: deliveries per CPU-second kept, by server and window",
);
for (const [name, values] of drops) {
  const [server, window] = name.split(", ");
  const deno = drops.get(`deno, ${window}`);
  const short = server === "ours" && deno && dropMissed(median(values), median(deno)) ? " (short of Deno's)" : "";
  console.log(`- ${name}: ${cell(values)}${short}`);
}
