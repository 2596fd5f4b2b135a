// /metrics as Prometheus scrapes it, after real checks over gRPC and the sideband route; the reason
// classes and the bound on tenant label values; the Grafana dashboard uses only metrics that exist.
import { checksAnsweredByGrpcJs } from '../../src/transport/grpc-server.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decide, internalErrorDecision, type Decision } from '../../src/decision/decision.js';
import { FAILURE_CODES, fail } from '../../src/common/result.js';
import { resolveIdentity, type PeerEvidence } from '../../src/identity/identity.js';
import { ChainVerifier } from '../../src/identity/chain-verify.js';
import { parseX509Bundle, X509BundleSet } from '../../src/identity/x509-bundle.js';
import { x509SvidIdMemoStats, x509SvidReferenceFallbacks } from '../../src/identity/x509-svid.js';
import { checkRequestReferenceDecodes } from '../../src/transport/check-request-wire.js';
import {
  identityRejectionClass,
  IDENTITY_REJECTION_CLASSES,
  NO_NAMESPACE_LABEL,
  OTHER_LABEL,
  reasonClass,
  ServiceMetrics,
} from '../../src/service/metrics.js';
import { createCa, issue, workloadSvid, type CertAuthority } from '../support/pki.js';
import {
  check,
  checkClient,
  checkRequest,
  loadDefaultPolicy,
  startTestService,
  type CheckClient,
  type TestService,
} from '../support/service.js';
import { metricsText, sample } from '../lifecycle/support.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';

