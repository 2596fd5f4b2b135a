// Prometheus metrics for the decision service (prom-client, one registry per service). Label values
// come from small fixed sets or from the policy's own tenant list, never from raw request data, so a
// caller cannot grow the series count: reasons are classified, namespaces are bounded (see tenantLabels).
// The series updated on the Check path are bound once and add to prom-client's entry directly
// (metric-series.ts): an update is a property read and an add, no label hashing.
import type http from 'node:http';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { PipelineObserver } from '../decision/authorizer.js';
import { REASON_CLASSES, type Decision, type PolicySource, type ReasonClass } from '../decision/decision.js';
import type { FailureCode } from '../common/result.js';
import type { PolicyRole, PolicyStoreMetrics } from '../lifecycle/policy-store.js';
import type { ShadowDisagreementKind, ShadowMetrics } from '../lifecycle/shadow-policy.js';
import { chainCacheStats } from '../identity/chain-verify.js';
import { x509SvidCacheStats, x509SvidIdMemoStats, x509SvidReferenceFallbacks } from '../identity/x509-svid.js';
import { checkRequestReferenceDecodes } from '../transport/check-request-wire.js';
import { checksAnsweredByGrpcJs } from '../transport/grpc-server.js';
import { memoTotals, policyMemoBytes, policyMemoMaxBytes, type LoadedPolicy } from '../policy/policy.js';
import { summarisePolicyData } from '../policy/policy-summary.js';
import { counterSeries, histogramSeries, type CounterSeries, type HistogramSeries } from './metric-series.js';

/** Why the identity step refused a peer, coarsely; the decision log has the precise reason. */
export const IDENTITY_REJECTION_CLASSES = [
  'missing',
  'pem',
  'svid',
  'validity',
  'spiffe_id',
  'mismatch',
  'chain',
  'other',
] as const;
export type IdentityRejectionClass = (typeof IDENTITY_REJECTION_CLASSES)[number];

const TRANSPORTS = ['envoy', 'sideband', 'cli'] as const;

/** At most this many distinct {namespace, snat_pool, decision} series; the rest are counted as "_other". */
const DEFAULT_MAX_TENANT_SERIES = 500;
export const OTHER_LABEL = '_other';
export const NO_NAMESPACE_LABEL = '_none';

// A Check takes tens of microseconds in-process; the buckets resolve that range and a slow tail.
const LATENCY_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
const EXT_AUTHZ_LABELS = {
  grpc_service: 'envoy.service.auth.v3.Authorization',
  grpc_method: 'Check',
  grpc_type: 'unary',
};

export function reasonClass(d: Decision): ReasonClass {
  return d.reason_class;
}

export function identityRejectionClass(code: FailureCode | undefined): IdentityRejectionClass {
  return (IDENTITY_REJECTION_CLASSES as readonly string[]).includes(code ?? '')
    ? (code as IdentityRejectionClass)
    : 'other';
}

export interface ServiceMetricsOptions {
  /** process and Node.js runtime metrics (CPU, memory, event-loop lag); on for `serve` */
  defaultMetrics?: boolean;
  maxTenantSeries?: number;
}

type Child = CounterSeries;
type HistogramChild = HistogramSeries;
/** a tenant's series by decision, under its namespace and SNAT pool */
type TenantSeries = { allow?: Child; deny?: Child };

export class ServiceMetrics implements PolicyStoreMetrics, ShadowMetrics {
  readonly registry = new Registry();
  private readonly checks: Record<string, Record<ReasonClass, Child>> = {};
  private readonly identityRejections = {} as Record<IdentityRejectionClass, Child>;
  private readonly checkSeconds: HistogramChild;
  private readonly sidebandSeconds: HistogramChild;
  private readonly evalSeconds: Record<PolicyRole, HistogramChild>;
  private readonly reloads: Counter<'policy' | 'result'>;
  private readonly revisionInfo: Gauge<'policy' | 'revision'>;
  private readonly shadowDisagreements: Counter<'kind'>;
  private readonly shadowCompared: Child;
  private readonly shadowSkipped: Child;
  private readonly revisions = new Map<PolicyRole, string>();
  private readonly tenantDecisions: Counter<'namespace' | 'snat_pool' | 'decision'>;
  // namespace → SNAT pool → decision: a lookup builds no key string.
  private readonly tenantChildren = new Map<string, Map<string, TenantSeries>>();
  private tenantSeriesCount = 0;
  private readonly maxTenantSeries: number;
  // Tenants named by a policy's data (data.egress.tenants), computed once per loaded policy.
  private readonly tenantsByPolicy = new WeakMap<LoadedPolicy, ReadonlySet<string>>();

