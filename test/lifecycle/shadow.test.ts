// Shadow roll-out: a candidate policy answers every check beside the live one; only the live answer
// goes back to the caller, and each disagreement is logged (live vs shadow, identity, reasons) and counted.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MutablePolicySource } from '../../src/service/service.js';
import { loadPolicy } from '../../src/lifecycle/bundle-source.js';
import {
  check,
  checkClient,
  checkRequest,
  startTestService,
  type CheckClient,
  type TestService,
} from '../support/service.js';
import { BOOKINFO, metricsText, policyVariant, sample, snatPool, waitFor } from './support.js';

const APIGW = 'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools';
const STRANGER = 'spiffe://cluster.local/ns/nobody/sa/default';

describe('shadow policy', () => {
  let root: string;
  let svc: TestService;
  let client: CheckClient;
  let shadow: MutablePolicySource;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'egress-authz-shadow-'));
    // The candidate moves bookinfo to a new pool and opens egress for sm-apigw-a.
    shadow = new MutablePolicySource(
      await loadPolicy(
        policyVariant(root, 'candidate', { pool: 'bookinfo_snat_v2', tenants: { 'sm-apigw-a': 'apigw_snat' } }),
      ),
    );
    svc = await startTestService({ shadowPolicies: shadow });
    client = checkClient(svc.grpcPort);
  });
  afterAll(async () => {
    client?.close();
    await svc?.close(1000);
    rmSync(root, { recursive: true, force: true });
  });

  const disagreements = () => svc.logLines.filter((l) => l['msg'] === 'shadow policy disagrees');

  it('never changes the live answer; logs and counts each disagreement with both sides', async () => {
    const allowed = await check(client, checkRequest({ principal: BOOKINFO }));
    expect(allowed.status.code).toBe(0);
    expect(snatPool(allowed)).toBe('bookinfo_snat');
    const denied = await check(client, checkRequest({ principal: APIGW }));
    expect(denied.status.code).toBe(7);
    await check(client, checkRequest({ principal: STRANGER })); // denied by both: no disagreement
    await waitFor(() => disagreements().length >= 2, 2000, 'two shadow disagreements');
    await new Promise((r) => setTimeout(r, 50)); // a third one would have been logged by now

    const lines = disagreements();
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({
      level: 40,
      caller: 'envoy',
      spiffe_id: BOOKINFO,
      namespace: 'bookinfo',
      disagreement: 'pool_changed',
      live: { allow: true, snat_pool: 'bookinfo_snat', reason: 'namespace bookinfo may egress via bookinfo_snat' },
      shadow: { allow: true, snat_pool: 'bookinfo_snat_v2', policy_revision: shadow.current!.revision },
    });
    expect(lines[0]!['decision_id']).toBe(svc.decisions[0]!.decision_id);
    expect(lines[1]).toMatchObject({
      spiffe_id: APIGW,
      disagreement: 'deny_to_allow',
      live: { allow: false, snat_pool: '' },
      shadow: { allow: true, snat_pool: 'apigw_snat' },
    });

    const text = await metricsText(svc.httpPort);
    expect(sample(text, 'egress_authz_shadow_disagreements_total', 'kind="pool_changed"')).toBe(1);
    expect(sample(text, 'egress_authz_shadow_disagreements_total', 'kind="deny_to_allow"')).toBe(1);
    expect(sample(text, 'egress_authz_shadow_disagreements_total', 'kind="allow_to_deny"')).toBe(0);
    expect(sample(text, 'egress_authz_shadow_evaluations_total', 'result="compared"')).toBe(3);
    // the live decisions, as logged, are the live policy's
    expect(svc.decisions.map((d) => d.snat_pool)).toEqual(['bookinfo_snat', '', '']);
  });

  it('a check without identity is not compared (neither policy is asked)', async () => {
    const before = disagreements().length;
    const res = await check(client, checkRequest({}));
    expect(res.status.code).toBe(7);
    await new Promise((r) => setTimeout(r, 20));
    expect(disagreements().length).toBe(before);
    expect(sample(await metricsText(svc.httpPort), 'egress_authz_shadow_evaluations_total', 'result="compared"')).toBe(
      3,
    );
  });

  it('a stricter candidate: allow_to_deny', async () => {
    shadow.current = await loadPolicy(policyVariant(root, 'strict', { pool: '' })); // bookinfo loses its pool: denied
    await check(client, checkRequest({ principal: BOOKINFO }));
    await waitFor(() => disagreements().some((l) => l['disagreement'] === 'allow_to_deny'), 2000, 'allow_to_deny');
    expect(disagreements().at(-1)).toMatchObject({
      shadow: { allow: false, reason: 'tenant bookinfo has no SNAT pool configured' },
    });
  });
});
