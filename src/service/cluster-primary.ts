// The primary of `serve --workers N`: it owns the policy (bundle sources, PolicyStores, validation), the
// real stdout, and the workers' lifecycle; it answers no Check itself. The listening sockets are its too:
// node:cluster creates each one here on a worker's first listen() and hands accepted connections to the
// workers in turn (round-robin), which is how @grpc/grpc-js's HTTP/2 server shares a port across
// processes on Node 20 (no SO_REUSEPORT for net servers before Node 22.12).
//
// What stays true across workers:
// - a policy is validated once, here; an accepted one goes to every worker as the bytes that were
//   validated (a worker only loads them), so a refused bundle is refused everywhere;
// - trust bundles are read, fetched and validated once, here; every accepted bundle set goes to every
//   worker (a worker fetches nothing), so all verify chains against the same roots;
// - ready means: every worker is up, listening, serving the latest accepted revision and holding the
//   latest bundle set;
// - /metrics is one view: a worker asked for it gets the sum of every worker's registry and ours;
// - SIGTERM drains every worker; a worker that dies is replaced, and we are not ready meanwhile;
// - log lines reach stdout whole (log-lines.ts).
import cluster, { type Worker } from 'node:cluster';
import type { Logger } from 'pino';
import { AggregatorRegistry, Gauge, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import type { PolicyStore } from '../lifecycle/policy-store.js';
import { toPortableBundle, type X509BundleSet } from '../identity/x509-bundle.js';
import type { LoadedPolicy } from '../policy/policy.js';
import { forwardLines, type LineSink } from './log-lines.js';
import type { PolicyRole } from '../lifecycle/policy-store.js';
import type { ServiceMetrics } from './metrics.js';
import {
  isMessage,
  type BundleMessage,
  type StateMessage,
  type ToPrimary,
  type ToWorker,
  type TrustMessage,
} from './workers.js';
import { errorMessage } from '../common/errors.js';

export interface WorkerPoolOptions {
  workers: number;
  log: Logger;
  /** the primary's own log destination: the workers' lines are written through it */
  sink: LineSink;
  /** the primary's registry (policy reloads, its process): added to the workers' in /metrics */
  metrics: ServiceMetrics;
  /** the `/readyz` detail only the primary knows (last reload, shadow revision) */
  readyDetail: () => Record<string, unknown>;
  /** a worker that has not taken an accepted policy bundle or trust bundle set by then is replaced */
  loadTimeoutMs?: number;
  /** a worker that has not answered a metrics collection by then is left out of that answer */
  metricsTimeoutMs?: number;
}

export interface ListeningPorts {
  grpcPort: number;
  httpPort: number;
  healthPort?: number;
  /** the worker's startup log line's fields */
  fields: Record<string, unknown>;
}

interface Member {
  worker: Worker;
  startedAt: number;
  ports?: ListeningPorts;
  /** the seq of the bundle each role serves (0: none) */
  serving: Record<PolicyRole, number>;
  /** the generation of the primary's trust bundle set it holds (0: none yet) */
  trust: number;
  /** it said hello: it waits for its first policies */
  greeted?: boolean;
  /** its stdout fully forwarded */
  output: Promise<void>;
  exited: Promise<void>;
}

const DEFAULT_LOAD_TIMEOUT_MS = 60_000;
const DEFAULT_METRICS_TIMEOUT_MS = 3_000;
/** the first replacement of a worker that died young waits this long; each further quick death doubles it */
const RESTART_MS = 100;
const MAX_RESTART_MS = 10_000;
/** a worker that lived this long died of something other than its start: replace it at once */
const STABLE_MS = 10_000;

export class WorkerPool {
  private readonly members = new Map<number, Member>();
  private readonly latest: Partial<Record<PolicyRole, BundleMessage>> = {};
  private latestTrust: TrustMessage | undefined;
  private seq = 0;
  private stopping = false;
  private restartMs = RESTART_MS;
  private lastState = '';
  private readonly changed = new Set<() => void>();
  private readonly pendingMetrics = new Map<number, (m: MetricObjectWithValues<MetricValue<string>>[]) => void>();
  private metricsId = 0;
  private readonly workersGauge: Gauge<'state'>;
  private started = false;
  private provided = false;
  /** every worker's stdout still being forwarded, including workers already gone */
  private readonly outputs = new Set<Promise<void>>();
  private launched: Promise<ListeningPorts> | undefined;

  constructor(private readonly opts: WorkerPoolOptions) {
    this.workersGauge = new Gauge({
      name: 'egress_authz_workers',
      help: 'serve --workers: worker processes configured, running, and ready (listening, on the latest policy)',
      labelNames: ['state'] as const,
      registers: [opts.metrics.registry],
      collect: () => this.updateGauge(),
    });
    // Advanced serialization: bundle bytes cross as bytes, not as a JSON array of numbers.
    // stdout is a pipe per worker (forwarded in whole lines); stderr is shared (crash traces only).
    cluster.setupPrimary({ serialization: 'advanced', stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  }

  /**
   * Forks every worker; each waits for `provide()` (it may come first). Resolves when all listen; a
   * worker that dies before listening fails the start. Not forked before the primary has validated its
   * first policy: N processes starting at once would compete with that validation, whose case
   * evaluations run under the policy's evaluation budget (50 ms) and fail it on a crowded machine.
   */
  launch(): Promise<ListeningPorts> {
    this.launched ??= Promise.all(Array.from({ length: this.opts.workers }, () => this.fork())).then((ports) => {
      this.started = true;
      this.publish();
      return ports[0]!;
    });
    return this.launched;
  }

  /** The policies the workers start with (PolicyStore.open's first versions); answers the waiting workers. */
  provide(live: LoadedPolicy | undefined, shadow: LoadedPolicy | undefined): void {
    if (live) this.latest.live = this.bundleMessage('live', live);
    if (shadow) this.latest.shadow = this.bundleMessage('shadow', shadow);
    this.provided = true;
    for (const m of this.members.values()) if (m.greeted) this.greet(m);
  }

  /** PolicyStore's `distribute`: every worker loads the accepted version; resolves when all serve it. */
  async offer(role: PolicyRole, policy: LoadedPolicy): Promise<void> {
    const message = this.bundleMessage(role, policy);
    this.latest[role] = message;
    for (const m of this.members.values()) this.send(m.worker, message);
    this.publish();
    await this.everyWorker(
      (m) => m.serving[role] >= message.seq,
      { policy: role, policy_revision: message.revision },
      'worker did not load the accepted policy in time; replacing it',
    );
  }

  /**
   * The primary's bundle set changed (or is the first): every worker replaces its own with it. Resolves
   * when all hold it (logged); until then the service is not ready. Before the workers start, this is
   * what `greet` gives each of them before it serves.
   */
  async offerTrust(set: X509BundleSet): Promise<void> {
    const message: TrustMessage = {
      ea: 'trust',
      generation: set.generation,
      bundles: set.trustDomains().map((td) => toPortableBundle(set.bundleFor(td)!)),
    };
    this.latestTrust = message;
    for (const m of this.members.values()) if (m.greeted) this.send(m.worker, message);
    this.publish();
    if (!this.started) return;
    const all = await this.everyWorker(
      (m) => m.trust >= message.generation,
      { bundle_generation: message.generation },
      'worker did not take the trust bundles in time; replacing it',
    );
    if (all && this.latestTrust === message)
      this.opts.log.info(
        {
          bundle_generation: message.generation,
          trust_domains: message.bundles.map((b) => b.trustDomain),
          workers: this.members.size,
        },
        'trust bundles served by every worker',
      );
  }

  /** Whether a worker serves the latest accepted live policy and holds the latest trust bundle set. */
  private current(m: Member): boolean {
    const live = this.latest.live;
    return (
      m.ports !== undefined &&
      live !== undefined &&
      m.serving.live === live.seq &&
      (this.latestTrust === undefined || m.trust >= this.latestTrust.generation)
    );
  }

  /**
   * Resolves once every listening worker has `done`; one still behind after the load timeout is killed
   * (and replaced). Resolves true when all caught up, false when stopping or when some were killed.
   */
  private async everyWorker(
    done: (m: Member) => boolean,
    fields: Record<string, unknown>,
    why: string,
  ): Promise<boolean> {
    const timeoutMs = this.opts.loadTimeoutMs ?? DEFAULT_LOAD_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    let all = true;
    await this.until(() => {
      const behind = [...this.members.values()].filter((m) => m.ports && !done(m));
      if (this.stopping) all = false;
      if (behind.length === 0 || this.stopping) return true;
      if (Date.now() < deadline) return false;
      all = false;
      for (const m of behind) {
        this.opts.log.error({ worker: m.worker.id, ...fields, timeout_ms: timeoutMs }, why);
        m.worker.process.kill('SIGKILL');
      }
      return true;
    }, timeoutMs);
    return all;
  }

  /**
   * Every worker present, listening, serving the latest accepted live policy (there is one) and holding
   * the latest trust bundle set (when bundles are configured).
   */
  ready(): boolean {
    if (this.stopping || !this.started || this.members.size < this.opts.workers) return false;
    for (const m of this.members.values()) if (!this.current(m)) return false;
    return true;
  }

  /** Tells the workers how the whole stands now (after a reload outcome the workers show in /readyz). */
  refresh(): void {
    this.publish();
  }

  /** Kills every worker at once (the primary's last resort when a drain overruns its bound). */
  kill(): void {
    for (const m of this.members.values()) m.worker.process.kill('SIGKILL');
  }

  /** Drains every worker (each finishes its accepted Checks and flushes its log); resolves when all are gone. */
  async stop(): Promise<{ codes: (number | null)[] }> {
    this.stopping = true;
    this.publish();
    const members = [...this.members.values()];
    const codes: (number | null)[] = [];
    for (const m of members) {
      m.worker.process.once('exit', (code) => codes.push(code));
      this.send(m.worker, { ea: 'stop' });
    }
    await Promise.all(members.map((m) => m.exited));
    await Promise.all(this.outputs);
    return { codes };
  }

  /** The second signal: workers flush what they have and exit now; the ones that do not are killed. */
  async exitNow(waitMs = 300): Promise<void> {
    this.stopping = true;
    const members = [...this.members.values()];
    for (const m of members) this.send(m.worker, { ea: 'exit-now' });
    const timer = setTimeout(() => members.forEach((m) => m.worker.process.kill('SIGKILL')), waitMs);
    await Promise.all(members.map((m) => m.exited));
    clearTimeout(timer);
    await Promise.all(this.outputs);
  }

  /** The whole service's metrics: every worker's registry and ours, added up by prom-client's aggregator. */
  async collectMetrics(): Promise<string> {
    const own = (await this.opts.metrics.registry.getMetricsAsJSON()).filter(
      // The revisions served are the workers' to report; ours would show a version before they serve it.
      (metric) => metric.name !== 'egress_authz_policy_revision_info',
    );
    const timeoutMs = this.opts.metricsTimeoutMs ?? DEFAULT_METRICS_TIMEOUT_MS;
    const fromWorkers = [...this.members.values()]
      // A worker still starting has no registry to speak of (and may not listen to us yet).
      .filter((m) => m.greeted && m.worker.isConnected())
      .map(
        (m) =>
          new Promise<MetricObjectWithValues<MetricValue<string>>[] | undefined>((resolve) => {
            const id = ++this.metricsId;
            const timer = setTimeout(() => {
              this.pendingMetrics.delete(id);
              this.opts.log.warn(
                { worker: m.worker.id, timeout_ms: timeoutMs },
                'worker left out of /metrics: no answer',
              );
              resolve(undefined);
            }, timeoutMs);
            this.pendingMetrics.set(id, (metrics) => {
              clearTimeout(timer);
              resolve(metrics);
            });
            this.send(m.worker, { ea: 'collect-metrics', id });
          }),
      );
    const all = [own, ...(await Promise.all(fromWorkers)).filter((m) => m !== undefined)];
    return AggregatorRegistry.aggregate(all).metrics();
  }

  private bundleMessage(role: PolicyRole, policy: LoadedPolicy): BundleMessage {
    if (!policy.bundle) throw new Error(`policy ${policy.source}: loaded without its bundle bytes (keepBundle)`);
    return {
      ea: 'bundle',
      role,
      seq: ++this.seq,
      revision: policy.revision,
      source: policy.source,
      bytes: policy.bundle,
    };
  }

  private fork(): Promise<ListeningPorts> {
    const worker = cluster.fork();
    let exitedResolve!: () => void;
    const member: Member = {
      worker,
      startedAt: Date.now(),
      serving: { live: 0, shadow: 0 },
      trust: 0,
      output: worker.process.stdout ? forwardLines(worker.process.stdout, this.opts.sink) : Promise.resolve(),
      exited: new Promise<void>((r) => (exitedResolve = r)),
    };
    this.members.set(worker.id, member);
    this.outputs.add(member.output);
    void member.output.then(() => this.outputs.delete(member.output));
    return new Promise<ListeningPorts>((resolveListening, rejectListening) => {
      worker.on('message', (message: unknown) => {
        if (!isMessage<ToPrimary>(message)) return;
        this.onMessage(member, message, resolveListening);
      });
      worker.on('error', () => {}); // an IPC write to a dying worker; its exit is what counts
      worker.process.once('exit', (code, signal) => {
        this.members.delete(worker.id);
        exitedResolve();
        rejectListening(new Error(`worker ${worker.id} exited (${signal ?? code}) before listening`));
        this.publish();
        this.wake();
        if (this.stopping || !this.started) return;
        const lived = Date.now() - member.startedAt;
        this.restartMs = lived > STABLE_MS ? RESTART_MS : Math.min(this.restartMs * 2, MAX_RESTART_MS);
        const delay = lived > STABLE_MS ? 0 : this.restartMs;
        this.opts.log.error(
          { worker: worker.id, pid: worker.process.pid, exit_code: code, signal, restart_in_ms: delay },
          'worker died; not ready until its replacement serves',
        );
        setTimeout(() => {
          if (this.stopping) return;
          this.fork().catch((err: unknown) =>
            this.opts.log.error({ err: errorMessage(err) }, 'replacement worker failed to start'),
          );
        }, delay).unref();
      });
    });
  }

  private onMessage(member: Member, message: ToPrimary, listening: (p: ListeningPorts) => void): void {
    switch (message.ea) {
      case 'hello':
        member.greeted = true;
        if (this.provided) this.greet(member);
        return;
      case 'listening': {
        member.ports = {
          grpcPort: message.grpcPort,
          httpPort: message.httpPort,
          ...(message.healthPort !== undefined ? { healthPort: message.healthPort } : {}),
          fields: message.fields,
        };
        listening(member.ports);
        this.publish();
        this.wake();
        return;
      }
      case 'loaded':
        member.serving[message.role] = Math.max(member.serving[message.role], message.seq);
        this.publish();
        this.wake();
        return;
      case 'load-failed':
        // The worker exits after this (it cannot serve what the others serve); its replacement retries.
        this.opts.log.error(
          { worker: member.worker.id, policy: message.role, err: message.error },
          'worker could not load the accepted policy; replacing it',
        );
        return;
      case 'trust-applied':
        member.trust = Math.max(member.trust, message.generation);
        this.publish();
        this.wake();
        return;
      case 'trust-failed':
        // The worker exits after this (it cannot verify what the others verify); its replacement retries.
        this.opts.log.error(
          { worker: member.worker.id, bundle_generation: message.generation, err: message.error },
          'worker could not take the trust bundles; replacing it',
        );
        return;
      case 'metrics-json':
        this.pendingMetrics.get(message.id)?.(message.metrics);
        this.pendingMetrics.delete(message.id);
        return;
      case 'metrics-request':
        this.collectMetrics().then(
          (text) => this.send(member.worker, { ea: 'metrics', id: message.id, text }),
          (err: unknown) => {
            this.opts.log.error({ err: errorMessage(err) }, 'metrics collection failed');
            this.send(member.worker, { ea: 'metrics', id: message.id, text: '' });
          },
        );
        return;
    }
  }

  /**
   * A new worker's first policies and trust bundles, then what the whole looks like (the state is what it
   * waits for before it listens, so it never serves without the current bundles).
   */
  private greet(member: Member): void {
    for (const role of ['live', 'shadow'] as const) {
      const b = this.latest[role];
      if (b) this.send(member.worker, b);
    }
    if (this.latestTrust) this.send(member.worker, this.latestTrust);
    this.send(member.worker, this.state());
  }

  private state(): StateMessage {
    const all = [...this.members.values()];
    return {
      ea: 'state',
      ready: this.ready(),
      detail: {
        ...this.opts.readyDetail(),
        workers: {
          configured: this.opts.workers,
          running: all.length,
          ready: all.filter((m) => this.current(m)).length,
        },
      },
    };
  }

  /** Tells every worker how the whole stands, when that changed. */
  private publish(): void {
    const state = this.state();
    const key = JSON.stringify(state);
    if (key === this.lastState) return;
    this.lastState = key;
    for (const m of this.members.values()) this.send(m.worker, state);
  }

  private updateGauge(): void {
    const s = this.state().detail['workers'] as Record<string, number>;
    for (const [k, v] of Object.entries(s)) this.workersGauge.labels(k).set(v);
  }

  private send(worker: Worker, message: ToWorker): void {
    if (!worker.isConnected()) return;
    try {
      worker.send(message);
    } catch {
      // the channel closed under us: the worker is exiting, and its exit is handled
    }
  }

  private wake(): void {
    for (const f of [...this.changed]) f();
  }

  /** Resolves once `done()` is true; re-checked on every worker event and at least every 250 ms. */
  private until(done: () => boolean, maxMs: number): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        if (!done()) return;
        this.changed.delete(check);
        clearInterval(timer);
        resolve();
      };
      const timer = setInterval(check, Math.min(250, maxMs));
      timer.unref();
      this.changed.add(check);
      check();
    });
  }
}

