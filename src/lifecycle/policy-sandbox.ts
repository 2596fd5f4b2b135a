// Where a policy candidate is tried before it may serve: a worker thread with a wall-clock and a heap
// budget, never the event loop that answers Checks. A module whose start function never returns, data
// that exhausts a heap, cases that take minutes: each ends in a refusal naming the budget, and the
// serving thread only ever waits for a message. `worker.terminate()` stops even a Wasm loop.
import { Worker } from 'node:worker_threads';
import type { LoadPolicyOptions, PolicyImage } from '../policy/policy.js';

export interface SandboxBudget {
  /** wall-clock time for everything: start the thread, unpack, compile, instantiate, run the cases */
  timeoutMs: number;
  /** the candidate thread's JS heap (V8 old generation); the policy's Wasm memory has its own cap */
  heapMb: number;
}

const DEFAULT_SANDBOX_BUDGET: SandboxBudget = { timeoutMs: 30_000, heapMb: 128 };

export interface SandboxJob {
  bytes: Uint8Array;
  source: string;
  load: LoadPolicyOptions;
  /** case files the candidate must pass (see runPolicyCases) */
  casesPath?: string;
}

export interface SandboxReport {
  revision: string;
  ms: number;
  /** cases run (0 without a cases path) */
  cases: number;
  /**
   * The candidate as the thread loaded it, before its cases ran: what the serving thread instantiates
   * without parsing anything (undefined when the engine could not give an image; load the bytes then).
   */
  image?: PolicyImage;
}

/** What the worker posts back: exactly one message. */
export type SandboxMessage =
  { ok: true; revision: string; cases: number; image?: PolicyImage } | { ok: false; error: string };

// Tests run the TypeScript sources, but a worker thread needs JavaScript: `npm run build` puts it in dist.
const here = import.meta.url;
const WORKER_URL = new URL(
  here.endsWith('.ts') ? '../../dist/lifecycle/policy-sandbox-worker.js' : './policy-sandbox-worker.js',
  here,
);

// Each candidate gets a thread of its own, used once: nothing a candidate did can reach the next one. No
// thread is started ahead and kept waiting: an idle one holds ~13 MB of RSS (serve, default policy: 105
// against 91.5 MB) for the next version, which comes rarely, and starting one when it comes costs 0.2 s of
// a reload on an idle machine, none of a Check.
function startWorker(heapMb: number): Worker {
  const worker = new Worker(WORKER_URL, {
    resourceLimits: { maxOldGenerationSizeMb: heapMb, stackSizeMb: 4 },
    stdout: true,
    stderr: true,
  });
  worker.on('error', () => {}); // its failure shows as an exit without an answer
  return worker;
}

/** Tries the candidate; resolves with its revision when it loaded and passed in budget, else rejects why. */
export function checkInSandbox(
  job: SandboxJob,
  budget: SandboxBudget = DEFAULT_SANDBOX_BUDGET,
): Promise<SandboxReport> {
  const started = performance.now();
  return new Promise<SandboxReport>((resolve, reject) => {
    let settled = false;
    const worker = startWorker(budget.heapMb);
    const finish = (outcome: { report: SandboxReport } | { error: string }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // A failed worker may still be running (timeout): it is never waited for. One that answered is,
      // before the serving thread makes a memory of its own for the image: its memory (as large) goes
      // first, which keeps the peak at one policy's memory fewer.
      const ended = worker.terminate();
      if ('report' in outcome)
        void ended.then(
          () => resolve(outcome.report),
          () => resolve(outcome.report),
        );
      else reject(new Error(`policy ${job.source}: ${outcome.error}`));
    };
    const timer = setTimeout(
      () =>
        finish({
          error: `candidate did not finish loading and its checks within the budget of ${budget.timeoutMs}ms (stopped)`,
        }),
      budget.timeoutMs,
    );
    worker.on('message', (m: SandboxMessage) => {
      if (m.ok)
        finish({
          report: {
            revision: m.revision,
            cases: m.cases,
            ms: performance.now() - started,
            ...(m.image ? { image: m.image } : {}),
          },
        });
      else finish({ error: m.error });
    });
    worker.on('error', (err: Error & { code?: string }) => {
      finish({
        error:
          err.code === 'ERR_WORKER_OUT_OF_MEMORY'
            ? `candidate exceeded the memory budget of ${budget.heapMb} MiB (JS heap) while loading (stopped)`
            : `candidate check failed: ${err.message}`,
      });
    });
    worker.on('exit', (code) => finish({ error: `candidate check ended without an answer (exit code ${code})` }));
    worker.postMessage(job);
  });
}
