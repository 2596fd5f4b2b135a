// The Check path's metric series (metric-series.ts) write into prom-client's own entries; these hold
// them, and ServiceMetrics' whole decision path, to plain prom-client use: the same sequence of updates
// must give the same /metrics text and the same JSON the cluster primary aggregates.
import fc from 'fast-check';
import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { FAILURE_CODES, type FailureCode } from '../../src/common/result.js';
import { REASON_CLASSES, type Decision } from '../../src/decision/decision.js';
import type { LoadedPolicy } from '../../src/policy/policy.js';
import { counterSeries, histogramSeries } from '../../src/service/metric-series.js';
import {
  identityRejectionClass,
  NO_NAMESPACE_LABEL,
  OTHER_LABEL,
  pipelineMetrics,
  ServiceMetrics,
} from '../../src/service/metrics.js';

const BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
// Bucket bounds exactly (a value equal to a bound counts in that bucket), between them, beyond the last.
const seconds = fc.oneof(
  fc.constantFrom(0, ...BUCKETS, 2, 1e-9),
  fc.double({ min: 0, max: 1.5, noNaN: true }),
  fc.integer({ min: 0, max: 2000 }).map((n) => n / 10_000),
);

async function snapshot(registry: Registry, names?: readonly string[]): Promise<{ text: string; json: unknown }> {
  if (!names) return { text: await registry.metrics(), json: await registry.getMetricsAsJSON() };
  const texts = await Promise.all(names.map((n) => registry.getSingleMetricAsString(n)));
  const all = await registry.getMetricsAsJSON();
  const json = names.map((n) => all.find((m) => m.name === n));
  return { text: texts.join('\n\n'), json };
}

describe('metric series against plain prom-client', () => {
  type Op =
    | { kind: 'inc'; series: number }
    | { kind: 'incBy'; series: number; by: number }
    | { kind: 'observe'; series: number; value: number }
    | { kind: 'reset' | 'remove'; series: number };
  const LABELS = [
    ['envoy', 'allow'],
    ['envoy', 'deny'],
    ['cli', 'deny'],
  ] as const;
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('inc' as const), series: fc.nat(LABELS.length - 1) }) },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('incBy' as const),
        series: fc.nat(LABELS.length - 1),
        by: fc.constantFrom(0, 1, 2.5),
      }),
    },
    {
      weight: 5,
      arbitrary: fc.record({ kind: fc.constant('observe' as const), series: fc.nat(LABELS.length), value: seconds }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constantFrom('reset' as const, 'remove' as const),
        series: fc.nat(LABELS.length),
      }),
    },
  );

  function metricsOf(registry: Registry) {
    const registers = [registry];
    return {
      counter: new Counter({ name: 'c_total', help: 'c', labelNames: ['caller', 'decision'], registers }),
      histogram: new Histogram({ name: 'h_seconds', help: 'h', labelNames: ['caller'], buckets: BUCKETS, registers }),
      bare: new Histogram({ name: 'bare_seconds', help: 'b', buckets: BUCKETS, registers }),
    };
  }

  it('gives the very text and JSON prom-client gives, whatever the sequence (resets and removals too)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 120 }), async (ops) => {
        const fastRegistry = new Registry();
        const plainRegistry = new Registry();
        const fast = metricsOf(fastRegistry);
        const plain = metricsOf(plainRegistry);
        const counters = LABELS.map(([c, d]) => counterSeries(fast.counter, c, d));
        const histograms = [...LABELS.map(([c]) => histogramSeries(fast.histogram, c)), histogramSeries(fast.bare)];
        for (const o of ops) {
          const labels = LABELS[o.series];
          switch (o.kind) {
            case 'inc':
              counters[o.series]!.inc();
              plain.counter.labels(...labels!).inc();
              break;
            case 'incBy':
              counters[o.series]!.inc(o.by);
              plain.counter.labels(...labels!).inc(o.by);
              break;
            case 'observe':
              histograms[o.series]!.observe(o.value);
              if (labels) plain.histogram.labels(labels[0]).observe(o.value);
              else plain.bare.observe(o.value);
              break;
            case 'reset':
              for (const m of [fast, plain]) (labels ? m.histogram : m.counter).reset();
              break;
            case 'remove':
              for (const m of [fast, plain]) {
                if (labels) m.counter.remove(...labels);
                else m.histogram.remove('cli');
              }
              break;
          }
        }
        expect(await snapshot(fastRegistry)).toEqual(await snapshot(plainRegistry));
      }),
      { numRuns: 300 },
    );
  });
});

