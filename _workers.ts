// Workers for `server.ts --workers N`: N copies of one module, each in a Worker of this
// process, restarted when one crashes. A worker speaks a small protocol with the pool:
//   pool -> worker  { type: "start", ...init(index), peers }, later { type: "shutdown" }
//   worker -> pool  { type: "ready" } or { type: "fatal", message }, later { type: "stopped" }
// With `mesh`, every two workers share a MessageChannel: `peers` maps the index of each
// other worker to this worker's port to it, and a worker (re)started later sends its
// port to each of the others as { type: "peer", index, port }.

/** Options of a {@linkcode WorkerPool}. */
export interface WorkerPoolOptions {
  /** The workers' module. */
  module: URL;
  /** How many workers. */
  count: number;
  /** What the start message of worker `index` carries besides its type. */
  init: (index: number) => Record<string, unknown>;
  /** Where the pool logs crashes and restarts. */
  log: (line: string) => void;
  /** Give every two workers a MessageChannel between them (see the top of this file). */
  mesh?: boolean;
  /** Called with the other messages a worker posts. */
  onMessage?: (index: number, message: unknown) => void;
  /** Milliseconds before restarting a crashed worker (default 100; doubled while restarts keep failing, up to 5 s). */
  restartDelay?: number;
}

const MAX_RESTART_DELAY = 5000;

export class WorkerPool {
  /** How many times a worker was restarted. */
  restarts = 0;
  readonly #options: WorkerPoolOptions;
  readonly #workers: (Worker | undefined)[];
  readonly #delays: number[];
  #stopping = false;

  constructor(options: WorkerPoolOptions) {
    this.#options = options;
    this.#workers = new Array(options.count).fill(undefined);
    this.#delays = new Array(options.count).fill(options.restartDelay ?? 100);
  }

  /** Starts every worker; rejects with the first one's fatal error (and stops them all). */
  async start(): Promise<void> {
    try {
      await Promise.all(this.#workers.map((_, index) => this.#spawn(index)));
    } catch (error) {
      await this.shutdown(1000);
      throw error;
    }
  }

  /** Posts a message to worker `index` (for tests). */
  post(index: number, message: unknown): void {
    this.#workers[index]?.postMessage(message);
  }

  /** Asks every worker to stop, waits up to `timeout` ms for them, then terminates them all. */
  async shutdown(timeout = 10_000): Promise<void> {
    this.#stopping = true;
    const stopped = this.#workers.map((worker) => {
      if (worker === undefined) return Promise.resolve();
      const done = Promise.withResolvers<void>();
      worker.onmessage = (event) => event.data?.type === "stopped" && done.resolve();
      worker.onerror = (event) => {
        event.preventDefault();
        done.resolve();
      };
      worker.postMessage({ type: "shutdown" });
      return done.promise;
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([Promise.all(stopped), new Promise((resolve) => timer = setTimeout(resolve, timeout))]);
    clearTimeout(timer);
    for (const worker of this.#workers) worker?.terminate();
    this.#workers.fill(undefined);
  }

  // Starts worker `index`; resolves once it is ready, rejects if it cannot start.
  #spawn(index: number): Promise<void> {
    const ready = Promise.withResolvers<void>();
    const worker = new Worker(this.#options.module, { type: "module", name: `worker ${index}` });
    this.#workers[index] = worker;
    worker.onmessage = (event) => {
      if (event.data?.type === "ready") ready.resolve();
      else if (event.data?.type === "fatal") ready.reject(new Error(String(event.data.message)));
      else this.#options.onMessage?.(index, event.data);
    };
    // An uncaught error ends the worker: replace it, and keep the others serving.
    worker.onerror = (event) => {
      event.preventDefault();
      ready.reject(new Error(event.message));
      this.#crashed(index, worker, event.message);
    };
    const peers: Record<string, MessagePort> = {};
    if (this.#options.mesh) {
      this.#workers.forEach((other, otherIndex) => {
        if (other === undefined || other === worker) return;
        const { port1, port2 } = new MessageChannel();
        peers[otherIndex] = port1;
        other.postMessage({ type: "peer", index: String(index), port: port2 }, [port2]);
      });
    }
    worker.postMessage({ type: "start", ...this.#options.init(index), peers }, Object.values(peers));
    return ready.promise;
  }

  #crashed(index: number, worker: Worker, reason: string): void {
    worker.terminate();
    if (this.#stopping || this.#workers[index] !== worker) return;
    this.#workers[index] = undefined;
    const delay = this.#delays[index];
    this.#options.log(`[WORKER] ${index} crashed (${reason}); restarting in ${delay} ms`);
    setTimeout(() => this.#restart(index), delay);
  }

  async #restart(index: number): Promise<void> {
    if (this.#stopping) return;
    try {
      await this.#spawn(index);
      this.restarts++;
      this.#delays[index] = this.#options.restartDelay ?? 100;
      this.#options.log(`[WORKER] ${index} restarted`);
    } catch (error) {
      // A fatal start (Redis still down, say): try again later, waiting longer each time.
      // (A crash while starting was logged and rescheduled by onerror.)
      const worker = this.#workers[index];
      if (worker === undefined || this.#stopping) return;
      this.#delays[index] = Math.min(2 * this.#delays[index], MAX_RESTART_DELAY);
      this.#crashed(index, worker, error instanceof Error ? error.message : String(error));
    }
  }
}
