// Starts the decision service: both listeners around one Authorizer. Used by `egress-authz serve` and
// by tests in-process, so what the tests run is what users run.
import type http from 'node:http';
import type { Server as TlsServer } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { Authorizer, type AuthorizerOptions } from '../decision/authorizer.js';
import type { Decision, PolicySource } from '../decision/decision.js';
import type { DecisionLogEntry } from '../decision/decision-log.js';
import { addGrpcHealth } from '../transport/grpc-health.js';
import { bindGrpcServer, checkTransportOf, createGrpcServer, type CheckTransport } from '../transport/grpc-server.js';
import { createHttpServer, listen, type RouteHandler } from '../transport/http-server.js';
import { metricsRoute, pipelineMetrics, ServiceMetrics, timedRoute } from './metrics.js';
import { footprintFields } from '../policy/input-footprint.js';
import type { LoadedPolicy } from '../policy/policy.js';
import { grpcServerCredentials, httpsServerOptions, type CallerPattern, type PeerPolicy } from '../transport/tls.js';
import type { TlsMaterialSource } from '../common/tls-material.js';
import { configureSidebandServer, sidebandRoutes } from '../transport/sideband.js';
import { ShadowEvaluator, type ShadowEvaluatorOptions } from '../lifecycle/shadow-policy.js';
import { DEFAULT_GRACE_MS } from './config.js';

export interface ServiceOptions {
  grpcAddr: string;
  httpAddr: string;
  /** the policy to serve; without it (and without `policies` holding one) the service starts not ready */
  policy?: LoadedPolicy;
  logger: Logger;
  /** writes a decision's log line in place of `logger.info`/`error` (the serve command's, service-log.ts) */
  decisionLine?: (entry: DecisionLogEntry) => void;
  trustedIdentityHeader?: string;
  /** upper bound of the sideband's X-Egress-Cache-Ttl, seconds (default 10; 0: the iRule never caches) */
  sidebandCacheTtlS?: number;
  /** see AuthorizerOptions.trustedProxies */
  trustedProxies?: readonly string[];
  /** extra HTTP routes, besides the BIG-IP sideband (`POST /v1/sideband`) that every service has */
  routes?: (authorizer: Authorizer) => Record<string, RouteHandler>;
  /** extra observer of every decision (metrics, tests) */
  onDecision?: (entry: DecisionLogEntry, decision: Decision) => void;
  /** TLS on both listeners (plain text without it); with a client CA, mTLS and the allowed callers */
  tls?: { files: TlsMaterialSource; allowedCallers?: CallerPattern[] };
  maxReceiveMessageBytes?: number;
  /** who answers Check calls (grpc-server.ts); default the stream path */
  checkTransport?: CheckTransport;
  /** see AuthorizerOptions.checkDeadlineMs */
  checkDeadlineMs?: number;
  /** see AuthorizerOptions.chainVerifier / verifyEnvoyChain: trust bundles for peer chains */
  chainVerifier?: AuthorizerOptions['chainVerifier'];
  verifyEnvoyChain?: boolean;
  /** where the live policy is read from (a PolicyStore that hot-reloads it); default: `policy`, fixed */
  policies?: MutablePolicySource;
  /** a candidate evaluated beside the live policy, never affecting the answer */
  shadowPolicies?: PolicySource;
  shadowOptions?: Partial<ShadowEvaluatorOptions>;
  /** default: a fresh registry per service */
  metrics?: ServiceMetrics;
  /** more fields for the /readyz body (last reload outcome, shadow revision) */
  readyDetail?: () => Record<string, unknown>;
  /**
   * A plain-HTTP listener with /healthz, /readyz and /metrics only: for kubelet probes and Prometheus,
   * which cannot present a client certificate when the main listeners require one. It answers no
   * decision, so it needs no caller check.
   */
  healthAddr?: string;
  /** more to readiness than a policy: a worker of `serve --workers` is ready when the whole service is */
  ready?: () => boolean;
  /** the startup log line's message (workers say "worker serving"; the primary says the usual) */
  servingMessage?: string;
}

export interface RunningService {
  grpcPort: number;
  httpPort: number;
  authorizer: Authorizer;
  policies: MutablePolicySource;
  metrics: ServiceMetrics;
  grpcServer: grpc.Server;
  httpServer: http.Server;
  /** the probe listener's port when `healthAddr` was given */
  healthPort?: number;
  /** what the startup log line said (ports, policy, TLS mode, allowed callers) */
  servingFields: Record<string, unknown>;
  /** re-reads readiness for grpc.health.v1 now (its Watch streams hear of a change at once) */
  refreshHealth(): void;
  /** stop accepting, let in-flight checks finish (bounded), close both listeners */
  close(graceMs?: number): Promise<void>;
}

export class MutablePolicySource implements PolicySource {
  current: LoadedPolicy | undefined;
  constructor(initial: LoadedPolicy | undefined) {
    this.current = initial;
  }
}