describe('ServiceMetrics decisions against plain prom-client (the path before metric-series.ts)', () => {
  const NAMES = [
    'egress_authz_checks_total',
    'egress_authz_identity_rejections_total',
    'grpc_server_handling_seconds',
    'egress_authz_policy_eval_seconds',
    'egress_authz_decisions_by_tenant_total',
    'egress_authz_shadow_evaluations_total',
  ] as const;
  const TENANTS = ['bookinfo', 'payments'];
  const policy = { summary: { tenants: TENANTS } } as unknown as LoadedPolicy;

  /** What ServiceMetrics did with prom-client's own children, metric by metric, configured as the real ones. */
  class Reference {
    readonly registry = new Registry();
    private readonly checks: Counter<string>;
    private readonly rejections: Counter<string>;
    private readonly evalSeconds: Histogram<string>;
    private readonly checkSeconds: Histogram<string>;
    private readonly tenant: Counter<string>;
    private readonly shadow: Counter<string>;
    private readonly tenantChildren = new Map<string, { inc(): void }>();

    constructor(
      real: Registry,
      private readonly maxTenantSeries: number,
    ) {
      const registers = [this.registry];
      const like = (name: string) => {
        const m = real.getSingleMetric(name) as unknown as {
          help: string;
          labelNames: string[];
          upperBounds?: number[];
        };
        return {
          name,
          help: m.help,
          labelNames: m.labelNames,
          registers,
          ...(m.upperBounds ? { buckets: m.upperBounds } : {}),
        };
      };
      this.checks = new Counter(like(NAMES[0]));
      for (const caller of ['envoy', 'sideband', 'cli'])
        for (const rc of REASON_CLASSES) this.checks.labels(caller, rc === 'allowed' ? 'allow' : 'deny', rc).inc(0);
      this.rejections = new Counter(like(NAMES[1]));
      for (const rc of ['missing', 'pem', 'svid', 'validity', 'spiffe_id', 'mismatch', 'chain', 'other'])
        this.rejections.labels(rc).inc(0);
      this.checkSeconds = new Histogram(like(NAMES[2]));
      this.evalSeconds = new Histogram(like(NAMES[3]));
      this.tenant = new Counter(like(NAMES[4]));
      this.shadow = new Counter(like(NAMES[5]));
      for (const result of ['compared', 'skipped']) this.shadow.labels(result).inc(0);
    }

    decision(d: Decision, seconds: number): void {
      this.checks.labels(d.caller, d.allow ? 'allow' : 'deny', d.reason_class).inc();
      if (d.reason_class === 'identity') this.rejections.labels(identityRejectionClass(d.failure_code)).inc();
      else if (d.eval_ms > 0) this.evalSeconds.labels('live').observe(d.eval_ms / 1000);
      const decision = d.allow ? 'allow' : 'deny';
      const ns = d.identity?.namespace;
      const namespace = ns === undefined ? NO_NAMESPACE_LABEL : d.allow || TENANTS.includes(ns) ? ns : OTHER_LABEL;
      const key = `${namespace}\u0000${d.snat_pool}\u0000${decision}`;
      let child = this.tenantChildren.get(key);
      if (child === undefined) {
        if (this.tenantChildren.size >= this.maxTenantSeries) {
          const overflow = `${OTHER_LABEL}\u0000${OTHER_LABEL}\u0000${decision}`;
          child = this.tenantChildren.get(overflow) ?? this.tenant.labels(OTHER_LABEL, OTHER_LABEL, decision);
          this.tenantChildren.set(overflow, child);
        } else {
          child = this.tenant.labels(namespace, d.snat_pool, decision);
          this.tenantChildren.set(key, child);
        }
      }
      child.inc();
      if (d.caller === 'envoy') this.checkSeconds.labels(...GRPC_LABELS).observe(seconds);
    }

    shadowEvaluation(evalMs: number): void {
      this.shadow.labels('compared').inc();
      if (evalMs > 0) this.evalSeconds.labels('shadow').observe(evalMs / 1000);
    }
  }
  const GRPC_LABELS = ['envoy.service.auth.v3.Authorization', 'Check', 'unary'];

  const decision: fc.Arbitrary<Decision> = fc
    .record({
      caller: fc.constantFrom('envoy', 'sideband', 'cli'),
      reason_class: fc.constantFrom(...REASON_CLASSES),
      failure_code: fc.option(fc.constantFrom<FailureCode | 'bogus'>(...FAILURE_CODES, 'bogus'), { nil: undefined }),
      eval_ms: seconds.map((s) => s * 1000),
      namespace: fc.option(fc.constantFrom(...TENANTS, 'made-up', OTHER_LABEL, 'a', 'b', 'c'), { nil: undefined }),
      identity: fc.boolean(),
      snat_pool: fc.constantFrom('', 'bookinfo_snat', 'pool-a', OTHER_LABEL),
    })
    .map((r) => ({
      decision_id: 'id',
      caller: r.caller,
      allow: r.reason_class === 'allowed',
      snat_pool: r.reason_class === 'allowed' ? r.snat_pool : '',
      reason: '',
      http_status: r.reason_class === 'allowed' ? 200 : 403,
      headers: {},
      body: '',
      identity: r.identity
        ? { spiffe_id: 'spiffe://x', trust_domain: 'x', path: '', namespace: r.namespace, source: 'principal' }
        : null,
      destination: '',
      policy_revision: 'r',
      eval_ms: r.eval_ms,
      reason_class: r.reason_class,
      ...(r.failure_code ? { failure_code: r.failure_code as FailureCode } : {}),
    }));
  type Step =
    { kind: 'decision'; d: Decision; seconds: number } | { kind: 'shadow'; evalMs: number } | { kind: 'scrape' };
  const step: fc.Arbitrary<Step> = fc.oneof(
    { weight: 8, arbitrary: fc.record({ kind: fc.constant('decision' as const), d: decision, seconds }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('shadow' as const), evalMs: seconds.map((s) => s * 1000) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('scrape' as const) }) },
  );

  it('gives the same series, values and buckets for any sequence of decisions (the tenant bound too)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 8 }), fc.array(step, { maxLength: 150 }), async (max, steps) => {
        const metrics = new ServiceMetrics({ maxTenantSeries: max });
        const observer = pipelineMetrics(metrics, { current: policy });
        const reference = new Reference(metrics.registry, max);
        for (const s of steps) {
          if (s.kind === 'decision') {
            observer.onDecision(s.d, { seconds: s.seconds });
            reference.decision(s.d, s.seconds);
          } else if (s.kind === 'shadow') {
            metrics.observeShadow(s.evalMs, undefined);
            reference.shadowEvaluation(s.evalMs);
          } else {
            expect(await snapshot(metrics.registry, NAMES)).toEqual(await snapshot(reference.registry, NAMES));
          }
        }
        expect(await snapshot(metrics.registry, NAMES)).toEqual(await snapshot(reference.registry, NAMES));
      }),
      { numRuns: 300 },
    );
  });
});
