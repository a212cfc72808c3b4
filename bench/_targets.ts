// Issue 13's targets as data, for bench/load.ts (one run's medians) and bench/combine.ts (the
// median of several runs' medians), so that both count a miss the same way.

/** The scenario kinds of bench:load. */
export type Kind = "echo" | "fanout" | "connect";

/** A figure of ours ÷ a reference server, as bench:load's "ratio" lines hold it. */
export type Figure = "perCpuSecond" | "rate" | "p99";

export interface Target {
  label: string;
  kinds: readonly Kind[];
  reference: "deno" | "uws";
  figure: Figure;
  /** The ratio must be at least this (per CPU-second, messages a second)... */
  atLeast?: number;
  /** ...or at most this (p99: under 1 favours ours). */
  atMost?: number;
}

export const TARGETS: readonly Target[] = [
  {
    label: "1.0× Deno per CPU-s",
    kinds: ["echo", "fanout", "connect"],
    reference: "deno",
    figure: "perCpuSecond",
    atLeast: 1,
  },
  { label: "1.0× Deno msgs/s", kinds: ["echo"], reference: "deno", figure: "rate", atLeast: 1 },
  { label: "p99 1.2× Deno's", kinds: ["echo"], reference: "deno", figure: "p99", atMost: 1.2 },
  { label: "0.8× uWS per CPU-s", kinds: ["fanout"], reference: "uws", figure: "perCpuSecond", atLeast: 0.8 },
];

/** The targets a scenario of this kind misses; `ratio` gives a median ratio, or undefined if not measured. */
export function misses(kind: Kind, ratio: (target: Target) => number | undefined): Target[] {
  return TARGETS.filter((target) => {
    if (!target.kinds.includes(kind)) return false;
    const value = ratio(target);
    if (value === undefined || !Number.isFinite(value)) return false;
    return (target.atLeast !== undefined && value < target.atLeast) ||
      (target.atMost !== undefined && value > target.atMost);
  });
}

/**
 * The fan-out target besides uWS's: going from 1,000 to 5,000 receivers, ours keeps at least
 * the share of its deliveries per CPU-second that Deno's own server keeps.
 */
export function dropMissed(oursKept: number, denoKept: number): boolean {
  return oursKept < denoKept;
}

export function median(values: number[]): number {
  const sorted = values.toSorted((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** "fanout 1 → 5000 receivers × 8 in flight" → "fanout". */
export function kindOf(scenario: string): Kind {
  const kind = scenario.split(" ")[0];
  if (kind === "echo" || kind === "fanout" || kind === "connect") return kind;
  throw new Error(`Unknown scenario kind in "${scenario}"`);
}
