// `deno task mutate`: the mutation audit. Each mutant of .ci/mutants.ts is applied
// alone to a scratch copy of the repository, the tests are run against it with a time
// bound, and the mutant is called killed (a test failed: the first one is named),
// killed by timeout (a test or the run hung), survived, equivalent (declared so, and
// no test failed) or stale (its `find` no longer occurs exactly once). A mutant first
// meets its own `tests`, else its file's own test file and its area's (type-checked:
// a mutant that does not type-check is the table's fault); one that survives them meets
// the rest of the suite (`deno test -A --doc`, without the files it already passed and
// without a second type check) before it is called a survivor. A declared equivalent
// meets only its first files unless --full-equivalents: a full-suite run costs about
// ten first runs. Every test is bounded (.ci/test_timeout.ts) and a failing one is
// retried once before it counts.
//
//   deno task mutate [--filter AREA|ID[,...]] [--jobs N] [--timeout SECONDS] [--list]
//                    [--full-equivalents]
//
// The report goes to stdout and bench/results/mutate.json (mutate-filter.json for a run
// with --filter, so that it does not replace the full report). The exit status is 0 (an
// audit, not a gate), or 1 when a mutant is stale or does not type-check, so that the
// table is kept in step with the code.

import { parseArgs } from "@std/cli/parse-args";
import { AREA_TESTS, type Mutant, MUTANTS } from "./mutants.ts";

type Status = "killed" | "killed-by-timeout" | "survived" | "equivalent" | "stale" | "invalid";

interface Result {
  id: string;
  area: string;
  file: string;
  what: string;
  status: Status;
  /** The first failing test (`file: name`), or what else ended the run. */
  killer?: string;
  /** Which run decided: the area's test files, or the full suite. */
  suite?: "area" | "full";
  seconds: number;
  note?: string;
  /** Tests that failed once and passed on the retry, in this mutant's runs. */
  flaky?: string[];
}

interface Run {
  failed: boolean;
  timedOut: boolean;
  killer?: string;
  invalid?: string;
  /** Tests that failed once and passed on the retry. */
  flaky: string[];
  seconds: number;
}

const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname);
const RESULTS_DIR = `${ROOT}bench/results`;
const PRELOAD = ".ci/test_timeout.ts";
// Per test inside a run: the slowest test takes 3 s on an idle machine.
const TEST_TIMEOUT_MS = 30_000;

const USAGE = `Usage: deno task mutate [OPTIONS]

Options:
  --filter AREA|ID   run only these mutants: an area, an id, or an id prefix
                     (comma-separated, repeatable)
  --jobs N           mutants run at once, each in its own scratch copy (default 1)
  --timeout SECONDS  bound on one test run of a mutant (default: 3 x the unmutated
                     full suite, at least 120)
  --list             list the mutants and check that each still applies
  --skip-baseline    do not run the unmutated suite first (needs --timeout)
  --full-equivalents run declared equivalents on the full suite too, not only on
                     their first test files
  --help             show this help`;

function fail(message: string): never {
  console.error(`error: ${message}\n\n${USAGE}`);
  Deno.exit(2);
}

const flags = parseArgs(Deno.args, {
  string: ["filter", "jobs", "timeout"],
  boolean: ["list", "help", "skip-baseline", "full-equivalents"],
  collect: ["filter"],
  unknown: (arg: string) => fail(`unknown argument ${arg}`),
});
if (flags.help) {
  console.log(USAGE);
  Deno.exit(0);
}
const jobs = flags.jobs === undefined ? 1 : Number(flags.jobs);
if (!Number.isInteger(jobs) || jobs < 1) fail(`--jobs must be a positive integer, got ${flags.jobs}`);
const timeoutFlag = flags.timeout === undefined ? undefined : Number(flags.timeout);
if (timeoutFlag !== undefined && !(timeoutFlag > 0)) fail(`--timeout must be a positive number, got ${flags.timeout}`);
if (flags["skip-baseline"] && timeoutFlag === undefined) fail("--skip-baseline needs --timeout");

