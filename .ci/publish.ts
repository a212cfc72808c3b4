// Publishes the package to JSR from a copy of it whose deno.json has no `links`.
//
// deno.json `links` resolves jsr:@std/* to the offline stand-ins in .ci/std (see
// .ci/std/README.md). `deno publish` must not see them: links inside the package are
// part of its module graph, and publishing would either refuse (.ci/ is excluded) or
// ship the stand-ins. So the package's files (git's tracked and untracked, less the
// ignored) are copied to a temporary folder and published from there:
//
//   deno task publish [flags]  the release, on a machine that reaches JSR: no links,
//                              so @std/* resolve to the real packages, against whose
//                              types the publish type-checks. Flags go to `deno publish`.
//   deno task publish --offline --dry-run
//                              here: links to this repository's .ci/std by absolute
//                              path, outside the copy, so the dry run resolves offline
//                              and its file list is the real one.

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** What {@linkcode publish} reports. */
export interface PublishResult {
  /** The exit code of `deno publish`. */
  code: number;
  /** The package's files, relative to the package root, as `deno publish` lists them. */
  files: string[];
  /** What `deno publish` printed, stdout and stderr together. */
  output: string;
}

function git(args: string[]): string {
  const out = new Deno.Command("git", { args, cwd: ROOT, stderr: "inherit" }).outputSync();
  if (!out.success) throw new Error(`git ${args.join(" ")} failed in ${ROOT}`);
  return new TextDecoder().decode(out.stdout);
}

/**
 * The deno.json to publish with: the repository's, without `links`, or with them
 * pointing at the stand-ins by absolute path when `offline`.
 */
export function publishConfig(offline: boolean): Record<string, unknown> {
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}/deno.json`));
  const links: string[] = config.links ?? [];
  delete config.links;
  if (offline) config.links = links.map((link) => `${ROOT}/${link.replace(/^\.\//, "")}`);
  return config;
}

/**
 * Runs `deno publish` with `args` on a copy of the package.
 *
 * @param args Flags for `deno publish`, such as `--dry-run`.
 * @param offline Resolve jsr:@std/* through .ci/std (a dry run only).
 * @param echo Print what `deno publish` prints as it goes.
 */
export async function publish(args: string[], offline: boolean, echo = true): Promise<PublishResult> {
  const dir = await Deno.makeTempDir({ prefix: "twistedws-publish-" });
  try {
    const files = git(["ls-files", "-z", "--cached", "--others", "--exclude-standard"]).split("\0").filter((f) => f);
    for (const file of files) {
      const slash = file.lastIndexOf("/");
      if (slash > 0) await Deno.mkdir(`${dir}/${file.slice(0, slash)}`, { recursive: true });
      // A tracked file deleted in the work tree is not part of the package any more.
      await Deno.copyFile(`${ROOT}/${file}`, `${dir}/${file}`).catch((error) => {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      });
    }
    await Deno.writeTextFile(`${dir}/deno.json`, JSON.stringify(publishConfig(offline), null, 2) + "\n");
    const child = new Deno.Command(Deno.execPath(), {
      args: ["publish", ...args],
      cwd: dir,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let output = "";
    const decoder = new TextDecoder();
    const pump = async (stream: ReadableStream<Uint8Array>, sink: typeof Deno.stdout) => {
      for await (const chunk of stream) {
        output += decoder.decode(chunk, { stream: true });
        if (echo) await sink.write(chunk);
      }
    };
    const [status] = await Promise.all([
      child.status,
      pump(child.stdout, Deno.stdout),
      pump(child.stderr, Deno.stderr),
    ]);
    // "   file:///tmp/x/mod.ts (636B)" under "Simulating publish of ... with files:" (and
    // the same list on a real publish).
    const prefix = `file://${dir}/`;
    const listed = [...output.matchAll(/^\s+(file:\/\/\S+) \(/gm)].map((m) => m[1]).filter((f) => f.startsWith(prefix))
      .map((f) => f.slice(prefix.length));
    return { code: status.code, files: listed, output };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  const offline = Deno.args.includes("--offline");
  const args = Deno.args.filter((arg) => arg !== "--offline");
  if (offline && !args.includes("--dry-run")) {
    console.error("error: --offline only goes with --dry-run: a release resolves the real jsr:@std packages");
    Deno.exit(2);
  }
  // The copy is not a git work tree, so `deno publish` cannot see uncommitted changes.
  if (!args.includes("--allow-dirty") && git(["status", "--porcelain"]).trim() !== "") {
    console.error("error: the work tree has uncommitted changes (pass --allow-dirty to publish them anyway)");
    Deno.exit(1);
  }
  const { code } = await publish(args, offline);
  Deno.exit(code);
}
