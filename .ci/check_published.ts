// Checks what `deno publish` would publish (an offline dry run through .ci/publish.ts):
//
// 1. No published file is an offline stand-in (.ci/) and no published module or
//    deno.json mentions npm:deno-std.
// 2. Published modules import only published modules of the package, or jsr:@std/*
//    with a version constraint (through deno.json "imports"), or (redis.ts alone) its
//    pinned Redis client; the core (everything the
//    exports ".", "./frame", "./protocol" and "./errors" reach, and every _*.ts) imports
//    nothing outside the package at all, but for the Deno built-ins listed in CORE_BUILTINS.
// 3. Every ```ts (or js, tsx, ...) example in a published module's JSDoc either asserts
//    (calls an assert* function it imports from @std/assert) or is marked `ignore`
//    and says why on its first line (a // comment).
//
// Usage: deno task check:published (part of `deno task check`).

import { publish } from "./publish.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const CORE_EXPORTS = [".", "./frame", "./protocol", "./errors"];
// Files whose examples are being made to assert elsewhere: their unasserted examples are
// reported but do not fail. An entry with nothing left to report fails, so the list
// cannot go stale.
const PENDING: Record<string, string> = {};

const MODULE_FILE = /\.(?:[cm]?[jt]s|[jt]sx)$/;
const CODE_LANG = /^(?:[cm]?js|javascript|[cm]?ts|typescript|jsx|tsx)$/;
const STD_SPECIFIER = /^jsr:@std\/[a-z0-9-]+@[^/]+(?:\/.*)?$/;
// Entry points that exist to bring in one outside package, and what they may import
// besides jsr:@std/*: the Redis bus its pinned client (issue 10: imported only there).
const ALLOWED_EXTERNAL: Record<string, RegExp> = {
  "redis.ts": /^(?:npm:@redis\/client@\d+\.\d+\.\d+|node:buffer)$/,
};
// Core modules that need a runtime built-in, and which: permessage-deflate's zlib (issue 11);
// setImmediate, to the next turn of the event loop without setTimeout's clamp (the writers).
const CORE_BUILTINS: Record<string, RegExp> = {
  "_deflate.ts": /^node:zlib$/,
  "protocol.ts": /^node:timers$/,
};

const problems: string[] = [];
const pending: string[] = [];

interface InfoModule {
  specifier: string;
  dependencies?: { specifier: string; code?: { specifier?: string }; type?: { specifier?: string } }[];
}

/** The module graph `deno info` reports for one file. */
function info(file: string): InfoModule[] {
  const out = new Deno.Command(Deno.execPath(), { args: ["info", "--json", file], cwd: ROOT }).outputSync();
  if (!out.success) throw new Error(`deno info ${file} failed:\n${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(new TextDecoder().decode(out.stdout)).modules;
}

/** A bare specifier through deno.json "imports" (exact, "key/" prefix, or a jsr:/npm: package's subpath). */
function mapBare(specifier: string, imports: Record<string, string>): string | undefined {
  if (specifier in imports) return imports[specifier];
  let best = "";
  for (const key of Object.keys(imports)) {
    const prefix = key.endsWith("/") ? key : /^(?:jsr|npm):/.test(imports[key]) ? `${key}/` : undefined;
    if (prefix && specifier.startsWith(prefix) && prefix.length > best.length) best = prefix;
  }
  if (best === "") return undefined;
  const target = imports[best] ?? imports[best.slice(0, -1)];
  return target.replace(/\/?$/, "/") + specifier.slice(best.length);
}

/** Files of the package, relative to the root, for `file:` URLs inside it. */
function relative(url: string): string | undefined {
  const prefix = `file://${ROOT}/`;
  return url.startsWith(prefix) ? decodeURIComponent(url.slice(prefix.length)) : undefined;
}

/** Checks every published module's imports; returns the core and each module's imports from outside. */
function checkGraph(published: Set<string>, modules: string[], exports: Record<string, string>) {
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}/deno.json`));
  const imports: Record<string, string> = config.imports ?? {};
  const core = new Set(modules.filter((file) => file.split("/").at(-1)!.startsWith("_")));
  for (const name of CORE_EXPORTS.filter((name) => name in exports)) {
    for (const m of info(exports[name])) {
      const file = relative(m.specifier);
      if (file !== undefined && published.has(file)) core.add(file);
    }
  }
  const external = new Map<string, string[]>();
  for (const file of modules) {
    external.set(file, []);
    const self = info(file).find((m) => relative(m.specifier) === file);
    for (const dep of self?.dependencies ?? []) {
      const raw = dep.specifier;
      let target: string | undefined = raw;
      if (!/^(?:\.{0,2}\/|[a-z][a-z0-9+.-]*:)/i.test(raw)) {
        target = mapBare(raw, imports);
        if (target === undefined) {
          problems.push(`${file}: imports "${raw}", which deno.json "imports" does not map`);
          continue;
        }
      }
      if (/^\.{0,2}\//.test(target) || target.startsWith("file:")) {
        const base = /^\.{0,2}\//.test(raw) ? `file://${ROOT}/${file}` : `file://${ROOT}/deno.json`;
        const local = relative(new URL(target, base).href);
        if (local === undefined || !published.has(local)) {
          problems.push(`${file}: imports "${raw}" (${local ?? target}), which is not a published file of the package`);
        }
        continue;
      }
      external.get(file)!.push(raw === target ? raw : `${raw} (${target})`);
      if (core.has(file)) {
        if (CORE_BUILTINS[file]?.test(target)) continue;
        problems.push(
          `${file}: a core module imports "${raw}" (${target}); the core imports nothing outside the package`,
        );
      } else if (!STD_SPECIFIER.test(target) && !ALLOWED_EXTERNAL[file]?.test(target)) {
        problems.push(`${file}: imports "${raw}" (${target}); outside the package only jsr:@std/* is allowed`);
      }
    }
  }
  return { core, external };
}

