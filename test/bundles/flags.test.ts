// Every trust bundle flag: a wrong value is a usage error (exit 2) or an error at start (exit 1) naming
// the flag, or, for an endpoint that cannot be reached, a running service that denies its trust domain
// with the reason.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseServeConfig } from '../../src/service/config.js';
import { ROOT, spawnServe } from '../hardening/support.js';
import { createCa, workloadSvid, type CertAuthority } from '../support/pki.js';

const run = promisify(execFile);
let dir: string;
let root: CertAuthority;
let good: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'egress-authz-bundle-flags-'));
  root = await createCa('partner.example root');
  good = join(dir, 'good.pem');
  writeFileSync(good, root.certPem);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function reason(...argv: string[]): string {
  const r = parseServeConfig(argv);
  return r.ok ? 'accepted' : r.reason;
}

describe('serve trust bundle flags (parsing)', () => {
  it('reads them into the configuration', () => {
    const r = parseServeConfig([
      '--trust-bundle=cluster.local=/b/cl.pem',
      '--trust-bundle=partner.example=/b/p.json',
      '--trust-bundle-url=partner.example=https://b.partner.example/bundle,spiffe=spiffe://partner.example/spire/server',
      '--verify-peer-chain=on',
    ]);
    if (!r.ok) throw new Error(r.reason);
    expect(r.value.trustBundleFiles.map((f) => f.trustDomain)).toEqual(['cluster.local', 'partner.example']);
    expect(r.value.trustBundleEndpoints[0]).toMatchObject({
      profile: 'https_spiffe',
      endpointTrustDomain: 'partner.example',
    });
    expect(r.value.verifyPeerChain).toBe(true);
    expect(parseServeConfig([]).ok && parseServeConfig([])).toMatchObject({
      value: { trustBundleFiles: [], trustBundleEndpoints: [], verifyPeerChain: false },
    });
  });

  it.each([
    [['--trust-bundle', 'partner.example'], 'expected TRUST_DOMAIN=VALUE'],
    [['--trust-bundle', 'Partner_Example!=x.pem'], '--trust-bundle: trust domain'],
    [['--trust-bundle', 'a.example=x', '--trust-bundle', 'a.example=y'], 'trust domain a.example given twice'],
    [['--trust-bundle-url', 'partner.example=http://b/x'], 'must be https'],
    [['--trust-bundle-url', 'partner.example=https://b/x,spiffe=nope'], 'spiffe=nope'],
    [
      ['--trust-bundle-url', 'partner.example=https://b/x,spiffe=spiffe://hub.example/server'],
      'https_spiffe needs a bundle for hub.example',
    ],
    [['--verify-peer-chain', 'yes'], '--verify-peer-chain takes on or off'],
    [['--verify-peer-chain', 'on'], '--verify-peer-chain on needs trust bundles'],
  ])('%j is refused: %s', (argv, why) => {
    expect(reason(...argv)).toContain(why);
  });

  it('with --spiffe-socket the Workload API counts as a bundle source', () => {
    const socket = ['--spiffe-socket', 'unix:///run/spire/agent.sock'];
    expect(reason(...socket, '--verify-peer-chain', 'on')).toBe('accepted');
    expect(
      reason(...socket, '--trust-bundle-url', 'partner.example=https://b/x,spiffe=spiffe://hub.example/server'),
    ).toBe('accepted');
  });
});

