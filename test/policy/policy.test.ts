import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { buildWasmBundle } from '../../src/policy/opa-cli.js';
import { normalisePolicyResult, type LoadedPolicy } from '../../src/policy/policy.js';
import { loadPolicy } from '../../src/lifecycle/bundle-source.js';

const tmp = mkdtempSync(join(tmpdir(), 'policy-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function identity(spiffeId: string) {
  const [, , trustDomain = '', ...rest] = spiffeId.split('/');
  const path = '/' + rest.join('/');
  const m = /^\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(path);
  return {
    spiffe_id: spiffeId,
    trust_domain: trustDomain,
    path,
    ...(m ? { namespace: m[1], service_account: m[2] } : {}),
    source: 'principal',
  };
}

function inputFor(spiffeId: string, destination = { host: 'httpbin.org', port: 443 }) {
  return { caller: 'cli', identity: identity(spiffeId), destination };
}

/** writes a one-file policy folder and returns its path */
function policyFolder(name: string, rego: string, data?: unknown): string {
  const dir = join(tmp, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'policy.rego'), rego);
  if (data !== undefined) writeFileSync(join(dir, 'data.json'), JSON.stringify(data));
  return dir;
}

describe('default policy', () => {
  let fromFolder: LoadedPolicy;
  let fromBundle: LoadedPolicy;

  beforeAll(async () => {
    const bundle = join(tmp, 'default.tar.gz');
    await buildWasmBundle('policies', bundle);
    [fromFolder, fromBundle] = await Promise.all([loadPolicy('policies'), loadPolicy(bundle)]);
  });

  const identities = [
    'spiffe://cluster.local/ns/bookinfo/sa/productpage',
    'spiffe://cluster.local/ns/bookinfo-evil/sa/default',
    'spiffe://cluster.local/ns/sm-apigw-a/sa/default',
    'spiffe://evil.local/ns/bookinfo/sa/x',
    'spiffe://cluster.local/workload',
  ];

  test('a folder and the bundle built from it decide alike', () => {
    for (const id of identities) {
      expect(fromBundle.evaluate(inputFor(id)), id).toEqual(fromFolder.evaluate(inputFor(id)));
    }
    expect(fromFolder.evaluate(inputFor(identities[0]!))).toMatchObject({ ok: true, value: { allow: true } });
  });

  test('bookinfo is allowed through bookinfo_snat', () => {
    expect(fromBundle.evaluate(inputFor('spiffe://cluster.local/ns/bookinfo/sa/productpage'))).toEqual({
      ok: true,
      value: { allow: true, snat_pool: 'bookinfo_snat', reason: 'namespace bookinfo may egress via bookinfo_snat' },
    });
  });

  test.each([
    ['spiffe://cluster.local/ns/sm-apigw-a/sa/default', 'namespace sm-apigw-a has no egress tenant'],
    ['spiffe://cluster.local/ns/bookinfo-evil/sa/default', 'namespace bookinfo-evil has no egress tenant'],
    ['spiffe://cluster.local/ns/bookinfoo/sa/default', 'namespace bookinfoo has no egress tenant'],
    ['spiffe://evil.local/ns/bookinfo/sa/x', 'trust domain evil.local is not allowed'],
    ['spiffe://cluster.local/bookinfo', 'spiffe://cluster.local/bookinfo is not a namespaced workload identity'],
  ])('%s is denied', (id, reason) => {
    expect(fromFolder.evaluate(inputFor(id))).toEqual({ ok: true, value: { allow: false, snat_pool: '', reason } });
  });

  test('a failed identity step is denied with its error as the reason', () => {
    const r = fromFolder.evaluate({
      caller: 'envoy',
      identity: null,
      identity_error: 'certificate has 2 URI SANs',
      destination: { host: '' },
    });
    expect(r).toEqual({ ok: true, value: { allow: false, snat_pool: '', reason: 'certificate has 2 URI SANs' } });
  });

  test('the decision is defined for any input shape', () => {
    for (const input of [
      undefined,
      null,
      {},
      'bookinfo',
      [1, 2],
      { identity: 'spiffe://cluster.local/ns/bookinfo/sa/x' },
    ]) {
      const r = fromFolder.evaluate(input);
      expect(r, JSON.stringify(input)).toMatchObject({ ok: true, value: { allow: false, snat_pool: '' } });
    }
  });

  test('revision is a content hash without a manifest revision, the manifest revision with one', async () => {
    expect(fromBundle.revision).toMatch(/^sha256:[0-9a-f]{12}$/);
    expect(fromFolder.revision).toBe(fromBundle.revision); // opa build is deterministic
    const revised = join(tmp, 'revised.tar.gz');
    await buildWasmBundle('policies', revised, undefined, { revision: 'v42' });
    expect((await loadPolicy(revised)).revision).toBe('v42');
  });

  test('a data overlay adds a tenant without touching the original', async () => {
    const billing = inputFor('spiffe://cluster.local/ns/billing-batch/sa/runner', {
      host: 'billing.legacy.example.com',
      port: 443,
    });
    const overlaid = await fromBundle.withDataOverlay!({
      egress: {
        tenants: { 'billing-batch': { snat_pool: 'billing_snat', destinations: ['billing.legacy.example.com:443'] } },
      },
    });
    expect(overlaid.evaluate(billing)).toMatchObject({ ok: true, value: { allow: true, snat_pool: 'billing_snat' } });
    expect(overlaid.evaluate(inputFor('spiffe://cluster.local/ns/bookinfo/sa/x'))).toMatchObject({
      ok: true,
      value: { allow: true, snat_pool: 'bookinfo_snat' },
    });
    expect(overlaid.revision).toMatch(new RegExp(`^${fromBundle.revision}\\+data:[0-9a-f]{12}$`));
    expect(fromBundle.evaluate(billing)).toMatchObject({ ok: true, value: { allow: false } });
  });
});

