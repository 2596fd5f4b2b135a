// A worker of `serve --workers N`: the whole Check pipeline and both listeners (ports shared through the
// primary, see cluster-primary.ts), with no policy source of its own. Its policies are the bundles the
// primary accepted, loaded from the bytes the primary validated (in a loader thread with the sandbox's
// budgets, then restored from its memory image: the serving loop parses nothing); it reports which one it serves, and
// says ready only when the primary says the whole service is (every worker on the same revision).
// Its trust bundles (`--trust-bundle`, `--trust-bundle-url`, the Workload API's) are the primary's too: it
// reads and fetches none, and replaces its whole set with each one the primary sends, before it listens
// and after. Per worker, by design: the decision memo, the certificate cache, the shadow evaluation, TLS
// file watching, its own Workload API stream (--spiffe-socket: its SVID, key and the listeners' client CA;
// keys do not cross the IPC channel). Shared through the primary: policy, trust bundles, readiness,
// /metrics, stdout.
import type http from 'node:http';
import type { Logger } from 'pino';
import type { LoadPolicyOptions, PolicyImage } from '../policy/policy.js';
import type { SandboxBudget } from '../lifecycle/policy-sandbox.js';
import { loadOffThread } from '../lifecycle/validated-bundle.js';
import { fromPortableBundle, type X509Bundle, type X509BundleSet } from '../identity/x509-bundle.js';
import { ServiceMetrics } from './metrics.js';
import { MutablePolicySource, type RunningService } from './service.js';
import {
  isMessage,
  type BundleMessage,
  type StateMessage,
  type ToPrimary,
  type ToWorker,
  type TrustMessage,
} from './workers.js';
import { errorMessage } from '../common/errors.js';

export interface WorkerServiceParts {
  policies: MutablePolicySource;
  shadowPolicies?: MutablePolicySource;
  metrics: ServiceMetrics;
  /** the whole service's readiness, as the primary last said */
  ready: () => boolean;
  readyDetail: () => Record<string, unknown>;
  /** GET /metrics: the sum over every worker, from the primary */
  metricsRoute: (req: http.IncomingMessage, res: http.ServerResponse) => void;
}

export interface WorkerOptions {
  log: Logger;
  flush: () => void;
  dropped: () => number;
  load: LoadPolicyOptions;
  /** the loader thread's budgets (`--policy-load-timeout`, `--policy-load-memory`), as the primary's sandbox */
  sandbox?: SandboxBudget;
  graceMs: number;
  /** whether the primary has a shadow policy to send */
  shadow: boolean;
  /** each shadow bundle, as it arrives (the shadow thread instantiates it off the serving loop) */
  onShadowBundle?: (bundle: { bytes: Uint8Array; revision: string; source: string; image?: PolicyImage }) => void;
  /**
   * The set the worker's chain verifier reads, fed only by the primary's trust bundle sets (origin
   * `primary`, ranked before the Workload API's as the configured bundles are in one process).
   */
  trustBundles?: X509BundleSet;
  /** starts the listeners exactly as one process does, around these parts */
  start(parts: WorkerServiceParts): Promise<{ service: RunningService; close(): void }>;
}

const METRICS_TIMEOUT_MS = 10_000;
const TRUST_ORIGIN = 'primary';