const terms = (flags.filter as string[]).flatMap((value) => value.split(",")).map((term) => term.trim()).filter(
  Boolean,
);
const selected = MUTANTS.filter((mutant) =>
  terms.length === 0 || terms.some((term) => mutant.area === term || mutant.id.startsWith(term))
);
if (selected.length === 0) fail(`no mutant matches --filter ${terms.join(",")}`);
const duplicate = MUTANTS.find((mutant, index) => MUTANTS.findIndex((other) => other.id === mutant.id) !== index);
if (duplicate) fail(`mutant id ${duplicate.id} is used twice in .ci/mutants.ts`);

// --- Sources and staleness ---

const sources = new Map<string, string>();
function source(file: string): string | undefined {
  if (!sources.has(file)) {
    try {
      sources.set(file, Deno.readTextFileSync(ROOT + file));
    } catch {
      return undefined;
    }
  }
  return sources.get(file);
}

function occurrences(text: string, find: string): number {
  return find === "" ? 0 : text.split(find).length - 1;
}

// Why a mutant cannot be applied, or undefined when it can.
function staleness(mutant: Mutant): string | undefined {
  const text = source(mutant.file);
  if (text === undefined) return `${mutant.file} does not exist`;
  const count = occurrences(text, mutant.find);
  return count === 1 ? undefined : `find occurs ${count} times in ${mutant.file}, not once`;
}

function mutated(mutant: Mutant): string {
  const text = source(mutant.file)!;
  const at = text.indexOf(mutant.find);
  return text.slice(0, at) + mutant.replace + text.slice(at + mutant.find.length);
}

if (flags.list) {
  let stale = 0;
  for (const mutant of selected) {
    const why = staleness(mutant);
    if (why) stale++;
    const mark = why ? `STALE (${why})` : mutant.equivalent ? "equivalent" : "";
    console.log(`${mutant.id.padEnd(44)} ${mutant.area.padEnd(16)} ${mutant.what}${mark ? `  [${mark}]` : ""}`);
  }
  console.log(`\n${selected.length} mutants${stale ? `, ${stale} stale` : ""}`);
  printCounts(countBy(selected, (mutant) => mutant.area), "by area");
  Deno.exit(stale > 0 ? 1 : 0);
}

// --- Scratch copies ---

async function git(...args: string[]): Promise<string> {
  const { success, stdout, stderr } = await new Deno.Command("git", { args, cwd: ROOT }).output();
  if (!success) throw new Error(`git ${args.join(" ")}: ${new TextDecoder().decode(stderr)}`);
  return new TextDecoder().decode(stdout);
}

// Tracked files and untracked ones that are not ignored, as a clean clone plus work in progress.
async function repositoryFiles(): Promise<string[]> {
  const listed = await git("ls-files", "-z", "--cached", "--others", "--exclude-standard");
  return [...new Set(listed.split("\0"))].filter((path) => path !== "" && !path.split("/").includes("node_modules"));
}

async function makeScratch(files: string[]): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "mutate-" });
  for (const path of files) {
    const slash = path.lastIndexOf("/");
    if (slash > 0) await Deno.mkdir(`${dir}/${path.slice(0, slash)}`, { recursive: true });
    try {
      await Deno.copyFile(ROOT + path, `${dir}/${path}`);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error; // deleted, not yet committed
    }
  }
  return dir;
}

// --- One test run ---