  constructor(opts: ServiceMetricsOptions = {}) {
    const registers = [this.registry];
    this.maxTenantSeries = opts.maxTenantSeries ?? DEFAULT_MAX_TENANT_SERIES;
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry });

    const checks = new Counter({
      name: 'egress_authz_checks_total',
      help: 'Authorization checks answered, by caller, decision and reason class',
      labelNames: ['caller', 'decision', 'reason_class'] as const,
      registers,
    });
    for (const transport of TRANSPORTS) {
      const byClass = {} as Record<ReasonClass, Child>;
      for (const rc of REASON_CLASSES) byClass[rc] = bound(checks, transport, rc === 'allowed' ? 'allow' : 'deny', rc);
      this.checks[transport] = byClass;
    }
    const rejections = new Counter({
      name: 'egress_authz_identity_rejections_total',
      help: 'Checks denied because the caller identity was missing or invalid, by reason class',
      labelNames: ['reason_class'] as const,
      registers,
    });
    for (const rc of IDENTITY_REJECTION_CLASSES) this.identityRejections[rc] = bound(rejections, rc);

    this.checkSeconds = histogramSeries(
      new Histogram({
        name: 'grpc_server_handling_seconds',
        help: 'ext_authz Check handling time in the server (identity, input, policy, decision, log entry)',
        labelNames: ['grpc_service', 'grpc_method', 'grpc_type'] as const,
        buckets: LATENCY_BUCKETS,
        registers,
      }),
      EXT_AUTHZ_LABELS.grpc_service,
      EXT_AUTHZ_LABELS.grpc_method,
      EXT_AUTHZ_LABELS.grpc_type,
    );
    this.sidebandSeconds = histogramSeries(
      new Histogram({
        name: 'egress_authz_sideband_request_duration_seconds',
        help: 'BIG-IP sideband request time, from routing to the last byte of the answer',
        buckets: LATENCY_BUCKETS,
        registers,
      }),
    );
    const evalSeconds = new Histogram({
      name: 'egress_authz_policy_eval_seconds',
      help: 'Rego (Wasm) evaluation time per decision',
      labelNames: ['policy'] as const,
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.evalSeconds = { live: histogramSeries(evalSeconds, 'live'), shadow: histogramSeries(evalSeconds, 'shadow') };
    this.reloads = new Counter({
      name: 'egress_authz_policy_reloads_total',
      help: 'Policy reloads that changed the policy (success) or were refused, keeping the last good one (failure)',
      labelNames: ['policy', 'result'] as const,
      registers,
    });
    for (const policy of ['live', 'shadow'])
      for (const result of ['success', 'failure']) bound(this.reloads, policy, result);
    this.revisionInfo = new Gauge({
      name: 'egress_authz_policy_revision_info',
      help: 'The serving policy revision (bundle manifest revision or content hash); value is always 1',
      labelNames: ['policy', 'revision'] as const,
      registers,
      // Across `serve --workers`: one series per revision any worker serves (more than one: mid-rollout).
      aggregator: 'max',
    });
    this.shadowDisagreements = new Counter({
      name: 'egress_authz_shadow_disagreements_total',
      help: 'Checks where the shadow policy would have answered differently from the live one',
      labelNames: ['kind'] as const,
      registers,
    });
    for (const kind of ['allow_to_deny', 'deny_to_allow', 'pool_changed']) bound(this.shadowDisagreements, kind);
    const shadowEvaluations = new Counter({
      name: 'egress_authz_shadow_evaluations_total',
      help: 'Shadow policy evaluations: compared, or skipped because too many were queued',
      labelNames: ['result'] as const,
      registers,
    });
    this.shadowCompared = bound(shadowEvaluations, 'compared');
    this.shadowSkipped = bound(shadowEvaluations, 'skipped');
    this.tenantDecisions = new Counter({
      name: 'egress_authz_decisions_by_tenant_total',
      help: `Decisions by namespace (a tenant of the live policy, or any allowed namespace; "${NO_NAMESPACE_LABEL}" without one, "${OTHER_LABEL}" otherwise), SNAT pool and decision`,
      labelNames: ['namespace', 'snat_pool', 'decision'] as const,
      registers,
    });
    registerCacheMetrics(registers);
  }

  /** Counts one answered check; `policy` is the live policy it was decided on (for its tenant list). */
  observeDecision(d: Decision, policy: LoadedPolicy | undefined): void {
    const rc = reasonClass(d);
    (this.checks[d.caller] ?? this.checks['cli']!)[rc].inc();
    if (rc === 'identity') this.identityRejections[identityRejectionClass(d.failure_code)].inc();
    else if (d.eval_ms > 0) this.evalSeconds.live.observe(d.eval_ms / 1000);
    this.tenantChild(d, policy).inc();
  }

  /** The check threw inside the pipeline; the transport answered deny. */
  observeInternalError(transport: string): void {
    (this.checks[transport] ?? this.checks['cli']!).internal.inc();
  }

  observeCheckSeconds(seconds: number): void {
    this.checkSeconds.observe(seconds);
  }

  observeSidebandSeconds(seconds: number): void {
    this.sidebandSeconds.observe(seconds);
  }

  observeShadow(evalMs: number, disagreement: ShadowDisagreementKind | undefined): void {
    this.shadowCompared.inc();
    if (evalMs > 0) this.evalSeconds.shadow.observe(evalMs / 1000);
    if (disagreement) this.shadowDisagreements.labels(disagreement).inc();
  }

  observeShadowSkipped(): void {
    this.shadowSkipped.inc();
  }

  policyReloaded(policy: PolicyRole, result: 'success' | 'failure'): void {
    this.reloads.labels(policy, result).inc();
  }

  policyRevision(policy: PolicyRole, revision: string): void {
    this.revisionInfo.reset();
    this.revisions.set(policy, revision);
    for (const [role, rev] of this.revisions) this.revisionInfo.labels(role, rev).set(1);
  }

  private tenantChild(d: Decision, policy: LoadedPolicy | undefined): Child {
    const decision = d.allow ? 'allow' : 'deny';
    const ns = d.identity?.namespace;
    // Allowed namespaces are bounded by the policy; a denied one is labelled only if the policy knows it
    // as a tenant, so a flood of made-up namespaces lands in one "_other" series.
    const namespace =
      ns === undefined ? NO_NAMESPACE_LABEL : d.allow || this.tenants(policy).has(ns) ? ns : OTHER_LABEL;
    const child = this.tenantChildren.get(namespace)?.get(d.snat_pool)?.[decision];
    if (child !== undefined) return child;
    if (this.tenantSeriesCount >= this.maxTenantSeries) {
      const overflow = this.tenantChildren.get(OTHER_LABEL)?.get(OTHER_LABEL)?.[decision];
      return overflow ?? this.addTenantChild(OTHER_LABEL, OTHER_LABEL, decision);
    }
    return this.addTenantChild(namespace, d.snat_pool, decision);
  }

  private addTenantChild(namespace: string, pool: string, decision: 'allow' | 'deny'): Child {
    let byPool = this.tenantChildren.get(namespace);
    if (byPool === undefined) this.tenantChildren.set(namespace, (byPool = new Map<string, TenantSeries>()));
    let series = byPool.get(pool);
    if (series === undefined) byPool.set(pool, (series = {}));
    this.tenantSeriesCount++;
    return (series[decision] = counterSeries(this.tenantDecisions, namespace, pool, decision));
  }

  private tenants(policy: LoadedPolicy | undefined): ReadonlySet<string> {
    if (!policy) return EMPTY;
    let set = this.tenantsByPolicy.get(policy);
    if (!set) {
      // A policy's summary was made where its data was parsed; only stand-ins without one are read here.
      set = new Set((policy.summary ?? summarisePolicyData(policy.data)).tenants);
      this.tenantsByPolicy.set(policy, set);
    }
    return set;
  }
}

