// The input a policy can see, read off its source at build time; and the guarantee that makes it safe
// to use: projecting the input and remembering answers never changes a decision.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBundleFiles } from '../../src/policy/bundle.js';
import { inputFootprint } from '../../src/policy/input-footprint.js';
import { locateOpa } from '../../src/policy/opa-cli.js';
import { memoTotals, policyMemoBytes, type LoadedPolicy } from '../../src/policy/policy.js';
import { loadPolicy } from '../../src/lifecycle/bundle-source.js';

const mod = (body: string) => `package egress.authz\n\n${body}\n`;

describe('inputFootprint', () => {
  it('collects the top-level fields of input.<field> references across modules', () => {
    const f = inputFootprint([
      mod('decision := {"allow": true} if input.identity.namespace == "bookinfo"'),
      mod('x if input.destination.host\ny if input.attributes.request.http.headers["x-a"]'),
    ]);
    expect(f).toEqual({ keys: ['attributes', 'destination', 'identity'], deterministic: true, why: '' });
  });

  it('gives up on any use of input as a whole', () => {
    for (const body of [
      'x := input',
      'x := object.get(input, "identity", {})',
      'x if input["identity"]',
      'x if { some k; input[k] }',
      'x if walk(input, [p, v])',
      'x := json.marshal(input)',
      'x if y with input as {}',
    ]) {
      expect(inputFootprint([mod(body)]).keys, body).toBeNull();
    }
  });

  it('is not fooled by strings, comments, or names that merely contain "input"', () => {
    const f = inputFootprint([
      mod(
        '# x := input\nmsg := "input is \\"whatever\\" the caller sent"\nraw := `input[0]`\nmy_input := 1\ninput_x := 2\nz := data.input.y\nw if input.caller',
      ),
    ]);
    expect(f.keys).toEqual(['caller']);
  });

  it('gives up on template strings, whose expressions it does not read', () => {
    expect(inputFootprint([mod('msg := $"{input.secret}"')]).keys).toBeNull();
  });

  it('marks policies that use the clock, randomness, the network or the runtime as not deterministic', () => {
    for (const call of [
      'time.now_ns()',
      'rand.intn("x", 10)',
      'uuid.rfc4122("x")',
      'http.send({})',
      'opa.runtime()',
      'print(input.caller)',
    ]) {
      const f = inputFootprint([mod(`x := ${call}\ny if input.caller`)]);
      expect(f.deterministic, call).toBe(false);
      expect(f.why).toMatch(/calls /);
    }
    expect(inputFootprint([mod('x := time.parse_rfc3339_ns("2026-01-01T00:00:00Z")')]).deterministic).toBe(true);
  });

  it('knows nothing without source', () => {
    expect(inputFootprint([]).keys).toBeNull();
  });
});

