// Fuzzing a live server with fast-check: seeded and bounded, so a failure reproduces.
import { assert, assertEquals } from "@std/assert";
import fc from "fast-check";
import { encodeFrame, Opcode } from "./frame.ts";
import { handshake, RawClient, recordingServer, type TestServer, within } from "./test_util.ts";

const validFrame = fc.oneof(
  fc.record({ opcode: fc.constantFrom(Opcode.Text, Opcode.Binary, Opcode.Continuation), fin: fc.boolean() }),
  fc.record({ opcode: fc.constantFrom(Opcode.Ping, Opcode.Pong), fin: fc.constant(true) }),
).chain(({ opcode, fin }) =>
  fc.uint8Array({ maxLength: opcode >= 8 ? 125 : 2000 }).map((payload) =>
    encodeFrame(opcode, payload, { fin, mask: true })
  )
);

// Valid frames, then bytes flipped, inserted, or cut; or bytes with no structure at all.
const hostileStream = fc.oneof(
  fc.uint8Array({ minLength: 1, maxLength: 3000 }),
  fc.tuple(
    fc.array(validFrame, { minLength: 1, maxLength: 8 }),
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
    fc.option(fc.nat()),
  ).map(([frames, flips, cut]) => {
    const stream = new Uint8Array(frames.reduce((sum, frame) => sum + frame.length, 0));
    frames.reduce((offset, frame) => (stream.set(frame, offset), offset + frame.length), 0);
    for (const [position, value] of flips) stream[position % stream.length] = value;
    return cut === null ? stream : stream.subarray(0, cut % stream.length + 1);
  }),
);

const chunkSizes = fc.array(fc.integer({ min: 1, max: 512 }), { minLength: 1, maxLength: 10 });

async function writeInChunks(client: RawClient, bytes: Uint8Array, sizes: number[]): Promise<void> {
  for (let offset = 0, i = 0; offset < bytes.length; i++) {
    const size = sizes[i % sizes.length];
    await client.write(bytes.subarray(offset, offset + size)).catch(() => {}); // the server may have closed
    offset += size;
  }
}

// After each run the server must still serve a fresh client: handshake and a round trip.
async function assertServing(server: TestServer): Promise<void> {
  const fresh = await RawClient.open(server.port);
  await fresh.send(Opcode.Ping, "still there?");
  const pong = await fresh.readFrame(2000);
  assertEquals([pong?.opcode, pong?.message()], [Opcode.Pong, new TextEncoder().encode("still there?")]);
  await fresh.sendClose(1000);
  await fresh.readUntilClose();
  fresh.close();
}

// Fails the test on any unhandled rejection or error while the body runs.
async function withoutUnhandledErrors(body: () => Promise<void>): Promise<void> {
  const unhandled: unknown[] = [];
  const onRejection = (event: PromiseRejectionEvent) => {
    event.preventDefault();
    unhandled.push(event.reason);
  };
  const onError = (event: ErrorEvent) => {
    event.preventDefault();
    unhandled.push(event.error);
  };
  globalThis.addEventListener("unhandledrejection", onRejection);
  globalThis.addEventListener("error", onError);
  try {
    await body();
  } finally {
    globalThis.removeEventListener("unhandledrejection", onRejection);
    globalThis.removeEventListener("error", onError);
  }
  assertEquals(unhandled, []);
}

Deno.test("fuzz: hostile frame streams get only pongs and a close, leak nothing, the server keeps serving", () =>
  withoutUnhandledErrors(async () => {
    const server = recordingServer({ maxPayload: 64 * 1024, closeTimeout: 300 });
    try {
      await fc.assert(
        fc.asyncProperty(hostileStream, chunkSizes, async (stream, sizes) => {
          const index = server.handlers.length;
          const client = await RawClient.open(server.port);
          const handler = await server.handler(index);
          await writeInChunks(client, stream, sizes);
          // What the server sent: pongs, and at most one close, last. A stream that ends
          // inside a frame may leave the server waiting for more, which is its right.
          const sent: number[] = [];
          try {
            for (let frame = await client.readFrame(100); frame; frame = await client.readFrame(100)) {
              sent.push(frame.opcode);
            }
          } catch (error) {
            // Nothing more within 100 ms is fine; bytes that are not frames are not.
            if (!(error instanceof Error && error.message.includes("did not finish"))) throw error;
          }
          const closes = sent.filter((opcode) => opcode === Opcode.Close).length;
          assert(sent.every((opcode) => opcode === Opcode.Pong || opcode === Opcode.Close), `sent ${sent}`);
          assert(closes === 0 || (closes === 1 && sent.at(-1) === Opcode.Close), `sent ${sent}`);
          // The hostile client leaves abruptly: the server must let go of the connection.
          client.close();
          await within(handler.disconnected.promise, 3000, "the connection to be released");
          await assertServing(server);
        }),
        { seed: 1007, numRuns: 60 },
      );
    } finally {
      await server.close();
    }
    assertEquals(server.users.size, 0);
  }));

Deno.test("fuzz: random complete request heads get a 101 or 4xx answer within the timeout, a 4xx then a clean close", () =>
  withoutUnhandledErrors(async () => {
    const server = recordingServer({ handshakeTimeout: 300, closeTimeout: 300 });
    const validHead = new TextEncoder().encode(handshake());
    const head = fc.oneof(
      fc.uint8Array({ minLength: 1, maxLength: 600 }).map((bytes) => {
        const withEnd = new Uint8Array(bytes.length + 4);
        withEnd.set(bytes);
        withEnd.set([13, 10, 13, 10], bytes.length);
        return withEnd;
      }),
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 5 }).map((flips) => {
        const bytes = validHead.slice();
        for (const [position, value] of flips) bytes[position % (bytes.length - 4)] = value;
        return bytes;
      }),
    );
    try {
      await fc.assert(
        fc.asyncProperty(head, chunkSizes, async (bytes, sizes) => {
          const client = await RawClient.connect(server.port);
          await writeInChunks(client, bytes, sizes);
          // Every head here ends with an empty line: an answer must come (readAnswer fails
          // at EOF without one, and after TIMEOUT instead of hanging).
          const answer = await client.readAnswer();
          assert(answer.status === 101 || (answer.status >= 400 && answer.status < 500), `status ${answer.status}`);
          // A refusal ends the connection, with nothing after the answer's body.
          if (answer.status !== 101) await client.expectEnd(2000);
          client.close();
          await assertServing(server);
        }),
        { seed: 400, numRuns: 80 },
      );
    } finally {
      await server.close();
    }
  }));
