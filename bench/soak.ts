// Soak test of server.ts under hostile and churning clients, on loopback:
//
//   deno task soak [--seconds 60]
//
// Runs churn (connect, message, close), slow readers, abrupt resets and 2^62-byte frame
// headers at once, while a probe does a fresh round trip every second and the server's
// RSS and open file descriptors are sampled. Fails (exit 1) if a round trip ever takes
// over 1 s, or if RSS or descriptors keep growing.
import { parseArgs } from "@std/cli/parse-args";
import { encodeClosePayload, encodeFrame, Opcode } from "../frame.ts";
import { Client } from "./client.ts";

const flags = parseArgs(Deno.args, {
  string: ["seconds"],
  default: { seconds: "60" },
});
const SECONDS = Number(flags.seconds);
if (!(SECONDS >= 5 && SECONDS <= 3600)) {
  throw new Error("--seconds must be from 5 to 3600");
}
const ROOT = new URL("../", import.meta.url).pathname;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const port = listener.addr.port;
listener.close();
const server = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "-N",
    "--config",
    `${ROOT}deno.json`,
    `${ROOT}server.ts`,
    String(port),
    "--hostname",
    "127.0.0.1",
  ],
  stdout: "null",
  stderr: "inherit",
  env: { NO_COLOR: "1" },
}).spawn();
const rssMiB = () =>
  Number(
    /VmRSS:\s+(\d+)/.exec(
      Deno.readTextFileSync(`/proc/${server.pid}/status`),
    )![1],
  ) / 1024;
const fdCount = () => [...Deno.readDirSync(`/proc/${server.pid}/fd`)].length;

const deadline = Date.now() + SECONDS * 1000;
const running = () => Date.now() < deadline;
const counts = {
  churn: 0,
  resets: 0,
  hugeHeaders: 0,
  slowReaders: 0,
  broadcasts: 0,
  errors: 0,
};
const probeMs: number[] = [];
const samples: { rss: number; fds: number }[] = [];

// Runs `body` in a loop until the deadline; a failed iteration is counted, not fatal.
async function loop(body: () => Promise<void>): Promise<void> {
  while (running()) {
    try {
      await body();
    } catch {
      counts.errors++;
      await sleep(10);
    }
  }
}

async function readUntil(
  client: Client,
  wanted: (opcode: number, text: string) => boolean,
  ms: number,
) {
  const until = Date.now() + ms;
  let found = false;
  while (!found && Date.now() < until) {
    const timer = sleep(until - Date.now()).then(() => false);
    const open = await Promise.race([
      client.read((frame) => {
        const text = frame.opcode === Opcode.Text ? new TextDecoder().decode(frame.payload) : "";
        if (wanted(frame.opcode, text)) found = true;
      }),
      timer,
    ]);
    if (!open) break;
  }
  return found;
}

const churn = () =>
  loop(async () => {
    const client = await Client.open(port);
    await client.write(encodeFrame(Opcode.Text, "churn", { mask: true }));
    await client.write(
      encodeFrame(Opcode.Close, encodeClosePayload(1000), { mask: true }),
    );
    await readUntil(client, (opcode) => opcode === Opcode.Close, 2000);
    client.close();
    counts.churn++;
  });

const resets = () =>
  loop(async () => {
    const client = await Client.open(port);
    // Half a frame, then the socket is dropped.
    await client.write(
      encodeFrame(Opcode.Binary, new Uint8Array(1000), { mask: true }).subarray(
        0,
        500,
      ),
    );
    client.close();
    counts.resets++;
  });

const hugeHeaders = () =>
  loop(async () => {
    const client = await Client.open(port);
    await client.write(
      new Uint8Array([0x82, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]),
    );
    if (
      !(await readUntil(client, (opcode) => opcode === Opcode.Close, 2000))
    ) throw new Error("no 1009");
    client.close();
    counts.hugeHeaders++;
  });

// Clients that never read while another broadcasts; each leaves after 5 s.
const slowReaders = () =>
  loop(async () => {
    const client = await Client.open(port);
    counts.slowReaders++;
    await sleep(Math.min(5000, Math.max(0, deadline - Date.now())));
    client.close();
  });

