// The live policy and how it is replaced. A new version from the bundle source is loaded (Wasm compiles
// and instantiates, the entrypoint exists), checked (its case files pass, and for a folder its Rego unit
// tests too: exactly what `egress-authz test` runs), and only then swapped in with one assignment.
// A Check reads `current` once, synchronously, so it finishes on the policy it started with. A version
// that fails any step is refused: the last good policy keeps serving, the refusal is logged and counted.
import type { Logger } from 'pino';
import { caseDecision, decideCase } from '../decision/authorizer.js';
import type { BundleSource } from './bundle-source.js';
import type { PolicySource } from '../decision/decision.js';
import type { PolicyRole, ServiceMetrics } from '../service/metrics.js';
import { runOpaTest } from '../policy/opa-cli.js';
import { runPolicyCases, type CaseDecide } from './policy-cases.js';
import { footprintFields } from '../policy/input-footprint.js';
import type { LoadedPolicy, LoadPolicyOptions } from '../policy/policy.js';

/** The pipeline `egress-authz test` runs each case through (decideCase: the same as a Check). */
const decidePolicyCase: CaseDecide = (request, policy) => Promise.resolve(caseDecision(decideCase(request, policy)));

export interface PolicyCheckOptions {
  /** case files to run against the candidate (a file or folder, see runPolicyCases) */
  casesPath?: string;
  /** a policy folder whose Rego unit tests (`opa test`) must pass */
  regoTestsDir?: string;
}

/** Rejects with what failed when the candidate's cases or Rego tests do not pass. */
export async function checkPolicy(policy: LoadedPolicy, opts: PolicyCheckOptions): Promise<void> {
  if (opts.casesPath !== undefined) {
    const report = await runPolicyCases(opts.casesPath, policy, decidePolicyCase);
    if (!report.ok) {
      const failures = report.text.split('\n').filter((l) => l.trimStart().startsWith('✗'));
      throw new Error(
        `policy cases failed (${report.failed} of ${report.outcomes.length}): ${failures
          .slice(0, 3)
          .map((l) => l.trim())
          .join('; ')}`,
      );
    }
  }
  if (opts.regoTestsDir !== undefined) {
    const opa = await runOpaTest(opts.regoTestsDir);
    if (!opa.ok)
      throw new Error(
        `Rego unit tests failed: ${opa.text
          .split('\n')
          .filter((l) => !l.startsWith('✓'))
          .slice(0, 4)
          .join('; ')}`,
      );
  }
}

export type ReloadResult = 'success' | 'failure' | 'unchanged';

export interface ReloadOutcome {
  result: ReloadResult;
  trigger: string;
  /** the serving revision after this reload */
  revision: string;
  /** why the candidate was refused */
  error?: string;
  /** fetch + load + check time */
  ms: number;
  at: Date;
}

export interface PolicyStoreOptions {
  role?: PolicyRole;
  log: Logger;
  metrics?: ServiceMetrics;
  load?: LoadPolicyOptions;
  /** cases every candidate must pass; default: the policy folder's own `cases/` */
  casesPath?: string;
}

export class PolicyStore implements PolicySource {
  /** the serving policy; replaced only by a checked candidate */
  current: LoadedPolicy | undefined;
  /** the last reload that did something (success or failure) */
  lastReload: ReloadOutcome | undefined;
  private readonly role: PolicyRole;
  private queue: Promise<unknown> = Promise.resolve();
  private next: { promise: Promise<ReloadOutcome>; force: boolean } | undefined;
  private stopWatching: (() => void) | undefined;
  private readonly listeners = new Set<(o: ReloadOutcome) => void>();

  private constructor(
    readonly source: BundleSource,
    private readonly opts: PolicyStoreOptions,
  ) {
    this.role = opts.role ?? 'live';
  }