const EMPTY: ReadonlySet<string> = new Set();

/**
 * The certificate cache, the policy memo and the chain-verification cache, read when scraped (nothing on
 * the Check path): hits, misses and evictions since start, and the estimated bytes held against the
 * bound. Each worker reports its own; the cluster primary adds them up (its chain cache is absent: 0).
 */
function registerCacheMetrics(registers: Registry[]): void {
  const caches = () => {
    const svid = x509SvidCacheStats();
    return {
      svid,
      svid_id: x509SvidIdMemoStats(),
      policy_memo: { ...memoTotals, bytes: policyMemoBytes(), maxBytes: policyMemoMaxBytes() },
      chain: chainCacheStats(),
    };
  };
  for (const [field, name, help] of [
    [
      'hits',
      'egress_authz_cache_hits_total',
      'Lookups answered from a cache, by cache (svid: certificates, svid_id: their expanded IDs, policy_memo: decisions, chain: verified chains)',
    ],
    ['misses', 'egress_authz_cache_misses_total', 'Lookups a cache could not answer, by cache'],
    ['evictions', 'egress_authz_cache_evictions_total', 'Entries dropped to stay within the byte bound, by cache'],
  ] as const) {
    new Counter({
      name,
      help,
      labelNames: ['cache'] as const,
      registers,
      collect() {
        this.reset();
        for (const [cache, stats] of Object.entries(caches())) this.labels(cache).inc(stats[field]);
      },
    });
  }
  new Gauge({
    name: 'egress_authz_cache_bytes',
    help: 'Estimated heap bytes a cache holds (its bound: egress_authz_cache_max_bytes)',
    labelNames: ['cache'] as const,
    registers,
    collect() {
      for (const [cache, stats] of Object.entries(caches())) this.labels(cache).set(stats.bytes);
    },
  });
  new Gauge({
    name: 'egress_authz_cache_max_bytes',
    help: 'The byte bound of a cache',
    labelNames: ['cache'] as const,
    registers,
    collect() {
      for (const [cache, stats] of Object.entries(caches())) this.labels(cache).set(stats.maxBytes);
    },
  });
  // The fast DER reader hands what it cannot read plainly (unusual encodings) to the pkijs reference,
  // ~50× slower: a rising rate explains slow Checks and points at the issuer.
  new Counter({
    name: 'egress_authz_svid_reference_fallbacks_total',
    help: 'Certificate chains the fast reader handed to the careful (reference) validator',
    registers,
    collect() {
      this.reset();
      this.inc(x509SvidReferenceFallbacks());
    },
  });
  // Likewise the CheckRequest decoder (check-request-wire.ts): Envoy's encoding is read on the fast path.
  new Counter({
    name: 'egress_authz_request_decode_fallbacks_total',
    help: 'CheckRequests whose encoding the fast decoder handed to the careful (reference) deserializer',
    registers,
    collect() {
      this.reset();
      this.inc(checkRequestReferenceDecodes());
    },
  });
  // And the Check calls grpc-js answered instead of check-stream.ts: compressed ones, unusual deadline
  // headers, or every call if grpc-js was not shaped as the stream path expects (serving log: check_transport).
  new Counter({
    name: 'egress_authz_check_grpc_js_calls_total',
    help: 'Check calls answered through grpc-js call objects instead of the stream path (slower, same answers)',
    registers,
    collect() {
      this.reset();
      this.inc(checksAnsweredByGrpcJs());
    },
  });
}