describe('GET /metrics after real checks', () => {
  let svc: TestService;
  let client: CheckClient;
  let text: string;

  beforeAll(async () => {
    svc = await startTestService();
    client = checkClient(svc.grpcPort);
    const ca = await createCa();
    const expired = await workloadSvid(ca, BOOKINFO, {
      notAfter: new Date(Date.now() - 60_000),
      notBefore: new Date(Date.now() - 3_600_000),
    });
    for (let i = 0; i < 3; i++) await check(client, checkRequest({ principal: BOOKINFO }));
    await check(client, checkRequest({ principal: 'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools' }));
    for (let i = 0; i < 5; i++)
      await check(client, checkRequest({ principal: `spiffe://cluster.local/ns/made-up-${i}/sa/x` }));
    await check(client, checkRequest({}));
    await check(client, checkRequest({ principal: 'CN=legacy-client' }));
    await check(client, checkRequest({ certificatePem: expired.certPem }));
    await check(client, checkRequest({ certificatePem: 'not a certificate' }));
    const svid = await workloadSvid(ca, BOOKINFO);
    const res = await fetch(`http://127.0.0.1:${svc.httpPort}/v1/sideband`, {
      method: 'POST',
      body: svid.certPem,
      headers: { 'content-type': 'application/x-pem-file' },
    });
    expect(res.status).toBe(200);
    text = await metricsText(svc.httpPort);
  });
  afterAll(async () => {
    client?.close();
    await svc?.close(1000);
  });

  it('is Prometheus text', async () => {
    const res = await fetch(`http://127.0.0.1:${svc.httpPort}/metrics`);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(text).toMatch(/^# HELP egress_authz_checks_total /m);
  });

  it('counts checks by caller, decision and reason class', () => {
    const checks = (labels: string) => sample(text, 'egress_authz_checks_total', labels);
    expect(checks('caller="envoy",decision="allow",reason_class="allowed"')).toBe(3);
    expect(checks('caller="envoy",decision="deny",reason_class="policy_deny"')).toBe(6);
    expect(checks('caller="envoy",decision="deny",reason_class="identity"')).toBe(4);
    expect(checks('caller="envoy",decision="deny",reason_class="policy_error"')).toBe(0);
    expect(checks('caller="sideband",decision="allow",reason_class="allowed"')).toBe(1);
  });

  it('counts identity rejections by class, never by raw reason', () => {
    expect(sample(text, 'egress_authz_identity_rejections_total', 'reason_class="missing"')).toBe(1);
    expect(sample(text, 'egress_authz_identity_rejections_total', 'reason_class="spiffe_id"')).toBe(1);
    expect(sample(text, 'egress_authz_identity_rejections_total', 'reason_class="validity"')).toBe(1);
    expect(sample(text, 'egress_authz_identity_rejections_total', 'reason_class="pem"')).toBe(1);
    expect(text).not.toMatch(/CN=legacy|has expired/);
  });

  it('times every gRPC Check and sideband request; policy evaluation per decision', () => {
    expect(sample(text, 'egress_authz_sideband_request_duration_seconds_sum')).toBeGreaterThan(0);
    expect(
      sample(
        text,
        'grpc_server_handling_seconds_count',
        'grpc_service="envoy.service.auth.v3.Authorization",grpc_method="Check",grpc_type="unary"',
      ),
    ).toBe(13);
    expect(sample(text, 'egress_authz_sideband_request_duration_seconds_count')).toBe(1);
    expect(sample(text, 'egress_authz_policy_eval_seconds_count', 'policy="live"')).toBe(10); // identity failures never reach the policy
  });

  it('exports the certificate cache and the policy memo: hits, misses, bytes held within the bound', () => {
    const cache = (name: string, which: string) => sample(text, name, `cache="${which}"`) ?? Number.NaN;
    expect(cache('egress_authz_cache_misses_total', 'svid')).toBeGreaterThanOrEqual(2);
    expect(cache('egress_authz_cache_bytes', 'svid')).toBeGreaterThan(0);
    expect(cache('egress_authz_cache_bytes', 'svid')).toBeLessThanOrEqual(
      cache('egress_authz_cache_max_bytes', 'svid'),
    );
    // three identical bookinfo Checks: one evaluation remembered, two answered from the memo
    expect(cache('egress_authz_cache_hits_total', 'policy_memo')).toBeGreaterThanOrEqual(2);
    expect(cache('egress_authz_cache_misses_total', 'policy_memo')).toBeGreaterThanOrEqual(1);
    expect(cache('egress_authz_cache_bytes', 'policy_memo')).toBeGreaterThan(0);
    expect(cache('egress_authz_cache_bytes', 'policy_memo')).toBeLessThanOrEqual(
      cache('egress_authz_cache_max_bytes', 'policy_memo'),
    );
    expect(cache('egress_authz_cache_evictions_total', 'svid')).toBe(0);
    // The memo of expanded IDs behind it, as the module counts it (test/identity checks the counting).
    const memo = x509SvidIdMemoStats();
    expect(cache('egress_authz_cache_misses_total', 'svid_id')).toBe(memo.misses);
    expect(cache('egress_authz_cache_hits_total', 'svid_id')).toBe(memo.hits);
    expect(cache('egress_authz_cache_bytes', 'svid_id')).toBe(memo.bytes);
    expect(cache('egress_authz_cache_max_bytes', 'svid_id')).toBe(memo.maxBytes);
    // The fast reader's hand-offs to the careful validator: counted (this suite's certificates are
    // plainly encoded, so the count is whatever the process saw, never negative or absent).
    expect(sample(text, 'egress_authz_svid_reference_fallbacks_total')).toBe(x509SvidReferenceFallbacks());
    // Likewise the CheckRequest decoder's: this suite's requests are protobufjs's plain encoding.
    expect(sample(text, 'egress_authz_request_decode_fallbacks_total')).toBe(checkRequestReferenceDecodes());
    expect(checkRequestReferenceDecodes()).toBe(0);
    // And the Checks grpc-js answered instead of the stream path: none of these plain calls.
    expect(sample(text, 'egress_authz_check_grpc_js_calls_total')).toBe(checksAnsweredByGrpcJs());
    expect(checksAnsweredByGrpcJs()).toBe(0);
  });

  it('labels decisions by tenant: known tenants and allowed namespaces by name, everything else bounded', () => {
    const byTenant = (labels: string) => sample(text, 'egress_authz_decisions_by_tenant_total', labels);
    expect(byTenant('namespace="bookinfo",snat_pool="bookinfo_snat",decision="allow"')).toBe(4);
    expect(byTenant(`namespace="${OTHER_LABEL}",snat_pool="",decision="deny"`)).toBe(6); // sm-apigw-a and 5 made-up namespaces
    expect(byTenant(`namespace="${NO_NAMESPACE_LABEL}",snat_pool="",decision="deny"`)).toBe(4);
    expect(text).not.toMatch(/made-up/);
  });

  it('exposes the serving policy revision and zero reloads', async () => {
    expect(
      sample(
        text,
        'egress_authz_policy_revision_info',
        `policy="live",revision="${(await loadDefaultPolicy()).revision}"`,
      ),
    ).toBe(1);
    expect(sample(text, 'egress_authz_policy_reloads_total', 'policy="live",result="failure"')).toBe(0);
  });
});

describe('GET /metrics with trust bundles: the chain-verification cache', () => {
  it('exports cache="chain": a miss, then hits, bytes held within the bound', async () => {
    const root = await createCa('metrics root', { uris: ['spiffe://cluster.local'] });
    const inter = await createCa('metrics intermediate', { issuer: root, uris: ['spiffe://cluster.local'] });
    const trust = parseX509Bundle('cluster.local', root.certPem);
    if (!trust.ok) throw new Error(trust.reason);
    const chainVerifier = new ChainVerifier(new X509BundleSet([trust.value]));
    const svc = await startTestService({ chainVerifier });
    try {
      const chain = (await workloadSvid(inter, BOOKINFO)).certPem + inter.certPem;
      for (let i = 0; i < 3; i++) {
        const res = await fetch(`http://127.0.0.1:${svc.httpPort}/v1/sideband`, {
          method: 'POST',
          body: chain,
          headers: { 'content-type': 'application/x-pem-file' },
        });
        expect(res.status).toBe(200);
      }
      const text = await metricsText(svc.httpPort);
      const cache = (name: string) => sample(text, name, 'cache="chain"') ?? Number.NaN;
      expect(cache('egress_authz_cache_misses_total')).toBeGreaterThanOrEqual(1);
      expect(cache('egress_authz_cache_hits_total')).toBeGreaterThanOrEqual(2);
      expect(cache('egress_authz_cache_evictions_total')).toBeGreaterThanOrEqual(0);
      expect(cache('egress_authz_cache_bytes')).toBe(chainVerifier.cacheStats().bytes);
      expect(cache('egress_authz_cache_bytes')).toBeGreaterThan(0);
      expect(cache('egress_authz_cache_max_bytes')).toBe(chainVerifier.cacheStats().maxBytes);
    } finally {
      await svc.close(1000);
    }
  });
});

describe('a check that fails inside the pipeline', () => {
  it('is answered deny by the transport and counted as internal, with its handling time', async () => {
    const svc = await startTestService({
      onDecision: () => {
        throw new Error('a bug after the decision');
      },
    });
    const client = checkClient(svc.grpcPort);
    try {
      const res = await check(client, checkRequest({ principal: BOOKINFO }));
      expect(res.status.code).toBe(7);
      const text = await metricsText(svc.httpPort);
      expect(sample(text, 'egress_authz_checks_total', 'caller="envoy",decision="deny",reason_class="internal"')).toBe(
        1,
      );
      expect(
        sample(
          text,
          'grpc_server_handling_seconds_count',
          'grpc_service="envoy.service.auth.v3.Authorization",grpc_method="Check",grpc_type="unary"',
        ),
      ).toBe(1);
    } finally {
      client.close();
      await svc.close(1000);
    }
  });
});

describe('reason classes', () => {
  const base: Decision = {
    decision_id: 'x',
    caller: 'envoy',
    allow: false,
    snat_pool: '',
    reason: 'r',
    http_status: 403,
    headers: {},
    body: '',
    identity: {
      spiffe_id: BOOKINFO,
      trust_domain: 'cluster.local',
      path: '/ns/bookinfo/sa/productpage',
      namespace: 'bookinfo',
      source: 'principal',
    },
    destination: '',
    policy_revision: 'r1',
    eval_ms: 0.1,
    reason_class: 'policy_deny',
  };

  it('classifies decisions into the fixed set, from the decisions the pipeline makes', async () => {
    const policy = await loadDefaultPolicy();
    const failing = { ...policy, evaluate: () => fail('boom', 'policy') } as unknown as typeof policy;
    const input = (ns: string) => ({
      caller: 'envoy' as const,
      identity: { ...base.identity!, spiffe_id: `spiffe://cluster.local/ns/${ns}/sa/x`, namespace: ns },
      destination: { host: 'legacy.example', port: 443 },
    });
    expect(reasonClass(decide(input('bookinfo'), policy))).toBe('allowed');
    expect(reasonClass(decide(input('sm-apigw-a'), policy))).toBe('policy_deny');
    expect(reasonClass(decide(input('bookinfo'), failing))).toBe('policy_error');
    expect(reasonClass(decide(input('bookinfo'), undefined))).toBe('policy_error');
    expect(reasonClass(decide({ caller: 'envoy', identity: null, destination: { host: '' } }, policy))).toBe(
      'identity',
    );
    expect(reasonClass(internalErrorDecision('envoy'))).toBe('internal');
  });

  describe('identity rejections are classified by the failure code of the real refusal', () => {
    let ca: CertAuthority;
    beforeAll(async () => {
      ca = await createCa();
    });
    const now = new Date();
    const cases: [string, () => Promise<PeerEvidence>, string][] = [
      ['no evidence', async () => ({}), 'missing'],
      ['a subject DN as principal', async () => ({ principal: 'CN=nettools,O=example' }), 'spiffe_id'],
      ['a bad SPIFFE ID principal', async () => ({ principal: 'spiffe://' }), 'spiffe_id'],
      [
        'certificate and principal disagree',
        async () => ({
          certificatePem: (await workloadSvid(ca, BOOKINFO)).certPem,
          principal: 'spiffe://cluster.local/ns/other/sa/x',
        }),
        'mismatch',
      ],
      [
        'an expired certificate',
        async () => ({
          certificatePem: (
            await workloadSvid(ca, BOOKINFO, {
              notAfter: new Date(Date.now() - 60_000),
              notBefore: new Date(Date.now() - 3_600_000),
            })
          ).certPem,
        }),
        'validity',
      ],
      ['text that is not PEM', async () => ({ certificatePem: 'hello' }), 'pem'],
      ['bad URL encoding', async () => ({ certificatePem: '-----BEGIN%ZZ' }), 'pem'],
      [
        'a leaf without a URI SAN',
        async () => ({ certificatePem: (await issue({ issuer: ca, dns: ['a.example'] })).certPem }),
        'svid',
      ],
      [
        'a URI SAN that is no SPIFFE ID',
        async () => ({ certificatePem: (await workloadSvid(ca, 'spiffe://Cluster.local/x')).certPem }),
        'svid',
      ],
      ['evidence of the wrong type', async () => ({ principal: 42 as unknown as string }), 'other'],
    ];
    it.each(cases)('%s', async (_name, evidence, cls) => {
      const r = resolveIdentity(await evidence(), now);
      expect(r.ok).toBe(false);
      if (r.ok) return;
      expect(identityRejectionClass(r.code)).toBe(cls);
      expect(IDENTITY_REJECTION_CLASSES).toContain(cls);
    });
    it('every failure code has a class', () => {
      for (const code of FAILURE_CODES) expect(IDENTITY_REJECTION_CLASSES).toContain(identityRejectionClass(code));
    });
  });

  it('caps the tenant series: past the bound every new combination is one overflow series', async () => {
    const metrics = new ServiceMetrics({ maxTenantSeries: 3 });
    for (let i = 0; i < 50; i++) {
      const ns = `allowed-${i}`;
      metrics.observeDecision(
        {
          ...base,
          allow: true,
          reason_class: 'allowed',
          snat_pool: `pool_${i}`,
          identity: { ...base.identity!, namespace: ns },
        },
        undefined,
      );
    }
    const text = await metrics.registry.getSingleMetricAsString('egress_authz_decisions_by_tenant_total');
    const series = text.split('\n').filter((l) => l.startsWith('egress_authz_decisions_by_tenant_total{'));
    expect(series).toHaveLength(4);
    expect(
      sample(
        text,
        'egress_authz_decisions_by_tenant_total',
        `namespace="${OTHER_LABEL}",snat_pool="${OTHER_LABEL}",decision="allow"`,
      ),
    ).toBe(47);
  });
});

describe('Grafana dashboard', () => {
  const dashboard = JSON.parse(
    readFileSync(join(import.meta.dirname, '..', '..', 'deploy', 'grafana', 'egress-authz-dashboard.json'), 'utf8'),
  );
  const panels: { title: string; targets?: { expr: string }[] }[] = dashboard.panels;

  it('queries only metrics the service exports', async () => {
    const exported = new Set((await new ServiceMetrics().registry.getMetricsAsJSON()).map((m) => m.name));
    const used = new Set<string>();
    for (const p of panels)
      for (const t of p.targets ?? [])
        for (const m of t.expr.matchAll(/\b(egress_authz_\w+|grpc_server_\w+)/g))
          used.add(m[1]!.replace(/_(bucket|count|sum)$/, ''));
    expect(used.size).toBeGreaterThanOrEqual(8);
    for (const name of used) expect(exported, `dashboard uses ${name}`).toContain(name);
  });

  it('shows egress per tenant, denials by reason class, p50/p99 latency, reloads, shadow disagreements', () => {
    const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)).join('\n');
    expect(exprs).toMatch(/egress_authz_decisions_by_tenant_total/);
    expect(exprs).toMatch(/reason_class/);
    expect(exprs).toMatch(/histogram_quantile\(0\.5,/);
    expect(exprs).toMatch(/histogram_quantile\(0\.99,/);
    expect(exprs).toMatch(/egress_authz_policy_reloads_total/);
    expect(exprs).toMatch(/egress_authz_shadow_disagreements_total/);
  });
});