// Runs the given test files, or the full suite with doc tests but without the files in
// `skip` (they passed already), stopping at the first failure. The full run of a mutant
// skips the type check (its first run did it; a check of the whole suite costs about
// 20 s). A failing test is run once more (--retry 1) before it counts: on a loaded
// machine a timing test can fail once with no mutant at all, and a mutant that makes a
// test fail only now and then is better called a survivor than a kill.
async function runTests(
  dir: string,
  what: { files: string[] } | { skip: string[]; check: boolean },
  timeoutSeconds: number,
): Promise<Run> {
  const args = ["-k", "10", `${timeoutSeconds}`, Deno.execPath(), "test", "-A"];
  if ("files" in what) args.push(...what.files);
  else {
    args.push("--doc", ...(what.check ? [] : ["--no-check"]));
    if (what.skip.length > 0) args.push(`--ignore=${what.skip.join(",")}`);
  }
  args.push("--fail-fast", "--retry", "1", "--preload", PRELOAD);
  const started = performance.now();
  const { code, stdout, stderr } = await new Deno.Command("timeout", {
    args,
    cwd: dir,
    env: { NO_COLOR: "1", TEST_TIMEOUT_MS: `${TEST_TIMEOUT_MS}` },
    stdin: "null",
  }).output();
  const seconds = (performance.now() - started) / 1000;
  const output = (new TextDecoder().decode(stdout) + "\n" + new TextDecoder().decode(stderr))
    .replaceAll(`file://${dir}/`, "./").replaceAll(`${dir}/`, "");
  const run = { failed: code !== 0, timedOut: false, flaky: flakyTests(output), seconds };
  if (code === 0) return run;
  if (code === 124 || code === 137) {
    return { ...run, timedOut: true, killer: `${hungTest(output) ?? "the run"} (run over ${timeoutSeconds} s)` };
  }
  // A mutant that does not compile is the table's fault, not a kill.
  if (!/^running \d+ tests? from/m.test(output)) {
    const why = /^(TS\d+ \[ERROR\]: .*)$/m.exec(output)?.[1] ?? /^error: (SyntaxError: .*)$/m.exec(output)?.[1];
    if (why) return { ...run, invalid: why };
  }
  const failure = firstFailure(output);
  return { ...run, timedOut: failure?.timedOut ?? false, killer: failure?.name ?? lastError(output) };
}