/** A counter child bound once, exported at 0 from the start so rate() and dashboards see it. */
function bound(counter: Counter<string>, ...values: string[]): Child {
  const child = counterSeries(counter, ...values);
  child.inc(0);
  return child;
}

/** `GET /metrics` in Prometheus text format. */
export function metricsRoute(metrics: ServiceMetrics): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  return (_req, res) => {
    metrics.registry.metrics().then(
      (text) => {
        res.writeHead(200, { 'content-type': metrics.registry.contentType, 'content-length': Buffer.byteLength(text) });
        res.end(text);
      },
      () => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('metrics collection failed\n');
      },
    );
  };
}

/** Wraps the sideband route so its duration is observed from routing to the end of the answer. */
export function timedRoute(
  handler: (req: http.IncomingMessage, res: http.ServerResponse) => void,
  observe: (seconds: number) => void,
): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  return (req, res) => {
    const started = performance.now();
    res.once('close', () => observe((performance.now() - started) / 1000));
    handler(req, res);
  };
}

/**
 * What metrics hear from the pipeline (beside it, not around it): every decision is counted, Envoy's
 * checks are timed from when the gRPC handler read them (the sideband's by its route, timedRoute), and a
 * check that threw inside the pipeline counts as an internal error of its transport.
 */
export function pipelineMetrics(metrics: ServiceMetrics, policies: PolicySource): PipelineObserver {
  return {
    onDecision(decision, timing) {
      metrics.observeDecision(decision, policies.current);
      if (decision.caller === 'envoy') metrics.observeCheckSeconds(timing.seconds);
    },
    onInternalError(transport, timing) {
      if (transport === 'cli') return;
      metrics.observeInternalError(transport);
      if (transport === 'envoy') metrics.observeCheckSeconds(timing.seconds);
    },
  };
}