export async function startService(opts: ServiceOptions): Promise<RunningService> {
  const log = opts.logger;
  const policies = opts.policies ?? new MutablePolicySource(opts.policy);
  const metrics = opts.metrics ?? new ServiceMetrics();
  if (policies.current) metrics.policyRevision('live', policies.current.revision);
  const shadow =
    opts.shadowPolicies && new ShadowEvaluator(opts.shadowPolicies, { log, metrics, ...opts.shadowOptions });
  let stopping = false;
  const isReady = () => !stopping && policies.current !== undefined && (opts.ready?.() ?? true);
  const tls = opts.tls;
  const peerPolicy: PeerPolicy | undefined = tls && {
    requireClientCert: tls.files.current.ca !== undefined,
    allowedCallers: tls.allowedCallers ?? [],
  };
  const onPeerRefused = (v: { reason: string }, peer: string) =>
    log.warn({ peer, reason: v.reason }, 'caller refused before any decision');
  const authorizer = new Authorizer({
    policies,
    trustedIdentityHeader: opts.trustedIdentityHeader,
    trustedProxies: opts.trustedProxies,
    checkDeadlineMs: opts.checkDeadlineMs,
    ...(opts.chainVerifier
      ? { chainVerifier: opts.chainVerifier, verifyEnvoyChain: opts.verifyEnvoyChain === true }
      : {}),
    sink: (entry, decision) => {
      if (opts.decisionLine) opts.decisionLine(entry);
      else if (entry.policy_error !== undefined) log.error(entry, 'decision');
      else log.info(entry, 'decision');
      opts.onDecision?.(entry, decision);
    },
    shadow: shadow?.observe,
    observer: pipelineMetrics(metrics, policies),
  });
  const routes = { ...sidebandRoutes(authorizer, { cacheTtlS: opts.sidebandCacheTtlS }), ...opts.routes?.(authorizer) };
  const sideband = routes['POST /v1/sideband'];
  if (sideband) routes['POST /v1/sideband'] = timedRoute(sideband, (s) => metrics.observeSidebandSeconds(s));
  routes['GET /metrics'] ??= metricsRoute(metrics);
  const grpcServer = createGrpcServer({
    authorizer,
    onInternalError: (err) => log.error({ err }, 'check failed inside the pipeline; answered deny'),
    maxReceiveMessageLength: opts.maxReceiveMessageBytes,
    ...(opts.checkTransport ? { checkTransport: opts.checkTransport } : {}),
    peerPolicy,
    onPeerRefused,
  });
  const health = addGrpcHealth(grpcServer, isReady);
  const httpServer = createHttpServer({
    ready: () => ({
      ready: isReady(),
      detail: { policy_revision: policies.current?.revision ?? '', ...opts.readyDetail?.() },
    }),
    routes,
    tls: tls && httpsServerOptions(tls.files),
    peerPolicy,
    onPeerRefused,
  });
  configureSidebandServer(httpServer);
  // New handshakes on the HTTPS listener use rotated certificates; established connections keep theirs.
  const unsubscribe = tls?.files.subscribe(() =>
    (httpServer as unknown as TlsServer).setSecureContext(httpsServerOptions(tls.files)),
  );
  const grpcPort = await bindGrpcServer(grpcServer, opts.grpcAddr, tls ? grpcServerCredentials(tls.files) : undefined);
  const readiness = () => ({
    ready: isReady(),
    detail: { policy_revision: policies.current?.revision ?? '', ...opts.readyDetail?.() },
  });
  const healthServer =
    opts.healthAddr === undefined
      ? undefined
      : createHttpServer({ ready: readiness, routes: { 'GET /metrics': routes['GET /metrics'] } });
  let httpPort: number;
  let healthPort: number | undefined;
  try {
    httpPort = await listen(httpServer, opts.httpAddr);
    if (healthServer) healthPort = await listen(healthServer, opts.healthAddr!);
  } catch (err) {
    grpcServer.forceShutdown();
    httpServer.close();
    unsubscribe?.();
    throw err;
  }
  const servingFields = {
    grpc_port: grpcPort,
    http_port: httpPort,
    ...(healthPort !== undefined ? { health_port: healthPort } : {}),
    policy_revision: policies.current?.revision ?? '',
    policy_source: policies.current?.source ?? '',
    ...(policies.current ? footprintFields(policies.current.inputFootprint) : {}),
    tls: !tls ? 'off' : peerPolicy?.requireClientCert ? 'mtls' : 'server-only',
    check_transport: checkTransportOf(grpcServer),
    allowed_callers: peerPolicy?.allowedCallers.map((p) => p.id.uri + (p.subtree ? '/*' : '')),
  };
  log.info(servingFields, opts.servingMessage ?? 'egress-authz serving');

  return {
    grpcPort,
    httpPort,
    authorizer,
    policies,
    metrics,
    grpcServer,
    httpServer,
    ...(healthPort !== undefined ? { healthPort } : {}),
    servingFields,
    refreshHealth: () => health.refresh(),
    async close(graceMs = DEFAULT_GRACE_MS) {
      // Not ready first (health NOT_SERVING, /readyz 503, Watch streams ended), then stop accepting and
      // let what was accepted finish; whatever is still open when the grace period ends is cut.
      stopping = true;
      health.shutdown();
      unsubscribe?.();
      // Keep-alive clients (the BIG-IP keeps its sideband connection) are told to reconnect elsewhere.
      httpServer.prependListener('request', (_req, res) => res.setHeader('connection', 'close'));
      // The probe listener drains together with the others: it keeps saying "not ready" meanwhile.
      await Promise.all([
        drain(grpcServer, graceMs),
        drain(httpServer, graceMs),
        healthServer && drain(healthServer, graceMs),
      ]);
    },
  };
}

/** Stop accepting, let what was accepted finish, and cut whatever is still open after `graceMs`. */
function drain(server: grpc.Server | http.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const cut = setTimeout(() => {
      if (server instanceof grpc.Server) server.forceShutdown();
      else server.closeAllConnections();
      resolve();
    }, graceMs);
    cut.unref();
    const finished = () => {
      clearTimeout(cut);
      resolve();
    };
    if (server instanceof grpc.Server) {
      server.tryShutdown(finished);
    } else {
      server.close(finished);
      server.closeIdleConnections();
    }
  });
}
