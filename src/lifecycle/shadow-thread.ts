// The shadow policy evaluated on its own thread: the event loop that answers Checks only posts the
// input (a few hundred bytes) and, later, compares the answer that comes back. A shadow costing 255 ms
// an evaluation made every Check miss Envoy's 200 ms deadline when it ran on the serving thread; here
// it only fills the bounded queue, and what does not fit is skipped and counted (shadow-policy.ts).
import { Worker } from 'node:worker_threads';
import type { Decision } from '../decision/decision.js';
import type { PolicyInput } from '../decision/input.js';
import type { LoadPolicyOptions } from '../policy/policy.js';
import type { PolicyStore } from './policy-store.js';
import type { ValidatedBundle } from './validated-bundle.js';

/** Messages to the shadow thread. */
export type ShadowRequest =
  | { type: 'policy'; bundle: ValidatedBundle; load: LoadPolicyOptions }
  | { type: 'eval'; id: number; input: PolicyInput };
/** Messages from it. */
export type ShadowReply =
  { type: 'decision'; id: number; decision: Decision } | { type: 'policy'; revision: string; error?: string };

export interface ShadowThreadOptions {
  load: LoadPolicyOptions;
  /** the thread's JS heap bound */
  heapMb: number;
  /** an evaluation unanswered this long means the thread is stuck: it is replaced */
  stuckMs?: number;
  /** the thread could not take a policy, or was replaced */
  onProblem?: (message: string) => void;
}

// Tests run the TypeScript sources; a worker thread needs the JavaScript that `npm run build` writes.
const here = import.meta.url;
const WORKER_URL = new URL(
  here.endsWith('.ts') ? '../../dist/lifecycle/shadow-thread-worker.js' : './shadow-thread-worker.js',
  here,
);

type Waiting = { resolve: (d: Decision | undefined) => void; postedAt: number };

export class ShadowThread {
  private worker: Worker | undefined;
  private bundle: ValidatedBundle | undefined;
  private nextId = 1;
  private readonly waiting = new Map<number, Waiting>();
  private readonly watchdog: NodeJS.Timeout;
  private closed = false;

  constructor(private readonly opts: ShadowThreadOptions) {
    const stuckMs = opts.stuckMs ?? 10_000;
    this.watchdog = setInterval(
      () => {
        const oldest = this.waiting.values().next().value;
        if (oldest && performance.now() - oldest.postedAt > stuckMs) {
          this.opts.onProblem?.(`shadow evaluation unanswered for ${stuckMs}ms; shadow thread replaced`);
          this.restart();
        }
      },
      Math.max(50, Math.min(1000, stuckMs / 4)),
    );
    this.watchdog.unref();
  }

  /** A thread that evaluates whatever `store` accepts, from now on. */
  static following(store: PolicyStore, opts: ShadowThreadOptions): ShadowThread {
    const thread = new ShadowThread(opts);
    if (store.accepted) thread.setPolicy(store.accepted);
    store.onAccepted((b) => thread.setPolicy(b));
    return thread;
  }

  /** Evaluations waiting for an answer. */
  get pending(): number {
    return this.waiting.size;
  }

  /** The policy the thread evaluates from now on (instantiated there from the validated bytes). */
  setPolicy(bundle: ValidatedBundle): void {
    this.bundle = bundle;
    this.ensureWorker().postMessage({ type: 'policy', bundle, load: this.opts.load } satisfies ShadowRequest);
  }

  /** The shadow decision for `input`, or undefined when the thread could not give one. */
  evaluate(input: PolicyInput): Promise<Decision | undefined> {
    if (this.closed || !this.bundle) return Promise.resolve(undefined);
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, { resolve, postedAt: performance.now() });
      this.ensureWorker().postMessage({ type: 'eval', id, input } satisfies ShadowRequest);
    });
  }

  close(): void {
    this.closed = true;
    clearInterval(this.watchdog);
    this.drop();
    void this.worker?.terminate();
    this.worker = undefined;
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(WORKER_URL, {
      resourceLimits: { maxOldGenerationSizeMb: this.opts.heapMb, stackSizeMb: 4 },
      stdout: true,
      stderr: true,
    });
    worker.unref();
    worker.on('message', (m: ShadowReply) => {
      if (m.type === 'policy') {
        if (m.error !== undefined) this.opts.onProblem?.(`shadow thread refused the policy: ${m.error}`);
        return;
      }
      const w = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      w?.resolve(m.decision);
    });
    const lost = (why: string) => {
      if (this.worker !== worker) return;
      this.opts.onProblem?.(`shadow thread ended (${why}); replaced`);
      this.restart();
    };
    worker.on('error', (err) => lost(err.message));
    worker.on('exit', (code) => lost(`exit code ${code}`));
    this.worker = worker;
    return worker;
  }

  private restart(): void {
    const old = this.worker;
    this.worker = undefined;
    void old?.terminate();
    this.drop();
    if (!this.closed && this.bundle) this.setPolicy(this.bundle);
  }

  /** Every waiting evaluation ends without an answer (counted as skipped by the caller). */
  private drop(): void {
    for (const w of this.waiting.values()) w.resolve(undefined);
    this.waiting.clear();
  }
}