interface Example {
  line: number;
  attributes: string[];
  code: string;
}

/** The code examples in a module's JSDoc comments, with the line of their opening fence. */
export function examples(source: string): Example[] {
  const found: Example[] = [];
  for (const comment of source.matchAll(/\/\*\*[\s\S]*?\*\//g)) {
    const firstLine = source.slice(0, comment.index).split("\n").length;
    const lines = comment[0].split("\n").map((l) => l.replace(/^\s*\*? ?/, ""));
    for (let i = 0; i < lines.length; i++) {
      const open = /^(`{3,})\s*(\S*)(.*)$/.exec(lines[i]);
      if (!open) continue;
      const end = lines.findIndex((l, j) => j > i && l.trim().startsWith(open[1]));
      const close = end === -1 ? lines.length : end;
      if (CODE_LANG.test(open[2])) {
        found.push({
          line: firstLine + i,
          attributes: open[3].trim().split(/\s+/).filter((a) => a),
          code: lines.slice(i + 1, close).join("\n"),
        });
      }
      i = close;
    }
  }
  return found;
}

/** Why an example fails the rules, or undefined. */
export function exampleProblem(example: Example): string | undefined {
  const code = example.code.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/.*$/gm, "");
  if (example.attributes.includes("ignore")) {
    const first = example.code.split("\n").find((l) => l.trim() !== "");
    return first?.trim().startsWith("//") ? undefined : "is `ignore`d without a first-line // comment saying why";
  }
  const names = [...code.matchAll(/import\s*\{([^}]*)\}\s*from\s*["'](?:@std\/assert|jsr:@std\/assert[^"']*)["']/g)]
    .flatMap((m) => m[1].split(",")).map((n) => n.trim().split(/\s+as\s+/).at(-1)!).filter((n) => /^assert/.test(n));
  if (names.length === 0) return "imports no assert* function from @std/assert";
  if (!names.some((name) => new RegExp(`\\b${name}\\s*\\(`).test(code.replace(/import[^;]*;/g, "")))) {
    return `calls none of the assertions it imports (${names.join(", ")})`;
  }
}

function checkExamples(modules: string[]) {
  const seen = new Set<string>();
  for (const file of modules) {
    for (const example of examples(Deno.readTextFileSync(`${ROOT}/${file}`))) {
      const problem = exampleProblem(example);
      if (problem === undefined) continue;
      const message = `${file}:${example.line}: example ${problem}`;
      if (file in PENDING) {
        pending.push(message);
        seen.add(file);
      } else {
        problems.push(message);
      }
    }
  }
  for (const file of Object.keys(PENDING)) {
    if (!seen.has(file)) {
      problems.push(`${file}: no unasserted example left: remove it from PENDING in .ci/check_published.ts`);
    }
  }
}

if (import.meta.main) {
  const result = await publish(["--dry-run", "--allow-dirty"], true);
  if (result.code !== 0 || result.files.length === 0) {
    console.error("error: the publish dry run failed or listed no files");
    Deno.exit(1);
  }
  const published = new Set(result.files);
  const modules = result.files.filter((file) => MODULE_FILE.test(file));
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}/deno.json`));
  const exports: Record<string, string> = typeof config.exports === "string" ? { ".": config.exports } : config.exports;

  for (const file of result.files) {
    if (file.startsWith(".ci/")) problems.push(`${file}: CI files (the offline stand-ins among them) are published`);
    if (
      (MODULE_FILE.test(file) || file === "deno.json") && Deno.readTextFileSync(`${ROOT}/${file}`).includes("deno-std")
    ) {
      problems.push(`${file}: mentions npm:deno-std, the offline stand-ins' npm mirror`);
    }
  }
  const { core, external } = checkGraph(published, modules, exports);
  checkExamples(modules);

  console.log(`\nPublished files: ${result.files.join(", ")}`);
  console.log("Their imports from outside the package:");
  for (const [file, imports] of external) {
    console.log(`  ${file}${core.has(file) ? " (core)" : ""}: ${imports.length ? imports.join(", ") : "none"}`);
  }
  for (const [file, why] of Object.entries(PENDING)) console.log(`\nPending, not failing: ${file} is ${why}:`);
  for (const message of pending) console.log(`  ${message}`);
  if (problems.length > 0) {
    console.error(`\n${problems.length} problem(s):\n${problems.map((p) => `  ${p}`).join("\n")}`);
    Deno.exit(1);
  }
  console.log("ok: published files, imports and examples");
}