  /**
   * Loads and checks the first version; rejects when it cannot be served (nothing to fall back to).
   * With `waitForFirst`, a first version that cannot be had is logged instead and the store starts
   * empty: the service is not ready and denies every check until polling brings a good version (what
   * OPA does when its bundle server is down at start; a local file or folder should fail loudly).
   */
  static async open(source: BundleSource, opts: PolicyStoreOptions & { waitForFirst?: boolean }): Promise<PolicyStore> {
    const store = new PolicyStore(source, opts);
    try {
      const version = await source.fetch({ force: true });
      if (!version) throw new Error(`policy ${source.location}: nothing fetched`);
      const policy = await store.loadChecked(version.load.bind(version));
      store.current = policy;
      opts.metrics?.policyRevision(store.role, policy.revision);
    } catch (err) {
      if (!opts.waitForFirst) throw err;
      const error = (err as Error).message;
      store.lastReload = { result: 'failure', trigger: 'start', revision: '', ms: 0, at: new Date(), error };
      opts.metrics?.policyReloaded(store.role, 'failure');
      opts.log.error(
        { policy: store.role, policy_source: source.location, err: error },
        'no policy yet; not ready, denying every check, retrying at each poll',
      );
    }
    return store;
  }

  /** Watch the source (fs.watch + stat poll, or URL polling) and reload on change. */
  start(): void {
    this.stopWatching ??= this.source.watch((trigger) => void this.reload(trigger));
  }

  stop(): void {
    this.stopWatching?.();
    this.stopWatching = undefined;
  }

  /** Observe every reload outcome (including "unchanged"); returns an unsubscribe function. */
  onReload(listener: (o: ReloadOutcome) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Fetches, checks and swaps in the source's current version. Reloads run one at a time; triggers
   * arriving while one waits join it. `force` reloads even an unchanged version (SIGHUP).
   */
  reload(trigger: string, opts: { force?: boolean } = {}): Promise<ReloadOutcome> {
    if (this.next) {
      this.next.force ||= opts.force ?? false;
      return this.next.promise;
    }
    const next = { force: opts.force ?? false, promise: undefined as unknown as Promise<ReloadOutcome> };
    next.promise = this.queue.then(() => {
      this.next = undefined;
      return this.runReload(trigger, next.force);
    });
    this.next = next;
    this.queue = next.promise.catch(() => {});
    return next.promise;
  }

  private async runReload(trigger: string, force: boolean): Promise<ReloadOutcome> {
    const started = performance.now();
    const log = this.opts.log;
    const outcome = (result: ReloadResult, error?: string): ReloadOutcome => {
      const o: ReloadOutcome = {
        result,
        trigger,
        revision: this.current?.revision ?? '',
        ms: performance.now() - started,
        at: new Date(),
      };
      if (error !== undefined) o.error = error;
      if (result !== 'unchanged') {
        this.lastReload = o;
        this.opts.metrics?.policyReloaded(this.role, result);
      }
      for (const l of this.listeners) l(o);
      return o;
    };
    const previous = this.current?.revision ?? '';
    let candidate: LoadedPolicy;
    try {
      const version = await this.source.fetch({ force });
      if (!version) return outcome('unchanged');
      candidate = await this.loadChecked(version.load.bind(version));
    } catch (err) {
      const error = (err as Error).message;
      log.error(
        { policy: this.role, trigger, policy_source: this.source.location, policy_revision: previous, err: error },
        'policy refused; the last good policy keeps serving',
      );
      return outcome('failure', error);
    }
    this.current = candidate; // the swap: one assignment, seen by every Check that starts after it
    this.opts.metrics?.policyRevision(this.role, candidate.revision);
    const o = outcome('success');
    log.info(
      {
        policy: this.role,
        trigger,
        policy_source: this.source.location,
        policy_revision: candidate.revision,
        previous_revision: previous,
        reload_ms: Math.round(o.ms),
        ...footprintFields(candidate.inputFootprint),
      },
      'policy reloaded',
    );
    return o;
  }

  private async loadChecked(load: (o: LoadPolicyOptions) => Promise<LoadedPolicy>): Promise<LoadedPolicy> {
    const policy = await load(this.opts.load ?? {});
    await checkPolicy(policy, {
      casesPath: this.opts.casesPath ?? this.source.casesPath,
      regoTestsDir: this.source.kind === 'folder' ? this.source.location : undefined,
    });
    return policy;
  }
}

/** Extra `/readyz` fields: how the last reload went, and the shadow policy's revision. */
export function reloadStatus(live: PolicyStore, shadow?: PolicyStore): Record<string, unknown> {
  const detail: Record<string, unknown> = {};
  const last = live.lastReload;
  if (last)
    detail['policy_last_reload'] = {
      result: last.result,
      at: last.at.toISOString(),
      trigger: last.trigger,
      ...(last.error ? { error: last.error } : {}),
    };
  if (shadow) detail['shadow_policy_revision'] = shadow.current?.revision ?? '';
  return detail;
}
