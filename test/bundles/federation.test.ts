// Federation as an operator runs it: `serve` (the built bin) with one bundle per trust domain
// (cluster.local as PEM, partner.example as SPIFFE bundle JSON); the sideband verifies every chain
// against the bundle of its leaf's trust domain before the policy is asked, and a bundle file rotation
// takes effect without a restart.
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnServe, type ServeProcess } from '../hardening/support.js';
import { createCa, issue, spiffeBundleJson, workloadSvid, type CertAuthority } from '../support/pki.js';

const DAY = 86_400_000;
const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const APIGW = 'spiffe://cluster.local/ns/sm-apigw-a/sa/default';
const PAYMENTS = 'spiffe://partner.example/ns/payments/sa/api';

interface Domain {
  root: CertAuthority;
  inter: CertAuthority;
}

let dir: string;
let local: Domain;
let partner: Domain;
let serve: ServeProcess;
let localBundle: string;

async function domain(td: string): Promise<Domain> {
  const root = await createCa(`${td} root`, { uris: [`spiffe://${td}`] });
  return { root, inter: await createCa(`${td} intermediate`, { issuer: root, uris: [`spiffe://${td}`] }) };
}

async function chainOf(d: Domain, id: string): Promise<string> {
  return (await workloadSvid(d.inter, id)).certPem + d.inter.certPem;
}

async function sideband(pem: string): Promise<{ status: number; decision: string; pool: string; reason: string }> {
  const res = await fetch(`http://127.0.0.1:${serve.httpPort}/v1/sideband`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-pem-file' },
    body: pem,
  });
  await res.text();
  return {
    status: res.status,
    decision: res.headers.get('x-egress-decision') ?? '',
    pool: res.headers.get('x-egress-snat-pool') ?? '',
    reason: res.headers.get('x-egress-reason') ?? '',
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'egress-authz-federation-'));
  local = await domain('cluster.local');
  partner = await domain('partner.example');
  localBundle = join(dir, 'cluster.local.pem');
  writeFileSync(localBundle, local.root.certPem);
  const partnerBundle = join(dir, 'partner.example.json');
  writeFileSync(partnerBundle, await spiffeBundleJson([partner.root], { refreshHint: 60 }));
  serve = await spawnServe([
    '--trust-bundle',
    `cluster.local=${localBundle}`,
    '--trust-bundle',
    `spiffe://partner.example=${partnerBundle}`,
    '--policy-poll-interval',
    '300ms',
  ]);
  // "serving" is logged once the workers listen; ready is once each holds the trust bundles too (until
  // then a worker denies every chain: no bundle for its trust domain). A load balancer waits for /readyz.
  const until = Date.now() + 30_000;
  while ((await fetch(`http://127.0.0.1:${serve.httpPort}/readyz`)).status !== 200) {
    if (Date.now() > until) throw new Error('serve not ready after 30 s');
    await new Promise((r) => setTimeout(r, 50));
  }
}, 60_000);

