#!/usr/bin/env node
// egress-authz CLI: serve | eval | test | build | inspect. Usage errors exit 2 with a message on stderr.
import { existsSync, mkdirSync, readFileSync, realpathSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import pino from 'pino';
import { Authorizer } from './decision/authorizer.js';
import type { Decision } from './decision/decision.js';
import cluster from 'node:cluster';
import { MutablePolicySource, startService, type RunningService, type ServiceOptions } from './service/service.js';
import type { LoadedPolicy } from './policy/policy.js';
import { loadPolicy } from './lifecycle/bundle-source.js';
import { formatReport, inspectCertificate } from './identity/inspect.js';
import { buildWasmBundle, runOpaTest } from './policy/opa-cli.js';
import { decideCase, runPolicyCases } from './lifecycle/policy-cases.js';
import type { TlsMaterialSource } from './common/tls-material.js';
import { CertificateFiles } from './transport/tls.js';
import { X509Source } from './spiffe/x509-source.js';
import { errorMessage } from './common/errors.js';
import { DEFAULT_ENTRYPOINT } from './policy/bundle.js';
import { configureX509SvidCache } from './identity/x509-svid.js';
import {
  ConfigError,
  optionsUsage,
  parseArgsOptions,
  parseServeConfig,
  SERVE_OPTIONS,
  VERIFICATION_OPTIONS,
  verificationFlags,
  type ServeConfig,
  type VerificationFlags,
} from './service/config.js';
import {
  DEFAULT_SIGNING_ALG,
  keyProblem,
  type BundleSigningKey,
  type BundleVerification,
} from './policy/bundle-signing.js';
import { availableCpus } from './service/workers.js';
import { batchLines, byteDestination, linesIn } from './service/log-lines.js';
import { createServiceLog } from './service/service-log.js';
import { runPrimary, WorkerPool } from './service/cluster-primary.js';
import { runWorker } from './service/cluster-worker.js';
import { openBundleSource } from './lifecycle/bundle-source.js';
import { ServiceMetrics } from './service/metrics.js';
import { PolicyStore, reloadStatus } from './lifecycle/policy-store.js';
import { ShadowThread } from './lifecycle/shadow-thread.js';
import { parseTrustBundleFlag, TrustBundles } from './lifecycle/trust-bundles.js';
import { ChainVerifier } from './identity/chain-verify.js';
import { X509BundleSet } from './identity/x509-bundle.js';

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const USAGE = `usage: egress-authz <command> [options]

commands:
  serve   [options]   answer Checks: gRPC ext_authz v3, the BIG-IP sideband, health, /metrics.
          The policy is reloaded when its file or folder changes, on SIGHUP, and by polling an
          http(s) bundle URL. DUR: 500ms, 10s, 1m.
${optionsUsage(SERVE_OPTIONS)}
  eval    (--spiffe-id ID | --cert FILE | --input FILE) [--destination HOST[:PORT]] [--policy PATH]
          [VERIFY] [--trust-bundle TD=FILE]...   print the decision as JSON; with --cert and a
          bundle, its chain is verified against the bundle of its trust domain first
  test    [--policy PATH] [--cases PATH] [VERIFY]
          run the policy's cases and its Rego unit tests (opa test)
  build   [--out FILE] [--revision REV] [--signing-key FILE [--signing-alg ALG]] [POLICY_DIR]
          compile a policy folder into an OPA Wasm bundle (.manifest revision REV), signed
          (.signatures.json, as opa build --signing-key) with a PEM private key or HMAC secret file
  VERIFY: [--verification-key FILE [--verification-key-id ID] [--signing-alg ALG] [--scope S]]
  inspect [--json] FILE                    a certificate's SPIFFE ID and whether it is a valid
                                           X.509-SVID (exit 1 with the reason when not)

--policy takes a bundle (.tar.gz) or a folder of .rego files and data; default: the embedded policy.
serve --policy also takes the http(s) URL of an OPA bundle server (polled with If-None-Match).
`;

class UsageError extends Error {}

/** The embedded default policy: the bundle compiled by `npm ci`, or the source folder. */
export function defaultPolicyLocation(): string {
  const bundle = join(packageRoot, 'dist', 'policy', 'bundle.tar.gz');
  return existsSync(bundle) ? bundle : join(packageRoot, 'policies');
}

// Every option of this CLI takes a string value (flags would be booleans); repeatable ones are arrays.
type Values = Record<string, string | string[] | undefined>;

function args(
  argv: string[],
  options: ParseArgsConfig['options'],
  allowPositionals = false,
): { values: Values; positionals: string[] } {
  try {
    const parsed = parseArgs({ args: argv, options, allowPositionals, strict: true });
    return { values: parsed.values, positionals: parsed.positionals };
  } catch (err) {
    throw new UsageError(errorMessage(err));
  }
}

function decisionJson(d: Decision): Record<string, unknown> {
  return {
    decision_id: d.decision_id,
    allow: d.allow,
    snat_pool: d.snat_pool,
    reason: d.reason,
    http_status: d.http_status,
    spiffe_id: d.identity?.spiffe_id ?? '',
    namespace: d.identity?.namespace ?? '',
    destination: d.destination,
    policy_revision: d.policy_revision,
  };
}

async function serve(argv: string[]): Promise<number> {
  const parsed = parseServeConfig(argv, process.env);
  if (!parsed.ok) throw new UsageError(parsed.reason);
  const config = parsed.value;
  configureX509SvidCache({ entries: config.svidCacheEntries });
  // Asynchronous writes keep the decision log off the hot path, in batches (batchLines); the buffer is
  // bounded (a stuck stdout drops lines, counted, instead of growing the heap) and flushed synchronously
  // on the way out.
  // Buffer mode: the batches (and the workers' lines forwarded by the primary) are bytes already.
  const destination = byteDestination({ sync: false, maxLength: 16 * 1024 * 1024 });
  let dropped = 0;
  destination.on('drop', (batch: Buffer) => void (dropped += linesIn(batch)));
  const lines = batchLines(destination);
  const { logger, decisionLine } = createServiceLog({
    level: config.logLevel,
    ...(cluster.isWorker ? { worker: cluster.worker!.id } : {}),
    destination: lines,
  });
  const flush = () => {
    try {
      lines.flushSync();
    } catch {
      // stdout gone (EPIPE, closed): nothing left to flush to
    }
  };
  const { graceMs } = config;
  const load = { entrypoint: config.entrypoint, memoize: config.memoize };
  const anyBundleSource =
    config.trustBundleFiles.length > 0 || config.trustBundleEndpoints.length > 0 || config.spiffe !== undefined;
  if (cluster.isWorker) {
    // Its trust bundles come from the primary too (read and fetched there once for every worker).
    const trustBundles = anyBundleSource ? new X509BundleSet() : undefined;
    // Forked by the primary below (same argv): its policies come from the primary, not from a source.
    // Its shadow is evaluated off its serving loop, as one process does it.
    const shadowThread =
      config.shadowPolicy === undefined
        ? undefined
        : new ShadowThread({
            load,
            heapMb: config.sandbox.heapMb,
            onProblem: (message) => logger.error({ policy: 'shadow' }, message),
          });
    return runWorker({
      ...(shadowThread
        ? { onShadowBundle: (b) => shadowThread.setPolicy({ ...b, version: b.revision, sandboxMs: 0 }) }
        : {}),
      log: logger,
      flush,
      dropped: () => dropped,
      load,
      sandbox: config.sandbox,
      graceMs,
      shadow: config.shadowPolicy !== undefined,
      ...(trustBundles ? { trustBundles } : {}),
      start: (parts) =>
        startListeners(config, logger, {
          policies: parts.policies,
          ...(parts.shadowPolicies ? { shadowPolicies: parts.shadowPolicies } : {}),
          ...(shadowThread ? { shadowOptions: { thread: shadowThread } } : {}),
          metrics: parts.metrics,
          ready: parts.ready,
          readyDetail: parts.readyDetail,
          routes: () => ({ 'GET /metrics': parts.metricsRoute }),
          servingMessage: 'worker serving',
          decisionLine,
          ...(trustBundles ? { trustBundles } : {}),
        }),
    });
  }
  const workers = config.workers ?? availableCpus();
  const location = config.policy ?? defaultPolicyLocation();
  const metrics = new ServiceMetrics({ defaultMetrics: true });
  let live: PolicyStore | undefined;
  let shadow: PolicyStore | undefined;
  let trust: TrustBundles | undefined;
  const pool =
    workers > 1
      ? new WorkerPool({
          workers,
          log: logger,
          sink: destination,
          metrics,
          readyDetail: () => ({
            ...(live ? reloadStatus(live, shadow) : {}),
            ...(trust ? { trust_bundles: trust.statuses() } : {}),
          }),
        })
      : undefined;
  // Signatures are checked where bundles are fetched: here. A worker loads the bytes this process
  // accepted, handed over its private IPC channel, and does not check them again.
  const verification = verificationOption(config.verification);
  const storeLoad = { ...load, ...verification };
  const openStore = async (where: string, role: 'live' | 'shadow', casesPath?: string) => {
    const source = await openBundleSource(where, {
      ...(config.pollMs !== undefined ? { pollMs: config.pollMs } : {}),
      ...(config.bundleServer ? { auth: config.bundleServer } : {}),
      entrypoint: config.entrypoint,
    });
    return PolicyStore.open(source, {
      role,
      log: logger,
      metrics,
      load: { ...storeLoad, keepBundle: pool !== undefined },
      sandbox: config.sandbox,
      casesPath,
      // The shadow never answers: a shadow that cannot be loaded is logged and retried, never fatal.
      waitForFirst: source.kind === 'url' || role === 'shadow',
      ...(pool ? { distribute: (policy: LoadedPolicy) => pool.offer(role, policy) } : {}),
    });
  };
  try {
    live = await openStore(location, 'live', config.policyCases);
  } catch (err) {
    logger.fatal({ policy_source: location, err: errorMessage(err) }, 'policy failed to load; not serving');
    flush();
    return 1;
  }
  if (config.shadowPolicy !== undefined) {
    shadow = await openStore(config.shadowPolicy, 'shadow').catch((err: unknown) => {
      logger.error(
        { policy: 'shadow', policy_source: config.shadowPolicy, err: errorMessage(err) },
        'shadow policy unavailable; serving without it',
      );
      return undefined;
    });
  }
  if (pool) {
    // Read, fetched and validated once, here, as one process does; every worker gets each accepted set.
    const trustSet = new X509BundleSet();
    let sources: TrustSources | undefined;
    if (anyBundleSource) {
      try {
        sources = await openTrustSources(config, logger, {
          svid: false,
          bundles: trustSet,
          onStatus: () => pool.refresh(),
        });
      } catch (err) {
        if (!(err instanceof StartError)) throw err;
        logger.fatal({ ...err.fields, err: err.message }, err.what);
        flush();
        return 1;
      }
      trust = sources.trust;
    }
    const code = await runPrimary({
      pool,
      live,
      shadow,
      log: logger,
      flush,
      dropped: () => dropped,
      graceMs,
      workers,
      ...(sources
        ? { trust: { set: trustSet, start: () => sources.trust?.start(), stop: () => sources.close() } }
        : {}),
    });
    setTimeout(() => process.exit(code), 200).unref();
    return code;
  }
  const shadowThread =
    shadow &&
    ShadowThread.following(shadow, {
      load: storeLoad,
      heapMb: config.sandbox.heapMb,
      onProblem: (message) => logger.error({ policy: 'shadow' }, message),
    });
  const liveStore = live;
  let running: { service: RunningService; close(): void };
  try {
    running = await startListeners(config, logger, {
      ...(live.current ? { policy: live.current } : {}),
      policies: live,
      shadowPolicies: shadow,
      ...(shadowThread ? { shadowOptions: { thread: shadowThread } } : {}),
      metrics,
      readyDetail: () => reloadStatus(liveStore, shadow),
      decisionLine,
    });
  } catch (err) {
    if (!(err instanceof StartError)) throw err;
    logger.fatal({ ...err.fields, err: err.message }, err.what);
    flush();
    return 1;
  }
  const { service } = running;
  live.start();
  shadow?.start();
  process.on('SIGHUP', () => {
    void liveStore.reload('SIGHUP', { force: true });
    void shadow?.reload('SIGHUP', { force: true });
  });
  const code = await new Promise<number>((resolveStop) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        // A second signal: out now, with whatever the log has buffered.
        logger.warn({ signal }, 'second signal; exiting at once');
        flush();
        process.exit(130);
      }
      stopping = true;
      logger.info(
        { signal, grace_ms: graceMs },
        'shutting down: not ready, no new connections, finishing accepted checks',
      );
      // The grace period bounds the listeners' drain; this bounds everything else (a stuck flush).
      setTimeout(() => {
        flush();
        process.exit(1);
      }, graceMs + 2000).unref();
      liveStore.stop();
      shadow?.stop();
      void service.close(graceMs).then(() => {
        running.close();
        logger.info({ dropped_log_lines: dropped }, 'stopped');
        flush();
        resolveStop(0);
      });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
  // Anything else still holding the event loop (a policy watcher, a client's half-open socket) must not
  // keep a stopped service alive.
  setTimeout(() => process.exit(code), 200).unref();
  return code;
}

/** TLS files or trust bundles not usable: nothing listens, the message says which. */
class StartError extends Error {
  constructor(
    /** what was not usable: the fatal log line's message */
    readonly what: string,
    message: string,
    /** more fields for the fatal line */
    readonly fields: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

/**
 * The listeners around a policy source, as one process or one worker runs them: TLS files (watched)
 * and trust bundles, and the service with every flag that shapes it. Throws StartError when either is unusable.
 */
async function startListeners(
  config: ServeConfig,
  logger: pino.Logger,
  parts: Pick<ServiceOptions, 'policies' | 'metrics' | 'readyDetail'> &
    Partial<
      Pick<
        ServiceOptions,
        'policy' | 'shadowPolicies' | 'shadowOptions' | 'ready' | 'routes' | 'servingMessage' | 'decisionLine'
      >
    > & {
      /** a worker's: the bundle set the primary feeds (no files read, no endpoint fetched here) */
      trustBundles?: X509BundleSet;
    },
): Promise<{ service: RunningService; close(): void }> {
  const tlsFlags = config.tls;
  const { allowedCallers } = config;
  let certificates: CertificateFiles | undefined;
  try {
    certificates =
      tlsFlags &&
      new CertificateFiles(tlsFlags, {
        onReload: () => logger.info({ tls_cert: tlsFlags.certFile }, 'TLS certificate files reloaded'),
        onError: (reason) =>
          logger.error({ reason }, 'TLS certificate files changed but are not usable; keeping the previous ones'),
      });
  } catch (err) {
    throw new StartError('TLS files not usable; not serving', errorMessage(err));
  }
  // One process reads and polls the bundle sources itself; a worker's set is fed by the primary, and its
  // Workload API stream gives it only its own SVID.
  const { trustBundles: fed, ...serviceParts } = parts;
  const bundles = fed ?? new X509BundleSet();
  let sources: TrustSources;
  try {
    sources = await openTrustSources(config, logger, { svid: true, ...(fed ? {} : { bundles }) });
  } catch (err) {
    certificates?.close();
    throw err;
  }
  const { trust, workload } = sources;
  const closeAll = () => {
    sources.close();
    certificates?.close();
  };
  const chainVerifier =
    trust || workload || fed ? new ChainVerifier(bundles, { cacheEntries: config.chainCacheEntries }) : undefined;
  const listenerTls: TlsMaterialSource | undefined = certificates ?? workload?.tls;
  const { readyDetail, ready } = serviceParts;
  const ownSvid = workload;
  const service = await startService({
    grpcAddr: config.grpcAddr,
    httpAddr: config.httpAddr,
    ...(config.healthAddr !== undefined ? { healthAddr: config.healthAddr } : {}),
    ...serviceParts,
    ready: () => (ready?.() ?? true) && (ownSvid?.svidCurrent() ?? true),
    readyDetail: () => ({
      ...readyDetail?.(),
      ...(trust ? { trust_bundles: trust.statuses() } : {}),
      ...(ownSvid ? { own_svid: ownSvidStatus(ownSvid) } : {}),
    }),
    logger,
    trustedIdentityHeader: config.trustedIdentityHeader,
    trustedProxies: config.trustedProxies,
    sidebandCacheTtlS: config.sidebandCacheTtlS,
    tls: listenerTls && { files: listenerTls, allowedCallers },
    maxReceiveMessageBytes: config.maxReceiveMessageBytes,
    checkTransport: config.checkTransport,
    checkDeadlineMs: config.checkDeadlineMs,
    ...(chainVerifier ? { chainVerifier, verifyEnvoyChain: config.verifyPeerChain } : {}),
  });
  trust?.start();
  if (ownSvid) watchOwnSvidExpiry(ownSvid, service, logger);
  if (allowedCallers.length === 0 && (tlsFlags?.clientCaFile !== undefined || workload !== undefined)) {
    logger.warn('no --allowed-caller: any client certificate from the client CA may ask for decisions');
  }
  return { service, close: closeAll };
}

interface TrustSources {
  /** `--trust-bundle`, `--trust-bundle-url` */
  trust?: TrustBundles;
  /** `--spiffe-socket` */
  workload?: X509Source;
  close(): void;
}

/**
 * The bundle sources feeding `bundles`: files and endpoints first (they keep the trust domains they name),
 * then the Workload API's bundles under its own origin. One process opens them for itself; the primary of
 * `serve --workers N` for every worker (it sends each change on). A worker opens only the Workload API,
 * for its own SVID (`svid`, logged as it rotates). Throws StartError when a source is not usable.
 */
async function openTrustSources(
  config: ServeConfig,
  logger: pino.Logger,
  opts: { svid: boolean; bundles?: X509BundleSet; onStatus?: () => void },
): Promise<TrustSources> {
  const { bundles } = opts;
  let trust: TrustBundles | undefined;
  let workload: X509Source | undefined;
  const close = () => {
    trust?.stop();
    workload?.close();
  };
  if (bundles && (config.trustBundleFiles.length > 0 || config.trustBundleEndpoints.length > 0)) {
    try {
      trust = await TrustBundles.open(bundles, config.trustBundleFiles, config.trustBundleEndpoints, {
        log: logger,
        ...(config.pollMs !== undefined ? { filePollMs: config.pollMs } : {}),
        ...(opts.onStatus ? { onStatus: opts.onStatus } : {}),
      });
    } catch (err) {
      throw new StartError('trust bundle not usable; not serving', errorMessage(err));
    }
  }
  if (config.spiffe && (opts.svid || bundles)) {
    // Without its SVID the service cannot authenticate itself or its callers: it does not start (and a
    // supervisor restarts it) rather than serve something weaker. After the first SVID, an agent that
    // goes away only delays rotation; the last SVID keeps serving while the client reconnects.
    const { socket, waitMs } = config.spiffe;
    let lastSvid = '';
    const opened = await X509Source.open(socket, {
      waitMs,
      onUpdate: (ctx) => {
        bundles?.replace('workload-api', ctx.bundles.values());
        if (!opts.svid) return;
        const svid = ctx.svids[0]!;
        const serial = svid.chain[0]!.serialNumber;
        if (serial === lastSvid) return;
        logger.info(
          { spiffe_id: svid.spiffeId, serial, not_after: svid.notAfter.toISOString(), rotated: lastSvid !== '' },
          'own X.509-SVID from the Workload API',
        );
        lastSvid = serial;
      },
      onError: (reason) => logger.warn({ spiffe_socket: socket, reason }, 'Workload API'),
    });
    if (!opened.ok) {
      close();
      throw new StartError('no SVID from the Workload API; not serving', opened.reason, { spiffe_socket: socket });
    }
    workload = opened.value;
  }
  return { ...(trust ? { trust } : {}), ...(workload ? { workload } : {}), close };
}

function ownSvidStatus(source: X509Source): Record<string, unknown> {
  const { spiffeId, notAfter } = source.svid;
  return { spiffe_id: spiffeId, not_after: notAfter.toISOString(), expired: !source.svidCurrent() };
}

/**
 * Readiness changes by itself when the own SVID expires with no update in sight: grpc.health.v1 Watch
 * streams are told at that moment (a timer at notAfter, re-armed on every update), not at the next poll.
 */
function watchOwnSvidExpiry(source: X509Source, service: RunningService, logger: pino.Logger): void {
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(timer);
    // setTimeout takes at most 2^31-1 ms (24.8 days): a longer wait is re-armed when it fires.
    const wait = Math.min(Math.max(0, source.svid.notAfter.getTime() - Date.now() + 1), 2 ** 31 - 1);
    timer = setTimeout(() => {
      if (!source.svidCurrent()) {
        logger.error(
          { spiffe_id: source.svid.spiffeId, not_after: source.svid.notAfter.toISOString() },
          'own X.509-SVID expired and no update came from the Workload API; not ready',
        );
      }
      service.refreshHealth();
      if (source.svidCurrent()) arm();
    }, wait).unref();
  };
  source.subscribe(() => {
    service.refreshHealth();
    arm();
  });
  arm();
}

/** `eval --trust-bundle`: the same bundle files and chain verification as `serve`, read once. */
async function evalChainVerifier(flags: string[]): Promise<ChainVerifier | undefined> {
  if (flags.length === 0) return undefined;
  const files = flags.map((text) => {
    const f = parseTrustBundleFlag(text);
    if (!f.ok) throw new UsageError(f.reason);
    return f.value;
  });
  const bundles = new X509BundleSet();
  await TrustBundles.open(bundles, files, [], { log: pino({ level: 'silent' }) });
  return new ChainVerifier(bundles, { cacheEntries: 0 });
}

async function evaluate(argv: string[]): Promise<number> {
  const { values } = args(argv, {
    'spiffe-id': { type: 'string' },
    cert: { type: 'string' },
    input: { type: 'string' },
    destination: { type: 'string' },
    policy: { type: 'string' },
    entrypoint: { type: 'string', default: DEFAULT_ENTRYPOINT },
    ...parseArgsOptions(VERIFICATION_OPTIONS),
    'trust-bundle': { type: 'string', multiple: true },
  });
  const given = ['spiffe-id', 'cert', 'input'].filter((k) => values[k] !== undefined);
  if (given.length !== 1) throw new UsageError('eval needs exactly one of --spiffe-id, --cert, --input');
  const policy = await loadPolicy((values.policy as string | undefined) ?? defaultPolicyLocation(), {
    entrypoint: values.entrypoint as string,
    ...verificationOption(verificationValues(values)),
  });
  const chainVerifier = await evalChainVerifier((values['trust-bundle'] as string[] | undefined) ?? []);
  const authorizer = new Authorizer({
    policies: new MutablePolicySource(policy),
    sink: () => {},
    ...(chainVerifier ? { chainVerifier } : {}),
  });
  let decision: Decision;
  if (values.input !== undefined) {
    let doc: unknown;
    try {
      doc = JSON.parse(readFileSync(values.input as string, 'utf8'));
    } catch (err) {
      throw new UsageError(`--input ${String(values.input)}: ${errorMessage(err)}`);
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc))
      throw new UsageError('--input must hold a JSON object');
    decision = authorizer.checkCli({ input: doc as Record<string, unknown> });
  } else if (values.cert !== undefined) {
    let pem: string;
    try {
      pem = readFileSync(values.cert as string, 'utf8');
    } catch (err) {
      throw new UsageError(`--cert ${String(values.cert)}: ${errorMessage(err)}`);
    }
    decision = authorizer.checkCli({ certificatePem: pem, destination: values.destination as string | undefined });
  } else {
    decision = authorizer.checkCli({
      spiffeId: values['spiffe-id'] as string,
      destination: values.destination as string | undefined,
    });
  }
  process.stdout.write(`${JSON.stringify(decisionJson(decision), null, 2)}\n`);
  return 0;
}

async function test(argv: string[]): Promise<number> {
  const { values } = args(argv, {
    policy: { type: 'string', default: join(packageRoot, 'policies') },
    cases: { type: 'string' },
    entrypoint: { type: 'string', default: DEFAULT_ENTRYPOINT },
    ...parseArgsOptions(VERIFICATION_OPTIONS),
  });
  const dir = values.policy as string;
  const policy = await loadPolicy(dir, {
    entrypoint: values.entrypoint as string,
    ...verificationOption(verificationValues(values)),
  });
  const report = await runPolicyCases((values.cases as string | undefined) ?? dir, policy, decideCase);
  process.stdout.write(report.text.endsWith('\n') ? report.text : `${report.text}\n`);
  const opa = await runOpaTest(dir);
  process.stdout.write(opa.text.endsWith('\n') ? opa.text : `${opa.text}\n`);
  return report.failed === 0 && opa.ok ? 0 : 1;
}

async function build(argv: string[]): Promise<number> {
  const { values, positionals } = args(
    argv,
    {
      out: { type: 'string', default: 'bundle.tar.gz' },
      entrypoint: { type: 'string', default: DEFAULT_ENTRYPOINT },
      revision: { type: 'string' },
      'signing-key': { type: 'string' },
      'signing-alg': { type: 'string', default: DEFAULT_SIGNING_ALG },
    },
    true,
  );
  if (positionals.length > 1) throw new UsageError('build takes one POLICY_DIR');
  const dir = positionals[0] ?? join(packageRoot, 'policies');
  const revision = values.revision as string | undefined;
  const keyFile = values['signing-key'] as string | undefined;
  const signing =
    keyFile === undefined ? undefined : readKey('--signing-key', keyFile, values['signing-alg'] as string, 'sign');
  mkdirSync(dirname(resolve(values.out as string)), { recursive: true });
  await buildWasmBundle(dir, values.out as string, values.entrypoint as string, {
    ...(revision === undefined ? {} : { revision }),
    ...(signing ? { signing } : {}),
  });
  process.stderr.write(`egress-authz: built ${String(values.out)} from ${dir}\n`);
  return 0;
}

/** A key file given on the command line, read and checked now: a bad key is a usage error, not a refusal later. */
function readKey(flag: string, file: string, alg: string, use: 'sign' | 'verify'): BundleSigningKey {
  let key: Uint8Array;
  try {
    key = readFileSync(file);
  } catch (err) {
    throw new UsageError(`${flag} ${file}: ${errorMessage(err)}`);
  }
  const problem = keyProblem({ key, alg }, use);
  if (problem) throw new UsageError(`${flag} ${file}: ${problem}`);
  return { key, alg };
}

function verificationValues(values: Values): VerificationFlags | undefined {
  try {
    return verificationFlags(values);
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
}

function verificationOption(flags: VerificationFlags | undefined): { verification?: BundleVerification } {
  if (!flags) return {};
  const key = readKey('--verification-key', flags.keyFile, flags.alg, 'verify');
  return {
    verification: {
      ...key,
      ...(flags.keyId !== undefined ? { keyId: flags.keyId } : {}),
      ...(flags.scope !== undefined ? { scope: flags.scope } : {}),
    },
  };
}

function inspect(argv: string[]): Promise<number> {
  const { values, positionals } = args(argv, { json: { type: 'boolean', default: false } }, true);
  if (positionals.length !== 1) throw new UsageError('inspect takes one certificate FILE');
  const file = positionals[0]!;
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`${file}: ${errorMessage(err)}`);
  }
  const report = inspectCertificate(pem);
  process.stdout.write(`${values.json ? JSON.stringify(report, null, 2) : formatReport(file, report)}\n`);
  return Promise.resolve(report.valid ? 0 : 1);
}

const commands: Record<string, (argv: string[]) => Promise<number>> = { serve, eval: evaluate, test, build, inspect };

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(USAGE);
    return name === undefined ? 2 : 0;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`egress-authz: unknown command "${name}"\n\n${USAGE}`);
    return 2;
  }
  try {
    return await command(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`egress-authz ${name}: ${err.message}\n`);
      return 2;
    }
    process.stderr.write(`egress-authz ${name}: ${errorMessage(err)}\n`);
    return 1;
  }
}

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`egress-authz: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
