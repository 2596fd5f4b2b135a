// The live policy and how it is replaced. A new version from the bundle source is first tried in the
// sandbox (a worker thread with a time and a heap budget: Wasm compiles and instantiates, the entrypoint
// exists, its case files pass), for a folder its Rego unit tests run too (exactly what `egress-authz
// test` runs), and only then is it instantiated here, from the memory image the sandbox captured (no
// parse on this thread), and swapped in with one assignment. Accepted versions are handed on as plain
// data (validated-bundle.ts).
// A Check reads `current` once, synchronously, so it finishes on the policy it started with. A version
// that fails any step is refused: the last good policy keeps serving, the refusal is logged and counted.
import type { Logger } from 'pino';
import type { BundleSource, BundleVersion } from './bundle-source.js';
import { checkInSandbox, type SandboxBudget } from './policy-sandbox.js';
import { instantiateValidated, type ValidatedBundle } from './validated-bundle.js';
import type { PolicySource } from '../decision/decision.js';
import { runOpaTest } from '../policy/opa-cli.js';
import { decideCase, runPolicyCases } from './policy-cases.js';
import { footprintFields } from '../policy/input-footprint.js';
import type { LoadedPolicy, LoadPolicyOptions } from '../policy/policy.js';
import { errorMessage } from '../common/errors.js';

export interface PolicyCheckOptions {
  /** case files to run against the candidate (a file or folder, see runPolicyCases) */
  casesPath?: string;
  /** a policy folder whose Rego unit tests (`opa test`) must pass */
  regoTestsDir?: string;
}

/** Rejects with what failed when the candidate's cases or Rego tests do not pass; else the cases run. */
export async function checkPolicy(policy: LoadedPolicy | undefined, opts: PolicyCheckOptions): Promise<number> {
  let cases = 0;
  if (opts.casesPath !== undefined) {
    if (!policy) throw new Error('policy cases need a loaded policy');
    const report = await runPolicyCases(opts.casesPath, policy, decideCase);
    if (!report.ok) {
      const failures = report.text.split('\n').filter((l) => l.trimStart().startsWith('✗'));
      throw new Error(
        `policy cases failed (${report.failed} of ${report.outcomes.length}): ${failures
          .slice(0, 3)
          .map((l) => l.trim())
          .join('; ')}`,
      );
    }
    cases = report.outcomes.length;
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
  return cases;
}

export type ReloadResult = 'success' | 'failure' | 'unchanged';

/** Which policy a store serves: the one that answers, or the candidate compared beside it. */
export type PolicyRole = 'live' | 'shadow';

/** What a store reports as it loads and reloads (service/metrics.ts counts it). */
export interface PolicyStoreMetrics {
  policyRevision(role: PolicyRole, revision: string): void;
  policyReloaded(role: PolicyRole, result: 'success' | 'failure'): void;
}

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
  metrics?: PolicyStoreMetrics;
  load?: LoadPolicyOptions;
  /** cases every candidate must pass; default: the policy folder's own `cases/` */
  casesPath?: string;
  /**
   * Awaited with each accepted candidate after the swap, before the reload is reported (logged, counted,
   * resolved): `serve --workers` hands it to every worker here, so "policy reloaded" means every process
   * serves it. Not called for the first version (`open`): there is nobody to hand it to yet.
   */
  distribute?: (policy: LoadedPolicy) => Promise<void>;
  /** time and heap a candidate may take in the sandbox (policy-sandbox.ts) */
  sandbox?: SandboxBudget;
}