// The first entry of the FAILURES summary as "file: test" or "file: test ... step".
// Entries read "test => ./file.ts:1:2", "test ... step => ./file.ts:1:2", "./file.ts
// (uncaught error)", or for a doc example "./frame.ts#8-17.ts => ./frame.ts#8-17.ts:2:6".
function firstFailure(output: string): { name: string; timedOut: boolean } | undefined {
  const summary = output.split("\n FAILURES \n")[1];
  const line = summary?.split("\n").find((text) => text.trim() !== "")?.trim();
  if (!line) return undefined;
  const errors = output.split("\n ERRORS \n")[1]?.split("\n FAILURES \n")[0] ?? "";
  const block = errors.split(`\n${line}\n`)[1] ?? errors.split(`${line}\n`)[1] ?? "";
  const timedOut = /^error: Test timed out after/.test(block.trimStart());
  const arrow = line.lastIndexOf(" => ");
  if (arrow < 0) return { name: line.replace(/^\.\//, ""), timedOut };
  const where = line.slice(arrow + 4).replace(/:\d+:\d+$/, "").replace(/^\.\//, "");
  const name = line.slice(0, arrow);
  return { name: name.startsWith(`./${where}`) ? where : `${where}: ${name}`, timedOut };
}

// Tests that failed once and passed on the retry: "name ... retrying (attempt 1 failed)", then "name ... ok".
function flakyTests(output: string): string[] {
  const retried = [...output.matchAll(/^\s*(.+) \.\.\. retrying \(attempt \d+ failed\)/gm)].map((match) => match[1]);
  return [...new Set(retried)].filter((name) =>
    new RegExp(`^\\s*${escapeRegExp(name)} \\.\\.\\. ok`, "m").test(output)
  );
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

// A run killed from outside: the last test that started and did not finish.
function hungTest(output: string): string | undefined {
  const lines = output.split("\n");
  for (let i = lines.length - 1; i >= 0; i--) {
    const started = /^\s*(.+) \.\.\.$/.exec(lines[i]);
    if (started) return started[1];
  }
  return undefined;
}

function lastError(output: string): string {
  const errors = output.split("\n").filter((line) => line.startsWith("error:"));
  const error = errors.find((line) => line !== "error: Test failed") ?? errors.at(-1) ?? "exit status non-zero";
  return error.slice(0, 160);
}

// --- The audit ---

// The test files a mutant meets first: its own list, else the mutated file's test file
// (frame.ts: frame_test.ts) and then its area's.
function firstTests(mutant: Mutant): string[] {
  const own = mutant.file.replace(/\.ts$/, "_test.ts");
  const files = mutant.tests ?? [own, ...AREA_TESTS[mutant.area]];
  return [...new Set(files)].filter((file) => source(file) !== undefined);
}

async function audit(mutant: Mutant, dir: string, timeoutSeconds: number): Promise<Result> {
  const base = { id: mutant.id, area: mutant.area, file: mutant.file, what: mutant.what };
  const stale = staleness(mutant);
  if (stale) return { ...base, status: "stale", seconds: 0, note: stale };
  const path = `${dir}/${mutant.file}`;
  await Deno.writeTextFile(path, mutated(mutant));
  let seconds = 0;
  const flaky = new Set<string>();
  const result = (fields: Omit<Result, keyof typeof base | "seconds">): Result => ({
    ...base,
    ...fields,
    seconds: Math.round(seconds),
    ...(flaky.size > 0 ? { flaky: [...flaky] } : {}),
  });
  try {
    const areaTests = firstTests(mutant);
    type Step = ["area" | "full", { files: string[] } | { skip: string[]; check: boolean }];
    const suites: Step[] = areaTests.length > 0 ? [["area", { files: areaTests }]] : [];
    if (areaTests.length === 0 || !mutant.equivalent || flags["full-equivalents"]) {
      suites.push(["full", { skip: areaTests, check: areaTests.length === 0 }]);
    }
    for (const [suite, files] of suites) {
      const run = await runTests(dir, files, timeoutSeconds);
      seconds += run.seconds;
      for (const name of run.flaky) flaky.add(name);
      if (run.invalid) return result({ status: "invalid", killer: run.invalid, suite });
      if (run.failed) {
        const note = mutant.equivalent ? `declared equivalent (${mutant.equivalent}), but a test failed` : undefined;
        return result({ status: run.timedOut ? "killed-by-timeout" : "killed", killer: run.killer, suite, note });
      }
    }
    const suite = suites.at(-1)![0];
    return result({ status: mutant.equivalent ? "equivalent" : "survived", suite, note: mutant.equivalent });
  } finally {
    await Deno.writeTextFile(path, source(mutant.file)!);
  }
}

function countBy<T>(items: readonly T[], key: (item: T) => string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return counts;
}

function printCounts(counts: Map<string, number>, title: string): void {
  console.log(`${title}: ${[...counts].map(([name, count]) => `${name} ${count}`).join(", ")}`);
}

function formatSeconds(seconds: number): string {
  return seconds < 120 ? `${seconds.toFixed(0)} s` : `${(seconds / 60).toFixed(1)} min`;
}

// The run's time foreseen from the last reports (mutate.json, mutate-filter.json): a
// mutant seen before takes what it took then, another the median of those; with no
// report, a first run of 15 s and one mutant in ten on the full suite (about 120 s).
function estimate(mutants: readonly Mutant[]): string {
  const seen = new Map<string, number>();
  for (const name of ["mutate.json", "mutate-filter.json"]) {
    try {
      const report = JSON.parse(Deno.readTextFileSync(`${RESULTS_DIR}/${name}`));
      for (const result of report.results as Result[]) {
        if (result.status !== "stale" && result.status !== "invalid") seen.set(result.id, result.seconds);
      }
    } catch {
      // no such report yet
    }
  }
  const known = mutants.filter((mutant) => seen.has(mutant.id)).map((mutant) => seen.get(mutant.id)!);
  const sorted = [...known].sort((a, b) => a - b);
  const typical = sorted.length > 0 ? sorted[Math.floor(sorted.length / 2)] : 15 + 120 / 10;
  const seconds = (known.reduce((sum, value) => sum + value, 0) + (mutants.length - known.length) * typical) / jobs;
  return `about ${formatSeconds(seconds)} for ${mutants.length} mutants with --jobs ${jobs}, after the baseline ` +
    `(${known.length} timed by the last reports, the others at ${formatSeconds(typical)} each)`;
}

const started = performance.now();
console.log(`estimate: ${estimate(selected)}`);
const files = await repositoryFiles();
const scratch: string[] = [];
const removeScratch = () => {
  for (const dir of scratch) {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch {
      // already gone
    }
  }
};
Deno.addSignalListener("SIGINT", () => {
  removeScratch();
  Deno.exit(130);
});

let timeoutSeconds = timeoutFlag ?? 0;
let baselineSeconds: number | undefined;
try {
  scratch.push(await makeScratch(files));
  if (!flags["skip-baseline"]) {
    console.log("baseline: the unmutated full suite ...");
    const run = await runTests(scratch[0], { skip: [], check: true }, timeoutFlag ?? 1800);
    baselineSeconds = run.seconds;
    if (run.failed) {
      console.error(`error: the unmutated suite fails (${run.invalid ?? run.killer}); fix it before auditing`);
      removeScratch();
      Deno.exit(2);
    }
    timeoutSeconds = timeoutFlag ?? Math.max(120, Math.ceil(3 * run.seconds));
    console.log(`baseline: passed in ${formatSeconds(run.seconds)}; each run is bounded by ${timeoutSeconds} s`);
    if (run.flaky.length > 0) console.log(`baseline: flaky (passed on the retry): ${run.flaky.join("; ")}`);
  }
  while (scratch.length < Math.min(jobs, selected.length)) scratch.push(await makeScratch(files));

  const results: Result[] = new Array(selected.length);
  let next = 0;
  let done = 0;
  await Promise.all(scratch.map(async (dir) => {
    while (next < selected.length) {
      const index = next++;
      const result = await audit(selected[index], dir, timeoutSeconds);
      results[index] = result;
      done++;
      const detail = result.killer ?? result.note ?? "";
      console.log(
        `[${done}/${selected.length}] ${result.id}: ${result.status}${
          result.suite === "full" ? " (full suite)" : ""
        } ` +
          `${formatSeconds(result.seconds)}${detail ? ` - ${detail}` : ""}`,
      );
    }
  }));

  const seconds = (performance.now() - started) / 1000;
  const counts = countBy(results, (result) => result.status);
  const total = results.length;
  const excluded = (counts.get("equivalent") ?? 0) + (counts.get("stale") ?? 0) + (counts.get("invalid") ?? 0);
  const killed = (counts.get("killed") ?? 0) + (counts.get("killed-by-timeout") ?? 0);
  const score = total - excluded > 0 ? killed / (total - excluded) : 0;

  console.log("\nstatus             id                                           killing test / note");
  for (const result of results) {
    console.log(`${result.status.padEnd(18)} ${result.id.padEnd(44)} ${result.killer ?? result.note ?? ""}`);
  }
  console.log("\nsurvivors:");
  for (const result of results.filter((result) => result.status === "survived")) {
    console.log(`  ${result.id} (${result.area}): ${result.what}`);
  }
  const flaky = countBy(results.flatMap((result) => result.flaky ?? []), (name) => name);
  if (flaky.size > 0) {
    console.log("\ntests that failed once and passed on the retry (flaky under load):");
    for (const [name, count] of flaky) console.log(`  ${name} (${count} mutants)`);
  }
  console.log();
  printCounts(counts, `${total} mutants`);
  printCounts(countBy(results, (result) => result.area), "by area");
  console.log(
    `score: ${killed} killed / (${total} - ${excluded} equivalent, stale or invalid) = ${
      total > excluded ? `${(100 * score).toFixed(1)}%` : "n/a"
    }`,
  );
  console.log(`time: ${formatSeconds(seconds)} with --jobs ${jobs}`);

  const report = {
    date: new Date().toISOString(),
    commit: (await git("rev-parse", "HEAD")).trim(),
    dirty: (await git("status", "--porcelain")).trim() !== "",
    deno: Deno.version.deno,
    filter: terms,
    jobs,
    timeoutSeconds,
    baselineSeconds,
    seconds: Math.round(seconds),
    counts: Object.fromEntries(counts),
    score: total > excluded ? Math.round(score * 1000) / 1000 : null,
    results,
  };
  // A run of some mutants does not replace the report of a run of all of them.
  const resultsFile = `${RESULTS_DIR}/${terms.length > 0 ? "mutate-filter.json" : "mutate.json"}`;
  await Deno.mkdir(RESULTS_DIR, { recursive: true });
  await Deno.writeTextFile(resultsFile, JSON.stringify(report, null, 2) + "\n");
  console.log(`report: ${resultsFile.slice(ROOT.length)}`);
  const broken = results.filter((result) => result.status === "stale" || result.status === "invalid");
  if (broken.length > 0) {
    console.error(`\n${broken.length} mutants are stale or do not type-check; port or remove them in .ci/mutants.ts:`);
    for (const result of broken) console.error(`  ${result.id}: ${result.note ?? result.killer}`);
  }
  Deno.exitCode = broken.length > 0 ? 1 : 0;
} finally {
  removeScratch();
}