describe('projected and remembered evaluation', () => {
  let dir: string;
  const policies: Record<string, LoadedPolicy> = {};

  const folder = (name: string, rego: string): string => {
    const d = join(dir, name);
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, 'policy.rego'), rego);
    return d;
  };
  const identity = (ns: string) => ({
    spiffe_id: `spiffe://cluster.local/ns/${ns}/sa/a`,
    trust_domain: 'cluster.local',
    path: `/ns/${ns}/sa/a`,
    namespace: ns,
    service_account: 'a',
    source: 'principal',
  });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'footprint-'));
    // The entrypoint rule itself reads input.attributes: a Wasm bundle carries no source for it, so only
    // the build-time scan of the folder can know.
    const header = folder(
      'header',
      mod(
        'default decision := {"allow": false, "snat_pool": "", "reason": "no"}\n\ndecision := {"allow": true, "snat_pool": input.attributes.request.http.headers["x-pool"], "reason": "header"} if input.identity.namespace == "bookinfo"',
      ),
    );
    const whole = folder(
      'whole',
      mod(
        'default decision := {"allow": false, "snat_pool": "", "reason": "no"}\n\ndecision := {"allow": true, "snat_pool": "p", "reason": "whole"} if object.get(input, "flag", false)',
      ),
    );
    const clock = folder(
      'clock',
      mod(
        'default decision := {"allow": false, "snat_pool": "", "reason": "no"}\n\ndecision := {"allow": true, "snat_pool": "p", "reason": "clock"} if { time.now_ns() > 0; input.identity }',
      ),
    );
    // A bundle from plain `opa build`, without our manifest metadata.
    const plainBundle = join(dir, 'plain.tar.gz');
    execFileSync(locateOpa(), ['build', '-t', 'wasm', '-e', 'egress/authz/decision', '-o', plainBundle, '.'], {
      cwd: header,
    });
    Object.assign(policies, {
      memo: await loadPolicy('policies'),
      plain: await loadPolicy('policies', { memoize: false }),
      header: await loadPolicy(header),
      headerPlainBundle: await loadPolicy(plainBundle),
      whole: await loadPolicy(whole),
      clock: await loadPolicy(clock),
    });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('egress-authz build stamps the footprint into the manifest; OPA bundles without it get the whole input', async () => {
    const files = await readBundleFiles(readFileSync('dist/policy/bundle.tar.gz'));
    const manifest = JSON.parse(Buffer.from(files.get('.manifest')!).toString('utf8'));
    expect(manifest.metadata.egress_authz_input).toEqual({
      keys: ['destination', 'identity', 'identity_error'],
      deterministic: true,
      why: '',
      // the stamp names the module it describes (input-footprint.ts)
      module_sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
    });
    expect(manifest.wasm[0].module).toBe('/policy.wasm');
    expect(policies.headerPlainBundle!.inputFootprint).toBeUndefined();
  });

  it('the default policy is projected and remembered; turning it off gives the very same answers', () => {
    expect(policies.memo!.inputFootprint).toMatchObject({
      keys: ['destination', 'identity', 'identity_error'],
      deterministic: true,
    });
    expect(policies.plain!.inputFootprint).toBeUndefined();
    const inputs = [
      {
        caller: 'envoy',
        identity: identity('bookinfo'),
        destination: { host: 'a.example', port: 443 },
        attributes: { x: 1 },
      },
      { caller: 'sideband', identity: identity('bookinfo'), destination: { host: '' } },
      { caller: 'envoy', identity: identity('sm-apigw-a'), destination: { host: 'a.example' } },
      { caller: 'envoy', identity: identity('bookinfo-evil'), destination: { host: 'a.example' } },
      {
        caller: 'envoy',
        identity: { ...identity('bookinfo'), trust_domain: 'evil.local' },
        destination: { host: 'a.example' },
      },
      { caller: 'envoy', identity: null, identity_error: 'certificate has expired', destination: { host: '' } },
    ];
    for (let round = 0; round < 3; round++) {
      for (const input of inputs)
        expect(policies.memo!.evaluate(input), JSON.stringify(input)).toEqual(policies.plain!.evaluate(input));
    }
  });

  it('a field only the entrypoint rule reads is still seen, and remembered per value', () => {
    for (const p of [policies.header!, policies.headerPlainBundle!]) {
      const at = (pool: string) => ({
        identity: identity('bookinfo'),
        attributes: { request: { http: { headers: { 'x-pool': pool } } } },
      });
      expect(p.evaluate(at('one'))).toMatchObject({ ok: true, value: { snat_pool: 'one' } });
      expect(p.evaluate(at('two'))).toMatchObject({ ok: true, value: { snat_pool: 'two' } });
      expect(p.evaluate(at('one'))).toMatchObject({ ok: true, value: { snat_pool: 'one' } });
    }
    expect(policies.header!.inputFootprint).toMatchObject({ keys: ['attributes', 'identity'], deterministic: true });
  });

  it('a policy that reads input as a whole gets the whole input', () => {
    expect(policies.whole!.inputFootprint?.keys).toBeNull();
    expect(policies.whole!.evaluate({ flag: true })).toMatchObject({ ok: true, value: { allow: true } });
    expect(policies.whole!.evaluate({ flag: false })).toMatchObject({ ok: true, value: { allow: false } });
  });

  it('a policy that reads the clock is projected but never remembered', () => {
    expect(policies.clock!.inputFootprint).toMatchObject({
      keys: ['identity'],
      deterministic: false,
      why: 'calls time.now_ns',
    });
    // (the Wasm SDK may not provide time.now_ns: then the answer is a failure, never a throw)
    expect(typeof policies.clock!.evaluate({ identity: identity('bookinfo') }).ok).toBe('boolean');
  });

  it('a data overlay starts with nothing remembered', async () => {
    const input = { identity: identity('payments'), destination: { host: 'a.example' } };
    expect(policies.memo!.evaluate(input)).toMatchObject({ ok: true, value: { allow: false } });
    const overlaid = await policies.memo!.withDataOverlay!({
      egress: { tenants: { payments: { snat_pool: 'payments_snat' } } },
    });
    expect(overlaid.evaluate(input)).toMatchObject({ ok: true, value: { allow: true, snat_pool: 'payments_snat' } });
    expect(policies.memo!.evaluate(input)).toMatchObject({ ok: true, value: { allow: false } });
  });

  it('remembers answers within a byte bound, least recently used out, counting hits and misses', async () => {
    // A generous evaluation budget: a loaded test machine must not turn an answer into a failure here.
    const small = await loadPolicy('policies', { memoBytes: 64 * 1024, evalBudgetMs: 10_000 });
    const plain = await loadPolicy('policies', { memoize: false, evalBudgetMs: 10_000 });
    const hitsBefore = memoTotals.hits;
    const missesBefore = memoTotals.misses;
    const input = (i: number) => ({
      identity: identity(i % 2 ? 'bookinfo' : `ns-${i}`),
      destination: { host: `h${i}.example`, port: 443 },
    });
    for (let i = 0; i < 3000; i++) {
      expect(small.evaluate(input(i))).toEqual(plain.evaluate(input(i)));
      expect(policyMemoBytes()).toBeLessThanOrEqual(64 * 1024);
    }
    expect(policyMemoBytes()).toBeGreaterThan(32 * 1024);
    // the most recent inputs are still remembered, the first ones gone
    expect(small.evaluate(input(2999))).toEqual(plain.evaluate(input(2999)));
    expect(memoTotals.hits - hitsBefore).toBe(1);
    small.evaluate(input(0));
    expect(memoTotals.misses - missesBefore).toBe(3001);
  });
});