export interface PrimaryOptions {
  pool: WorkerPool;
  live: PolicyStore;
  shadow?: PolicyStore;
  log: Logger;
  flush: () => void;
  dropped: () => number;
  graceMs: number;
  workers: number;
  /**
   * The bundle set the workers verify chains against (`--trust-bundle`, `--trust-bundle-url`,
   * `--spiffe-socket`), fed here: opened before, started once the workers listen, stopped at shutdown.
   */
  trust?: { set: X509BundleSet; start(): void; stop(): void };
}

/** The primary's life: start the workers, watch the policy, and on SIGTERM drain them all. Resolves with the exit code. */
export async function runPrimary(opts: PrimaryOptions): Promise<number> {
  const { pool, live, shadow, log, flush, trust } = opts;
  pool.provide(live.current, shadow?.current);
  if (trust) {
    void pool.offerTrust(trust.set);
    trust.set.subscribe(() => void pool.offerTrust(trust.set));
  }
  live.onReload(() => pool.refresh());
  shadow?.onReload(() => pool.refresh());
  let ports: ListeningPorts;
  try {
    ports = await pool.launch();
  } catch (err) {
    log.fatal({ err: errorMessage(err) }, 'a worker failed to start; not serving');
    await pool.exitNow();
    flush();
    return 1;
  }
  // What one process would say (a worker said it: TLS mode, allowed callers, policy footprint), and how many.
  log.info({ ...ports.fields, workers: opts.workers }, 'egress-authz serving');
  live.start();
  shadow?.start();
  // As one process does it: the files watched and the endpoints first fetched once the listeners are up.
  trust?.start();
  process.on('SIGHUP', () => {
    void live.reload('SIGHUP', { force: true });
    void shadow?.reload('SIGHUP', { force: true });
  });
  return new Promise<number>((resolveStop) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn({ signal }, 'second signal; exiting at once');
        void pool.exitNow().then(() => {
          flush();
          process.exit(130);
        });
        return;
      }
      stopping = true;
      log.info(
        { signal, grace_ms: opts.graceMs, workers: opts.workers },
        'shutting down: not ready, no new connections, finishing accepted checks',
      );
      // Each worker bounds its drain by the grace period; this bounds the whole (a stuck worker).
      setTimeout(() => {
        log.error('workers did not stop in time; killing them');
        pool.kill();
        flush();
        process.exit(1);
      }, opts.graceMs + 3000).unref();
      live.stop();
      shadow?.stop();
      trust?.stop();
      void pool.stop().then(({ codes }) => {
        log.info({ dropped_log_lines: opts.dropped(), worker_exit_codes: codes }, 'stopped');
        flush();
        resolveStop(codes.every((c) => c === 0) ? 0 : 1);
      });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}