afterAll(async () => {
  await serve?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('sideband with a bundle per trust domain', () => {
  it('allows bookinfo and the partner tenant, each verified against its own domain, through their pools', async () => {
    expect(await sideband(await chainOf(local, BOOKINFO))).toMatchObject({
      status: 200,
      decision: 'allow',
      pool: 'bookinfo_snat',
    });
    expect(await sideband(await chainOf(partner, PAYMENTS))).toMatchObject({
      status: 200,
      decision: 'allow',
      pool: 'partner_payments_snat',
    });
  });

  it('still lets the policy deny a verified identity (sm-apigw-a)', async () => {
    expect(await sideband(await chainOf(local, APIGW))).toMatchObject({
      status: 403,
      reason: 'namespace sm-apigw-a has no egress tenant',
    });
  });

  it('refuses, with a precise reason and before the policy, every chain that does not verify', async () => {
    const expired = await createCa('cluster.local old intermediate', {
      issuer: local.root,
      notBefore: new Date(Date.now() - 10 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    const stranger = await createCa('evil.local root');
    const cases: [string, string][] = [
      // A cluster.local identity from the partner's CA: the federation forgery.
      [await chainOf(partner, BOOKINFO), 'signed by a CA of trust domain partner.example, not of cluster.local'],
      [(await workloadSvid(partner.root, BOOKINFO)).certPem, 'signed by a CA of trust domain partner.example'],
      [(await workloadSvid(expired, BOOKINFO)).certPem + expired.certPem, 'intermediate certificate 1 has expired'],
      [(await workloadSvid(local.inter, BOOKINFO)).certPem, 'no path to a root of trust domain cluster.local'],
      [(await issue({ uris: [BOOKINFO] })).certPem, 'leaf certificate is self-signed'],
      [
        (await workloadSvid(stranger, 'spiffe://evil.local/ns/bookinfo/sa/x')).certPem,
        'no trust bundle for trust domain evil.local',
      ],
    ];
    for (const [pem, why] of cases) {
      const answer = await sideband(pem);
      expect(answer, why).toMatchObject({ status: 403, decision: 'deny', pool: '' });
      expect(answer.reason, why).toContain(`certificate chain not verified: ${why}`);
    }
    // Every one of those was logged as a deny with its reason (the log is written asynchronously).
    const denies = () => serve.lines.filter((l) => l.msg === 'decision' && /^certificate chain/.test(String(l.reason)));
    await expect.poll(() => denies().length, { timeout: 5000 }).toBeGreaterThanOrEqual(cases.length);
    expect(serve.proc.exitCode).toBeNull();
  });

  it('picks up a rotated bundle file without a restart: old chains refused, new ones accepted', async () => {
    const oldChain = await chainOf(local, BOOKINFO);
    const next = await domain('cluster.local');
    const newChain = await chainOf(next, BOOKINFO);
    expect((await sideband(newChain)).status).toBe(403);
    // Overlap first (both roots), as a CA rotation publishes it, then the new root alone.
    writeFileSync(`${localBundle}.tmp`, local.root.certPem + next.root.certPem);
    renameSync(`${localBundle}.tmp`, localBundle);
    await expect.poll(async () => (await sideband(newChain)).status, { timeout: 10_000 }).toBe(200);
    expect((await sideband(oldChain)).status).toBe(200);
    writeFileSync(`${localBundle}.tmp`, next.root.certPem);
    renameSync(`${localBundle}.tmp`, localBundle);
    await expect.poll(async () => (await sideband(oldChain)).status, { timeout: 10_000 }).toBe(403);
    // serve runs a worker per core; the primary reads the file and hands the bundle to each in turn: the
    // next answer may come from a worker it has not reached yet (a moment; test/workers/trust-bundles.test.ts
    // waits for the primary's report instead), so poll.
    await expect.poll(async () => (await sideband(newChain)).status, { timeout: 10_000 }).toBe(200);
    expect(serve.lines.some((l) => l.msg === 'trust bundle updated' && l.trust_domain === 'cluster.local')).toBe(true);
    // A broken file keeps the last good bundle.
    writeFileSync(localBundle, 'garbage');
    await expect
      .poll(() => serve.lines.some((l) => l.msg === 'trust bundle refresh failed; keeping the previous bundle'), {
        timeout: 10_000,
      })
      .toBe(true);
    expect((await sideband(newChain)).status).toBe(200);
    // Polled: the failure is logged before the primary's next word to the worker that answers /readyz.
    const trustBundles = async () =>
      ((await (await fetch(`http://127.0.0.1:${serve.httpPort}/readyz`)).json()) as Record<string, any>).trust_bundles;
    await expect.poll(trustBundles, { timeout: 10_000 }).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          trust_domain: 'cluster.local',
          ok: false,
          error: expect.stringContaining('no CERTIFICATE'),
        }),
        expect.objectContaining({ trust_domain: 'partner.example', ok: true }),
      ]),
    );
  });
});