const broadcaster = async () => {
  const client = await Client.open(port);
  const message = encodeFrame(Opcode.Binary, new Uint8Array(1024), {
    mask: true,
  });
  let reading = true;
  const drain = (async () => {
    while (reading && (await client.read(() => {})));
  })();
  await loop(async () => {
    await client.write(message);
    counts.broadcasts++;
    await sleep(10);
  });
  reading = false;
  client.close();
  await drain;
};

const probe = async () => {
  while (running()) {
    const started = performance.now();
    try {
      const client = await Client.open(port);
      const token = `probe ${crypto.randomUUID()}`;
      await client.write(encodeFrame(Opcode.Text, token, { mask: true }));
      const found = await readUntil(client, (_, text) => text === token, 5000);
      client.close();
      probeMs.push(found ? performance.now() - started : Infinity);
    } catch {
      probeMs.push(Infinity);
    }
    samples.push({ rss: rssMiB(), fds: fdCount() });
    await sleep(Math.max(0, 1000 - (performance.now() - started)));
  }
};

let failures: string[] = [];
try {
  // Wait for the server to listen.
  for (let tries = 0;; tries++) {
    try {
      (await Client.open(port)).close();
      break;
    } catch (error) {
      if (tries > 200) throw error;
      await sleep(50);
    }
  }
  await Promise.all([
    probe(),
    broadcaster(),
    ...Array.from({ length: 4 }, churn),
    ...Array.from({ length: 2 }, resets),
    hugeHeaders(),
    ...Array.from({ length: 10 }, slowReaders),
  ]);
  await sleep(1000);
  samples.push({ rss: rssMiB(), fds: fdCount() });

  const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const third = Math.floor(samples.length / 3);
  const middle = samples.slice(third, 2 * third);
  const last = samples.slice(2 * third);
  const [rssMiddle, rssLast] = [
    median(middle.map((s) => s.rss)),
    median(last.map((s) => s.rss)),
  ];
  const [fdsMiddle, fdsLast] = [
    median(middle.map((s) => s.fds)),
    median(last.map((s) => s.fds)),
  ];
  const sortedProbe = [...probeMs].sort((a, b) => a - b);
  const worst = sortedProbe.at(-1)!;

  console.log(`soak: ${SECONDS} s against server.ts on 127.0.0.1:${port}`);
  console.table({
    "churn cycles": counts.churn,
    "abrupt resets": counts.resets,
    "2^62 headers refused": counts.hugeHeaders,
    "slow readers": counts.slowReaders,
    "broadcasts sent": counts.broadcasts,
    "failed iterations": counts.errors,
    "probe round trips": probeMs.length,
    "probe p50 ms": median(probeMs).toFixed(1),
    "probe max ms": worst.toFixed(1),
    "RSS MiB start/peak/end": `${samples[0].rss.toFixed(1)} / ${Math.max(...samples.map((s) => s.rss)).toFixed(1)} / ${
      samples.at(-1)!.rss.toFixed(1)
    }`,
    "RSS MiB middle/last third (median)": `${rssMiddle.toFixed(1)} / ${rssLast.toFixed(1)}`,
    "fds start/peak/end": `${samples[0].fds} / ${Math.max(...samples.map((s) => s.fds))} / ${samples.at(-1)!.fds}`,
    "fds middle/last third (median)": `${fdsMiddle} / ${fdsLast}`,
  });
  failures = [
    ...(worst > 1000 ? [`a fresh client's round trip took ${worst.toFixed(0)} ms (limit 1000)`] : []),
    ...(rssLast > rssMiddle * 1.2 && rssLast - rssMiddle > 20
      ? [`RSS kept growing: ${rssMiddle} -> ${rssLast} MiB`]
      : []),
    ...(fdsLast - fdsMiddle > 50 ? [`descriptors kept growing: ${fdsMiddle} -> ${fdsLast}`] : []),
  ];
} finally {
  server.kill("SIGTERM");
  const timer = setTimeout(() => server.kill("SIGKILL"), 10_000);
  await server.status;
  clearTimeout(timer);
}
if (failures.length > 0) {
  console.error(`soak FAILED:\n- ${failures.join("\n- ")}`);
  Deno.exit(1);
}
console.log("soak passed");