export async function runWorker(opts: WorkerOptions): Promise<number> {
  const { log } = opts;
  // With a callback, a send to a primary that is gone is an error we ignore, not an 'error' event that kills.
  const send = (m: ToPrimary) => {
    if (process.connected) process.send?.(m, undefined, {}, () => {});
  };
  const metrics = new ServiceMetrics({ defaultMetrics: true });
  const live = new MutablePolicySource(undefined);
  const shadow = opts.shadow ? new MutablePolicySource(undefined) : undefined;
  let state: StateMessage = { ea: 'state', ready: false, detail: {} };
  let running: { service: RunningService; close(): void } | undefined;
  let stopping = false;
  let signals = 0;
  opts.trustBundles?.reserve(TRUST_ORIGIN);

  const exit = (code: number) => {
    opts.flush();
    process.exit(code);
  };
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await running?.service.close(opts.graceMs);
    running?.close();
    log.info({ dropped_log_lines: opts.dropped() }, 'worker stopped');
    exit(0);
  };

  // Bundles load one at a time, in the order the primary accepted them.
  let loading: Promise<void> = Promise.resolve();
  const apply = (b: BundleMessage) => {
    loading = loading.then(async () => {
      try {
        const policy = await loadOffThread(b.bytes, b.source, opts.load, opts.sandbox);
        if (policy.revision !== b.revision)
          throw new Error(`revision ${policy.revision} where the primary accepted ${b.revision}`);
        const target = b.role === 'live' ? live : shadow;
        if (!target) return;
        target.current = policy; // the swap, as in PolicyStore: Checks read `current` once
        if (b.role === 'shadow')
          opts.onShadowBundle?.({
            bytes: b.bytes,
            revision: b.revision,
            source: b.source,
            ...(policy.image ? { image: policy.image } : {}),
          });
        metrics.policyRevision(b.role, policy.revision);
        send({ ea: 'loaded', role: b.role, seq: b.seq, revision: policy.revision });
      } catch (err) {
        // It cannot serve what the others serve: out, and the primary starts one that can.
        const error = errorMessage(err);
        log.error({ policy: b.role, policy_revision: b.revision, err: error }, 'accepted policy failed to load here');
        send({ ea: 'load-failed', role: b.role, seq: b.seq, error });
        exit(1);
      }
    });
  };

  // Synchronous: a bundle set that arrives before the state is in place before the listeners start.
  const applyTrust = (t: TrustMessage) => {
    const bundles: X509Bundle[] = [];
    for (const p of t.bundles) {
      const b = fromPortableBundle(p);
      if (!b.ok) {
        // It would verify against other roots than its peers: out, and the primary starts one that can.
        log.error({ bundle_generation: t.generation, err: b.reason }, 'trust bundles from the primary not usable here');
        send({ ea: 'trust-failed', generation: t.generation, error: b.reason });
        exit(1);
        return;
      }
      bundles.push(b.value);
    }
    opts.trustBundles?.replace(TRUST_ORIGIN, bundles);
    send({ ea: 'trust-applied', generation: t.generation });
  };

  let metricsId = 0;
  const pendingMetrics = new Map<number, (text: string) => void>();
  const metricsRoute = (_req: http.IncomingMessage, res: http.ServerResponse) => {
    const id = ++metricsId;
    const timer = setTimeout(() => answer(''), METRICS_TIMEOUT_MS);
    const answer = (text: string) => {
      clearTimeout(timer);
      pendingMetrics.delete(id);
      if (text === '') {
        res.writeHead(503, { 'content-type': 'text/plain' });
        res.end('metrics collection failed\n');
        return;
      }
      res.writeHead(200, { 'content-type': metrics.registry.contentType, 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    pendingMetrics.set(id, answer);
    send({ ea: 'metrics-request', id });
  };

  let firstState: () => void;
  const gotState = new Promise<void>((r) => (firstState = r));
  process.on('message', (message: unknown) => {
    if (!isMessage<ToWorker>(message)) return;
    switch (message.ea) {
      case 'bundle':
        return apply(message);
      case 'trust':
        return applyTrust(message);
      case 'state':
        state = message;
        firstState();
        running?.service.refreshHealth();
        return;
      case 'collect-metrics':
        metrics.registry.getMetricsAsJSON().then(
          (m) => send({ ea: 'metrics-json', id: message.id, metrics: m }),
          () => send({ ea: 'metrics-json', id: message.id, metrics: [] }),
        );
        return;
      case 'metrics':
        pendingMetrics.get(message.id)?.(message.text);
        return;
      case 'stop':
        void stop();
        return;
      case 'exit-now':
        // The second signal, or the primary giving up before we served (its policy failed to load).
        if (running) log.warn('second signal; worker exiting at once');
        exit(130);
    }
  });
  // The primary coordinates signals (it forwards SIGTERM as 'stop'). A signal sent to this process too
  // (Ctrl-C reaches the whole process group) starts the same drain; a second one exits at once, as
  // for one process. SIGHUP is the primary's (it reloads the policy); here it must not kill us.
  const onSignal = (signal: string) => {
    if (++signals >= 2) {
      log.warn({ signal }, 'second signal; worker exiting at once');
      exit(130);
    }
    void stop();
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGHUP', () => {});
  // The primary is gone (killed): nobody owns the sockets or the policy any more.
  process.on('disconnect', () => void stop());

  send({ ea: 'hello' });
  await gotState; // the primary sends the policies it has, then the state
  await loading;
  try {
    running = await opts.start({
      policies: live,
      ...(shadow ? { shadowPolicies: shadow } : {}),
      metrics,
      ready: () => state.ready,
      readyDetail: () => state.detail,
      metricsRoute,
    });
  } catch (err) {
    // The primary sees the exit before "listening" and fails its start (a port in use, bad TLS files).
    log.fatal({ err: errorMessage(err) }, (err as { what?: string }).what ?? 'worker could not start its listeners');
    exit(1);
    throw err;
  }
  const { service } = running;
  send({
    ea: 'listening',
    pid: process.pid,
    grpcPort: service.grpcPort,
    httpPort: service.httpPort,
    ...(service.healthPort !== undefined ? { healthPort: service.healthPort } : {}),
    fields: service.servingFields,
  });
  // Exits from stop() or exit(); until then the listeners hold the event loop.
  return new Promise<number>(() => {});
}