describe('serve trust bundle flags (the process)', () => {
  const serveArgs = ['serve', '--grpc-addr', '127.0.0.1:0', '--http-addr', '127.0.0.1:0'];

  async function exitOf(...argv: string[]): Promise<{ code: number; out: string }> {
    try {
      await run(process.execPath, [join(ROOT, 'dist', 'cli.js'), ...serveArgs, ...argv], { timeout: 30_000 });
      return { code: 0, out: '' };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, out: e.stdout + e.stderr };
    }
  }

  it('a syntax error is a usage error (exit 2) naming the flag', async () => {
    const r = await exitOf('--trust-bundle', 'partner.example');
    expect(r.code).toBe(2);
    expect(r.out).toContain('--trust-bundle "partner.example": expected TRUST_DOMAIN=VALUE');
  });

  it('a missing or unusable bundle file stops serve at start (exit 1) with the reason', async () => {
    const missing = await exitOf('--trust-bundle', `partner.example=${join(dir, 'none.pem')}`);
    expect(missing.code).toBe(1);
    expect(missing.out).toContain('trust bundle not usable; not serving');
    expect(missing.out).toContain('none.pem: ENOENT');
    const leaf = join(dir, 'leaf.pem');
    writeFileSync(leaf, (await workloadSvid(root, 'spiffe://partner.example/ns/a/sa/b')).certPem);
    const notCa = await exitOf('--trust-bundle', `partner.example=${leaf}`);
    expect(notCa.code).toBe(1);
    expect(notCa.out).toContain('bundle authority 0 is not a CA certificate');
  });

  it('an unreachable bundle endpoint: serving, its trust domain denied with the reason, /readyz says why', async () => {
    const serve = await spawnServe([
      '--trust-bundle',
      `cluster.local=${good}`,
      '--trust-bundle-url',
      'partner.example=https://127.0.0.1:1/bundle.json',
    ]);
    try {
      const pem = (await workloadSvid(root, 'spiffe://partner.example/ns/payments/sa/api')).certPem;
      const res = await fetch(`http://127.0.0.1:${serve.httpPort}/v1/sideband`, { method: 'POST', body: pem });
      expect(res.status).toBe(403);
      expect(res.headers.get('x-egress-reason')).toBe(
        'certificate chain not verified: no trust bundle for trust domain partner.example',
      );
      await expect
        .poll(
          async () => {
            const ready = (await (await fetch(`http://127.0.0.1:${serve.httpPort}/readyz`)).json()) as Record<
              string,
              any
            >;
            return ready.trust_bundles?.find((s: { trust_domain: string }) => s.trust_domain === 'partner.example');
          },
          { timeout: 10_000 },
        )
        .toMatchObject({ ok: false, error: expect.stringContaining('endpoint not reached') });
    } finally {
      await serve.stop();
    }
  });
});

describe('eval --cert with --trust-bundle', () => {
  async function evalJson(...argv: string[]): Promise<{ code: number; json?: Record<string, unknown>; err: string }> {
    try {
      const { stdout } = await run(process.execPath, [join(ROOT, 'dist', 'cli.js'), 'eval', ...argv], {
        timeout: 30_000,
      });
      return { code: 0, json: JSON.parse(stdout), err: '' };
    } catch (err) {
      const e = err as { code: number; stderr: string };
      return { code: e.code, err: e.stderr };
    }
  }

  it('verifies the chain like the sideband: allowed when it chains, denied with the reason when not', async () => {
    const other = await createCa('cluster.local root');
    const mine = join(dir, 'mine.pem');
    writeFileSync(mine, (await workloadSvid(other, 'spiffe://cluster.local/ns/bookinfo/sa/x')).certPem);
    const bundleFile = join(dir, 'cluster.pem');
    writeFileSync(bundleFile, other.certPem);
    expect((await evalJson('--cert', mine, '--trust-bundle', `cluster.local=${bundleFile}`)).json).toMatchObject({
      allow: true,
      snat_pool: 'bookinfo_snat',
    });
    expect((await evalJson('--cert', mine, '--trust-bundle', `cluster.local=${good}`)).json).toMatchObject({
      allow: false,
      reason: expect.stringContaining(
        'certificate chain not verified: no path to a root of trust domain cluster.local',
      ),
    });
    const usage = await evalJson('--cert', mine, '--trust-bundle', 'cluster.local');
    expect(usage.code).toBe(2);
    expect(usage.err).toContain('expected TRUST_DOMAIN=VALUE');
    const missing = await evalJson('--cert', mine, '--trust-bundle', `cluster.local=${join(dir, 'nope.pem')}`);
    expect(missing.code).toBe(1);
    expect(missing.err).toContain('nope.pem: ENOENT');
  });
});