export class PolicyStore implements PolicySource {
  /** the serving policy; replaced only by a checked candidate */
  current: LoadedPolicy | undefined;
  /** the last reload that did something (success or failure) */
  lastReload: ReloadOutcome | undefined;
  /** what `current` was instantiated from: the hand-off for other serving processes */
  accepted: ValidatedBundle | undefined;
  private readonly role: PolicyRole;
  private queue: Promise<unknown> = Promise.resolve();
  private next: { promise: Promise<ReloadOutcome>; force: boolean } | undefined;
  private stopWatching: (() => void) | undefined;
  private readonly listeners = new Set<(o: ReloadOutcome) => void>();
  private readonly acceptedListeners = new Set<(b: ValidatedBundle) => void>();

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
      const { policy, bundle } = await store.loadChecked(version);
      store.current = policy;
      store.accepted = bundle;
      opts.metrics?.policyRevision(store.role, policy.revision);
    } catch (err) {
      if (!opts.waitForFirst) throw err;
      const error = errorMessage(err);
      store.lastReload = { result: 'failure', trigger: 'start', revision: '', ms: 0, at: new Date(), error };
      opts.metrics?.policyReloaded(store.role, 'failure');
      opts.log.error(
        { policy: store.role, policy_source: source.location, err: error },
        store.role === 'live'
          ? 'no policy yet; not ready, denying every check, retrying at each poll'
          : 'no shadow policy yet; comparing nothing, retrying at each change or poll',
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

  /**
   * Observe every accepted version (the first one included if it was accepted before subscribing, as
   * `accepted`): what each serving process instantiates. Returns an unsubscribe function.
   */
  onAccepted(listener: (b: ValidatedBundle) => void): () => void {
    this.acceptedListeners.add(listener);
    return () => this.acceptedListeners.delete(listener);
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
    let accepted: ValidatedBundle;
    let instantiateMs: number;
    try {
      const version = await this.source.fetch({ force });
      if (!version) return outcome('unchanged');
      ({ policy: candidate, bundle: accepted, instantiateMs } = await this.loadChecked(version));
    } catch (err) {
      const error = errorMessage(err);
      log.error(
        { policy: this.role, trigger, policy_source: this.source.location, policy_revision: previous, err: error },
        'policy refused; the last good policy keeps serving',
      );
      return outcome('failure', error);
    }
    this.current = candidate; // the swap: one assignment, seen by every Check that starts after it
    this.accepted = accepted;
    this.opts.metrics?.policyRevision(this.role, candidate.revision);
    for (const l of this.acceptedListeners) l(accepted);
    await this.opts
      .distribute?.(candidate)
      .catch((err: unknown) =>
        log.error(
          { policy: this.role, policy_revision: candidate.revision, err: errorMessage(err) },
          'policy accepted but not handed on everywhere',
        ),
      );
    const o = outcome('success');
    log.info(
      {
        policy: this.role,
        trigger,
        policy_source: this.source.location,
        policy_revision: candidate.revision,
        previous_revision: previous,
        reload_ms: Math.round(o.ms),
        sandbox_ms: Math.round(accepted.sandboxMs),
        instantiate_ms: Math.round(instantiateMs),
        ...footprintFields(candidate.inputFootprint),
      },
      'policy reloaded',
    );
    return o;
  }

  /**
   * The sandbox first; then, for a folder, its Rego unit tests (a child process); then the serving
   * thread restores the memory image the sandbox captured (or, without one, loads the same bytes).
   */
  private async loadChecked(
    version: BundleVersion,
  ): Promise<{ policy: LoadedPolicy; bundle: ValidatedBundle; instantiateMs: number }> {
    const bytes = await version.bytes();
    const load: LoadPolicyOptions = this.opts.load ?? {};
    const casesPath = this.opts.casesPath ?? this.source.casesPath;
    const source = this.source.location;
    const report = await checkInSandbox(
      { bytes, source, load, ...(casesPath !== undefined ? { casesPath } : {}) },
      this.opts.sandbox,
    );
    if (this.source.kind === 'folder') await checkPolicy(undefined, { regoTestsDir: this.source.location });
    const bundle: ValidatedBundle = {
      bytes,
      revision: report.revision,
      source,
      version: version.version,
      sandboxMs: report.ms,
      ...(report.image ? { image: report.image } : {}),
    };
    const started = performance.now();
    const policy = await instantiateValidated(bundle, load);
    return { policy, bundle, instantiateMs: performance.now() - started };
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
  const shadowLast = shadow?.lastReload;
  if (shadowLast?.result === 'failure')
    detail['shadow_policy_last_reload'] = {
      result: 'failure',
      at: shadowLast.at.toISOString(),
      error: shadowLast.error,
    };
  return detail;
}
