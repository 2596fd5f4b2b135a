// Starts the decision service: both listeners around one Authorizer. Used by `egress-authz serve` and
// by tests in-process, so what the tests run is what users run.
import type http from 'node:http';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { Authorizer } from './authorizer.js';
import type { Decision, PolicySource } from './decision.js';
import type { DecisionLogEntry } from './decision-log.js';
import { bindGrpcServer, createGrpcServer } from './grpc-server.js';
import { createHttpServer, listen, type RouteHandler } from './http-server.js';
import { MeteredAuthorizer, metricsRoute, ServiceMetrics, timedRoute } from './metrics.js';
import type { LoadedPolicy } from './policy.js';
import { ShadowEvaluator, type ShadowEvaluatorOptions } from './shadow-policy.js';

export interface ServiceOptions {
  grpcAddr: string;
  httpAddr: string;
  policy: LoadedPolicy;
  logger: Logger;
  trustedIdentityHeader?: string;
  /** extra HTTP routes ("POST /v1/sideband" …) */
  routes?: (authorizer: Authorizer) => Record<string, RouteHandler>;
  /** extra observer of every decision (metrics, tests) */
  onDecision?: (entry: DecisionLogEntry, decision: Decision) => void;
  /** where the live policy is read from (a PolicyStore that hot-reloads it); default: `policy`, fixed */
  policies?: MutablePolicySource;
  /** a candidate evaluated beside the live policy, never affecting the answer */
  shadowPolicies?: PolicySource;
  shadowOptions?: Partial<ShadowEvaluatorOptions>;
  /** default: a fresh registry per service */
  metrics?: ServiceMetrics;
  /** more fields for the /readyz body (last reload outcome, shadow revision) */
  readyDetail?: () => Record<string, unknown>;
}

export interface RunningService {
  grpcPort: number;
  httpPort: number;
  authorizer: Authorizer;
  policies: MutablePolicySource;
  metrics: ServiceMetrics;
  grpcServer: grpc.Server;
  httpServer: http.Server;
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
  const shadow = opts.shadowPolicies && new ShadowEvaluator(opts.shadowPolicies, { log, metrics, ...opts.shadowOptions });
  let stopping = false;
  const authorizer: Authorizer = new MeteredAuthorizer({
    policies,
    trustedIdentityHeader: opts.trustedIdentityHeader,
    sink: (entry, decision) => {
      if (entry.policy_error !== undefined) log.error(entry, 'decision');
      else log.info(entry, 'decision');
      metrics.observeDecision(decision, policies.current);
      opts.onDecision?.(entry, decision);
    },
    shadow: shadow?.observe,
  }, metrics);
  const routes = opts.routes?.(authorizer) ?? {};
  const sideband = routes['POST /v1/sideband'];
  if (sideband) routes['POST /v1/sideband'] = timedRoute(sideband, (s) => metrics.observeSidebandSeconds(s));
  routes['GET /metrics'] ??= metricsRoute(metrics);
  const grpcServer = createGrpcServer({
    authorizer,
    onInternalError: (err) => log.error({ err }, 'check failed inside the pipeline; answered deny'),
  });
  const httpServer = createHttpServer({
    ready: () => ({
      ready: !stopping && policies.current !== undefined,
      detail: { policy_revision: policies.current?.revision ?? '', ...opts.readyDetail?.() },
    }),
    routes,
  });
  const grpcPort = await bindGrpcServer(grpcServer, opts.grpcAddr);
  let httpPort: number;
  try {
    httpPort = await listen(httpServer, opts.httpAddr);
  } catch (err) {
    grpcServer.forceShutdown();
    throw err;
  }
  log.info({ grpc_port: grpcPort, http_port: httpPort, policy_revision: opts.policy.revision, policy_source: opts.policy.source }, 'egress-authz serving');

  return {
    grpcPort,
    httpPort,
    authorizer,
    policies,
    metrics,
    grpcServer,
    httpServer,
    async close(graceMs = 5000) {
      stopping = true;
      const grpcDone = new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          grpcServer.forceShutdown();
          resolve();
        }, graceMs);
        grpcServer.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      const httpDone = new Promise<void>((resolve) => {
        httpServer.close(() => resolve());
        httpServer.closeIdleConnections();
        setTimeout(() => {
          httpServer.closeAllConnections();
          resolve();
        }, graceMs).unref();
      });
      await Promise.all([grpcDone, httpDone]);
    },
  };
}
