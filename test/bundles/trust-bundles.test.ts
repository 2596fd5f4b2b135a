// Trust bundles from files and from SPIFFE bundle endpoints (https_web and https_spiffe), on loopback,
// with certificates made at test time.
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseX509Bundle, X509BundleSet, type X509Bundle } from '../../src/identity/x509-bundle.js';
import {
  fetchEndpointBundle,
  parseTrustBundleFlag,
  parseTrustBundleUrlFlag,
  TrustBundles,
  type TrustBundleEndpoint,
} from '../../src/lifecycle/trust-bundles.js';
import { createCa, issue, spiffeBundleJson, workloadSvid, type CertAuthority } from '../support/pki.js';

const dir = mkdtempSync(join(tmpdir(), 'trust-bundles-'));
const lines: Record<string, unknown>[] = [];
const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
let partnerRoot: CertAuthority;
let partnerNext: CertAuthority;
let webCa: CertAuthority;
const servers: https.Server[] = [];
const open: TrustBundles[] = [];

beforeAll(async () => {
  partnerRoot = await createCa('partner.example root', { uris: ['spiffe://partner.example'] });
  partnerNext = await createCa('partner.example root 2', { uris: ['spiffe://partner.example'] });
  webCa = await createCa('web pki test root');
});
afterEach(() => {
  for (const t of open.splice(0)) t.stop();
  for (const s of servers.splice(0)) s.close();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A bundle endpoint on 127.0.0.1 with the given server certificate, serving what `body()` returns. */
async function endpoint(
  cert: { certPem: string; keyPem: string },
  body: () => { status?: number; text: string; location?: string },
) {
  const server = https.createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    const b = body();
    res.writeHead(b.status ?? 200, {
      'content-type': 'application/json',
      ...(b.location ? { location: b.location } : {}),
    });
    res.end(b.text);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  servers.push(server);
  return `https://127.0.0.1:${(server.address() as AddressInfo).port}/bundle.json`;
}

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}

function bundle(td: string, ca: CertAuthority): X509Bundle {
  const r = parseX509Bundle(td, ca.certPem);
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

function spiffeEndpoint(url: string, endpointId: string): TrustBundleEndpoint {
  return { trustDomain: 'partner.example', url, profile: 'https_spiffe', endpointId };
}

function rootOf(set: X509BundleSet, td: string): string | undefined {
  return set
    .bundleFor(td)
    ?.authorities.map((c) => c.subject)
    .join('|');
}

function expectRefusals(parse: (t: string) => { ok: boolean; reason?: string }, cases: [string, string][]): void {
  for (const [bad, why] of cases) {
    const r = parse(bad);
    expect(r.ok ? 'accepted' : r.reason, bad).toContain(why);
  }
}

describe('flags', () => {
  it('--trust-bundle TD=FILE', () => {
    expect(parseTrustBundleFlag('partner.example=/etc/b.json')).toEqual({
      ok: true,
      value: { trustDomain: 'partner.example', path: '/etc/b.json' },
    });
    expect(parseTrustBundleFlag('spiffe://cluster.local=a=b.pem')).toEqual({
      ok: true,
      value: { trustDomain: 'cluster.local', path: 'a=b.pem' },
    });
    expectRefusals(parseTrustBundleFlag, [
      ['partner.example', 'expected TRUST_DOMAIN=VALUE'],
      ['=x.pem', 'expected TRUST_DOMAIN=VALUE'],
      ['Partner.Example=x.pem', 'trust domain characters are limited'],
      ['spiffe://a/b=x.pem', 'must not have a path'],
    ]);
  });

  it('--trust-bundle-url TD=URL[,spiffe=ID]', () => {
    expect(parseTrustBundleUrlFlag('partner.example=https://b.partner.example/bundle')).toEqual({
      ok: true,
      value: { trustDomain: 'partner.example', url: 'https://b.partner.example/bundle', profile: 'https_web' },
    });
    const spiffe = parseTrustBundleUrlFlag(
      'partner.example=https://10.0.0.1:8443,spiffe=spiffe://partner.example/spire/server',
    );
    expect(spiffe.ok && spiffe.value).toMatchObject({
      profile: 'https_spiffe',
      endpointId: 'spiffe://partner.example/spire/server',
    });
    expectRefusals(parseTrustBundleUrlFlag, [
      ['partner.example=http://b/bundle', 'must be https'],
      ['partner.example=https://u:p@b/bundle', 'must not contain userinfo'],
      ['partner.example=not a url', 'is not a URL'],
      ['partner.example=https://b/x,spiffe=spiffe://Bad', 'spiffe=spiffe://Bad'],
      ['partner.example=https://b/x,sni=b', 'unknown parameter'],
      ['partner example=https://b/x', 'trust domain'],
    ]);
  });
});

describe('bundle files', () => {
  it('are read at start and re-read when they change (rename over, as a ConfigMap update does)', async () => {
    const file = join(dir, 'partner.json');
    writeFileSync(file, await spiffeBundleJson([partnerRoot]));
    const set = new X509BundleSet();
    const t = await TrustBundles.open(set, [{ trustDomain: 'partner.example', path: file }], [], {
      log,
      filePollMs: 200,
    });
    open.push(t);
    t.start();
    expect(rootOf(set, 'partner.example')).toContain('partner.example root');
    const generation = set.generation;
    writeFileSync(`${file}.new`, partnerNext.certPem);
    renameSync(`${file}.new`, file);
    await waitFor(() => set.generation > generation);
    expect(rootOf(set, 'partner.example')).toContain('root 2');
    // A broken update keeps the previous bundle and says why.
    writeFileSync(file, '{"keys": "nope"}');
    await waitFor(() => t.statuses().some((s) => !s.ok));
    expect(rootOf(set, 'partner.example')).toContain('root 2');
    expect(t.statuses()[0]).toMatchObject({ ok: false, error: 'bundle JSON has no "keys" array' });
  });

  it('refuse to start with a missing or unusable file, naming it', async () => {
    const set = new X509BundleSet();
    await expect(
      TrustBundles.open(set, [{ trustDomain: 'partner.example', path: join(dir, 'none.pem') }], [], { log }),
    ).rejects.toThrow(/--trust-bundle partner.example=.*none.pem: ENOENT/);
    const bad = join(dir, 'bad.pem');
    writeFileSync(bad, 'not a bundle');
    await expect(TrustBundles.open(set, [{ trustDomain: 'partner.example', path: bad }], [], { log })).rejects.toThrow(
      'no CERTIFICATE block',
    );
  });
});

describe('bundle endpoints', () => {
  it('https_web: fetched over Web PKI TLS, refreshed at the refresh hint', async () => {
    const server = await issue({ issuer: webCa, dns: ['localhost'], subject: 'CN=bundle server', uris: [] });
    // issue() makes DNS SANs, so the URL names the host localhost (which resolves to loopback).
    let served = await spiffeBundleJson([partnerRoot], { refreshHint: 1 });
    const url = (await endpoint(server, () => ({ text: served }))).replace('127.0.0.1', 'localhost');
    const set = new X509BundleSet();
    const e: TrustBundleEndpoint = { trustDomain: 'partner.example', url, profile: 'https_web' };
    const t = await TrustBundles.open(set, [], [e], { log, webCa: webCa.certPem, minRefreshMs: 100 });
    open.push(t);
    t.start();
    await waitFor(() => set.bundleFor('partner.example') !== undefined);
    expect(set.bundleFor('partner.example')?.refreshHintSeconds).toBe(1);
    served = await spiffeBundleJson([partnerNext], { refreshHint: 1 });
    await waitFor(() => rootOf(set, 'partner.example')?.includes('root 2') === true, 5000);
  });

  it('https_web: a server the Web PKI does not vouch for is refused', async () => {
    const rogueCa = await createCa('rogue');
    const server = await issue({ issuer: rogueCa, dns: ['localhost'], subject: 'CN=rogue' });
    const url = (await endpoint(server, () => ({ text: '' }))).replace('127.0.0.1', 'localhost');
    const r = await fetchEndpointBundle(
      { trustDomain: 'partner.example', url, profile: 'https_web' },
      new X509BundleSet(),
      webCa.certPem,
    );
    expect(r.ok ? 'accepted' : r.reason).toMatch(
      /^endpoint not reached: .*(self-signed|unable to verify|local issuer)/,
    );
  });

  it('https_spiffe, self-serving: bootstrapped from the file, then authenticated with the fetched bundle', async () => {
    const serverId = 'spiffe://partner.example/spire/server';
    let serverCa = partnerRoot;
    const svidOf = async (ca: CertAuthority) => workloadSvid(ca, serverId, { dns: ['localhost'] });
    let svid = await svidOf(serverCa);
    let served = await spiffeBundleJson([partnerRoot, partnerNext], { refreshHint: 1, sequence: 2 });
    const server = https.createServer(
      { SNICallback: (_n, cb) => cb(null, createSecureContext({ cert: svid.certPem, key: svid.keyPem })) },
      (_req, res) => {
        res.end(served);
      },
    );
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    servers.push(server);
    const url = `https://localhost:${(server.address() as AddressInfo).port}/bundle`;
    const file = join(dir, 'bootstrap.pem');
    writeFileSync(file, partnerRoot.certPem);
    const set = new X509BundleSet();
    const e = spiffeEndpoint(url, serverId);
    const t = await TrustBundles.open(set, [{ trustDomain: 'partner.example', path: file }], [e], {
      log,
      minRefreshMs: 100,
    });
    open.push(t);
    t.start();
    await waitFor(() => set.bundleFor('partner.example')?.authorities.length === 2);
    // The partner rotates: its server now has an SVID from the new root, which only the fetched bundle holds.
    serverCa = partnerNext;
    svid = await svidOf(serverCa);
    served = await spiffeBundleJson([partnerNext], { refreshHint: 1, sequence: 3 });
    await waitFor(() => set.bundleFor('partner.example')?.sequenceNumber === 3, 5000);
    expect(rootOf(set, 'partner.example')).toBe('CN=partner.example root 2\nO=Example Org');
  });

  it('https_spiffe: the wrong SPIFFE ID, a CA of another domain, no bundle for the server are refused', async () => {
    const serverId = 'spiffe://partner.example/spire/server';
    const imposter = await workloadSvid(partnerRoot, 'spiffe://partner.example/ns/x/sa/y', { dns: ['localhost'] });
    const url = (await endpoint(imposter, () => ({ text: '{}' }))).replace('127.0.0.1', 'localhost');
    const set = new X509BundleSet();
    const e = spiffeEndpoint(url, serverId);
    const none = await fetchEndpointBundle(e, set);
    expect(none.ok ? 'accepted' : none.reason).toBe(
      'no trust bundle for trust domain partner.example to authenticate the endpoint with',
    );
    set.replace('test', [bundle('partner.example', partnerRoot)]);
    const wrongId = await fetchEndpointBundle(e, set);
    expect(wrongId.ok ? 'accepted' : wrongId.reason).toContain(
      `presented spiffe://partner.example/ns/x/sa/y, expected ${serverId}`,
    );
    const other = await createCa('cluster.local root');
    const fromOther = await workloadSvid(other, serverId, { dns: ['localhost'] });
    const url2 = (await endpoint(fromOther, () => ({ text: '{}' }))).replace('127.0.0.1', 'localhost');
    const r = await fetchEndpointBundle({ ...e, url: url2 }, set);
    expect(r.ok ? 'accepted' : r.reason).toMatch(
      /^endpoint not reached: .*(unable to verify|local issuer|self-signed)/,
    );
  });

  it('an unreachable endpoint leaves its trust domain without a bundle, with the reason in the status', async () => {
    const set = new X509BundleSet();
    const e: TrustBundleEndpoint = {
      trustDomain: 'partner.example',
      url: 'https://127.0.0.1:1/bundle',
      profile: 'https_web',
    };
    const t = await TrustBundles.open(set, [], [e], { log });
    open.push(t);
    t.start();
    await waitFor(() => t.statuses().length > 0);
    expect(set.bundleFor('partner.example')).toBeUndefined();
    expect(t.statuses()[0]).toMatchObject({
      ok: false,
      error: expect.stringContaining('endpoint not reached: connect ECONNREFUSED'),
    });
  });

  it('answers that are not bundles are refused: HTTP errors, bad JSON, redirects to http', async () => {
    const server = await issue({ issuer: webCa, dns: ['localhost'], subject: 'CN=bundle server' });
    let answer: { status?: number; text: string; location?: string } = { status: 500, text: 'oops' };
    const url = (await endpoint(server, () => answer)).replace('127.0.0.1', 'localhost');
    const e: TrustBundleEndpoint = { trustDomain: 'partner.example', url, profile: 'https_web' };
    const reason = async () => {
      const r = await fetchEndpointBundle(e, new X509BundleSet(), webCa.certPem);
      return r.ok ? 'accepted' : r.reason;
    };
    expect(await reason()).toBe('endpoint answered HTTP 500');
    answer = { text: '{"keys": [' };
    expect(await reason()).toBe('bundle is not valid JSON');
    answer = { status: 302, text: '', location: 'http://localhost/bundle' };
    expect(await reason()).toBe('endpoint redirected to a URL that is not a valid bundle endpoint URL');
    answer = { status: 302, text: '', location: '/again' };
    expect(await reason()).toBe('endpoint redirected more than 3 times');
  });
});