describe('policy failures fail closed', () => {
  // decision echoes input.result, so one compiled policy can return any shape; two rules give
  // different values when input.conflict is set, which is a Rego runtime error.
  const echo = `package egress.authz

decision := input.result if not input.conflict

decision := 1 if input.conflict

decision := 2 if input.conflict

slow := count([x | some x in numbers.range(1, input.n)])
`;
  let policy: LoadedPolicy;
  beforeAll(async () => {
    policy = await loadPolicy(policyFolder('echo', echo));
  });

  test('boolean results (opa-envoy-plugin)', () => {
    expect(policy.evaluate({ result: true })).toEqual({
      ok: true,
      value: { allow: true, snat_pool: '', reason: 'allowed by policy' },
    });
    expect(policy.evaluate({ result: false })).toEqual({
      ok: true,
      value: { allow: false, snat_pool: '', reason: 'denied by policy' },
    });
  });

  test('the "allowed" object form (opa-envoy-plugin)', () => {
    const r = policy.evaluate({
      result: { allowed: false, http_status: 451, headers: { 'x-a': 'b', 'x-list': ['1', '2'] }, body: 'no' },
    });
    expect(r).toEqual({
      ok: true,
      value: {
        allow: false,
        snat_pool: '',
        reason: 'denied by policy',
        http_status: 451,
        headers: { 'x-a': 'b', 'x-list': '1, 2' },
        body: 'no',
      },
    });
  });

  test('an error at evaluation is a failure, and the next evaluation works', () => {
    const r = policy.evaluate({ conflict: true });
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toMatch(/^policy evaluation failed: .*conflict/);
    expect(policy.evaluate({ result: true })).toMatchObject({ ok: true, value: { allow: true } });
  });

  test('an undefined result is a failure', () => {
    expect(policy.evaluate({ nothing: true })).toEqual({
      ok: false,
      code: 'policy',
      reason: 'policy result undefined',
    });
  });

  test.each([
    ['a string', 'yes', /must be an object or a boolean, got string/],
    ['a number', 1, /got number/],
    ['an array', [true], /got array/],
    ['no allow field', { snat_pool: 'p' }, /neither "allow" nor "allowed"/],
    ['allow as a string', { allow: 'true' }, /"allow" must be a boolean, got string/],
    ['a numeric pool', { allow: true, snat_pool: 7 }, /"snat_pool" must be a string/],
    ['a bad status', { allow: false, http_status: 99 }, /http_status/],
    ['bad headers', { allow: false, headers: { a: 1 } }, /header "a"/],
    ['disagreeing allow and allowed', { allow: true, allowed: false }, /disagree/],
  ])('garbage result (%s) is a failure', (_name, result, reason) => {
    const r = policy.evaluate({ result });
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toMatch(reason);
  });

  test('an evaluation over budget is a failure', async () => {
    const slow = await loadPolicy(policyFolder('echo', echo), { entrypoint: 'egress/authz/slow', evalBudgetMs: 5 });
    expect(slow.evaluate({ n: 10 })).toEqual({
      ok: false,
      code: 'policy',
      reason: 'policy result must be an object or a boolean, got number',
    });
    const r = slow.evaluate({ n: 300_000 });
    expect(!r.ok && r.reason).toMatch(/^policy evaluation exceeded 5ms \(took [\d.]+ms\)$/);
  });
});

describe('normalisePolicyResult', () => {
  test('our object form keeps the pool on allow and drops it on deny', () => {
    expect(normalisePolicyResult({ allow: true, snat_pool: 'p', reason: 'ok' })).toEqual({
      ok: true,
      value: { allow: true, snat_pool: 'p', reason: 'ok' },
    });
    expect(normalisePolicyResult({ allow: false, snat_pool: 'p', reason: 'no' })).toEqual({
      ok: true,
      value: { allow: false, snat_pool: '', reason: 'no' },
    });
  });

  test('an allow without a pool is an allow with pool ""', () => {
    expect(normalisePolicyResult({ allow: true })).toEqual({
      ok: true,
      value: { allow: true, snat_pool: '', reason: 'allowed by policy' },
    });
  });
});

describe('loading errors', () => {
  test('a corrupt bundle is refused with a clear message', async () => {
    const file = join(tmp, 'corrupt.tar.gz');
    writeFileSync(file, 'not a bundle at all');
    await expect(loadPolicy(file)).rejects.toThrow(
      /^policy .*corrupt\.tar\.gz: bundle is not a gzip-compressed tar file/,
    );
  });

  test('Rego that does not compile is refused with the compiler message', async () => {
    const dir = policyFolder('broken', 'package egress.authz\n\ndecision := {"allow": true\n');
    await expect(loadPolicy(dir)).rejects.toThrow(/opa build failed for .*broken:\n(.|\n)*rego_parse_error/);
  });

  test('a missing entrypoint is refused', async () => {
    const dir = policyFolder('other', 'package egress.authz\n\ndecision := true\n');
    await expect(loadPolicy(dir, { entrypoint: 'egress/authz/nope' })).rejects.toThrow(/egress\/authz\/nope/);
  });

  test('a missing location is refused', async () => {
    await expect(loadPolicy(join(tmp, 'nowhere'))).rejects.toThrow(/^policy .*nowhere: ENOENT/);
  });
});
