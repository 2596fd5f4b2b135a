import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkloadApiClient, workloadApiTarget } from '../../src/spiffe/workload-api.js';
import { X509Source } from '../../src/spiffe/x509-source.js';
import { parseX509SvidResponse } from '../../src/spiffe/x509-context.js';
import { createCa, workloadSvid, type CertAuthority } from '../support/pki.js';
import { FakeWorkloadApi, svidMessage } from './fake-workload-api.js';

const ID = 'spiffe://cluster.local/ns/egress-authz/sa/egress-authz';
const fast = { initialMs: 50, maxMs: 200 };

async function waitFor(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('Workload API address', () => {
  it('takes the forms of SPIFFE_ENDPOINT_SOCKET and a bare absolute path', () => {
    for (const a of ['unix:///run/spire/agent.sock', 'unix:/run/spire/agent.sock', '/run/spire/agent.sock'])
      expect(workloadApiTarget(a)).toEqual({ ok: true, value: 'unix:///run/spire/agent.sock' });
  });
  it('refuses relative paths, TCP and other schemes with a reason', () => {
    for (const a of ['agent.sock', 'unix:agent.sock', 'tcp://127.0.0.1:8081', 'http://x/y', '', 'unix://'])
      expect(workloadApiTarget(a).ok, a).toBe(false);
    expect(workloadApiTarget('tcp://127.0.0.1:8081')).toMatchObject({ reason: expect.stringContaining('only unix:') });
  });
});

describe('Workload API messages', () => {
  it('property: damaged chains, keys and bundles are refused with a reason, never thrown', async () => {
    const ca = await createCa('A');
    const good = svidMessage(ID, await workloadSvid(ca, ID), [ca]);
    fc.assert(
      fc.property(
        fc.constantFrom<'x509Svid' | 'x509SvidKey' | 'bundle'>('x509Svid', 'x509SvidKey', 'bundle'),
        fc.nat(),
        fc.uint8Array({ maxLength: 300 }),
        (field, cutAt, junk) => {
          const original = good[field];
          const damaged = Buffer.concat([original.subarray(0, cutAt % original.length), junk]);
          const r = parseX509SvidResponse({ svids: [{ ...good, [field]: damaged }] });
          if (!r.ok) expect(r.reason).toMatch(/^Workload API update, SVID 0: /);
        },
      ),
      { numRuns: 100 },
    );
  });

  it('takes federated bundles keyed by trust domain name or by its SPIFFE ID (as SPIRE sends them)', async () => {
    const ca = await createCa('A');
    const partner = await createCa('P');
    const r = parseX509SvidResponse({
      svids: [svidMessage(ID, await workloadSvid(ca, ID), [ca])],
      federatedBundles: { 'spiffe://partner.example': partner.der, 'other.example': partner.der },
    });
    expect(r.ok && [...r.value.bundles.keys()].sort()).toEqual(['cluster.local', 'other.example', 'partner.example']);
  });
});

describe('X509Source against a Workload Endpoint', () => {
  let dir: string;
  let ca: CertAuthority;
  let partnerCa: CertAuthority;
  let agent: FakeWorkloadApi;
  let socket: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egress-authz-wl-'));
    socket = join(dir, 'agent.sock');
    ca = await createCa('cluster.local CA');
    partnerCa = await createCa('partner.example CA');
    agent = new FakeWorkloadApi(socket);
    await agent.start();
    agent.pushSvids({
      svids: [svidMessage(ID, await workloadSvid(ca, ID), [ca])],
      federatedBundles: { 'partner.example': partnerCa.der },
    });
  });
  afterAll(() => {
    agent.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('fetches the SVID with the security metadata, and the bundles of both trust domains', async () => {
    const opened = await X509Source.open(`unix://${socket}`, { backoff: fast, waitMs: 5000 });
    expect(opened.ok).toBe(true);
    if (!opened.ok) return;
    const source = opened.value;
    try {
      expect(agent.refusedCalls).toBe(0);
      expect(source.svid.spiffeId).toBe(ID);
      expect(source.svid.chain[0]!.checkIssued(source.bundleFor('cluster.local')!.authorities[0]!)).toBe(true);
      expect(source.bundleFor('partner.example')!.authorities.map((c) => c.raw)).toEqual([Buffer.from(partnerCa.der)]);
      expect(source.bundleFor('unknown.example')).toBeUndefined();
      // the listeners trust only the own trust domain's CA for callers
      expect(source.tls.current.ca!.toString()).toBe(source.bundleFor('cluster.local')!.authorities[0]!.toString());
      expect(source.tls.current.cert.toString()).toContain('BEGIN CERTIFICATE');
    } finally {
      source.close();
    }
  });

  it('applies a rotation atomically and refuses a damaged update, keeping the last good SVID', async () => {
    const errors: string[] = [];
    const opened = await X509Source.open(socket, { backoff: fast, onError: (r) => errors.push(r) });
    if (!opened.ok) throw new Error(opened.reason);
    const source = opened.value;
    try {
      const seen: string[] = [];
      source.tls.subscribe((m) => seen.push(m.cert.toString()));
      const rotated = await workloadSvid(ca, ID);
      agent.pushSvids({ svids: [svidMessage(ID, rotated, [ca])] });
      await waitFor(() => seen.length === 1, 5000, 'the rotation');
      expect(source.svid.certPem.replace(/\s/g, '')).toBe(rotated.certPem.replace(/\s/g, ''));
      expect(source.bundleFor('partner.example')).toBeUndefined(); // the whole set is replaced

      const other = await workloadSvid(ca, ID);
      const damaged = [
        { svids: [] },
        { svids: [{ ...svidMessage(ID, other, [ca]), x509SvidKey: svidMessage(ID, rotated, [ca]).x509SvidKey }] },
        { svids: [{ ...svidMessage(ID, other, [ca]), spiffeId: 'spiffe://cluster.local/ns/x/sa/y' }] },
        { svids: [{ ...svidMessage(ID, other, [ca]), x509Svid: Buffer.from([0x30, 0x03, 1, 2, 3]) }] },
        { svids: [{ ...svidMessage(ID, other, [ca]), x509SvidKey: Buffer.from('nope') }] },
        { svids: [svidMessage(ID, other, [ca])], federatedBundles: { 'Bad Domain': partnerCa.der } },
        { svids: [svidMessage(ID, other, [ca])], federatedBundles: { 'partner.example': Buffer.from([1]) } },
      ];
      for (const m of damaged) agent.pushRaw(m);
      await waitFor(() => errors.length >= damaged.length, 5000, 'the refusals');
      expect(errors).toEqual([
        'Workload API update has no X.509-SVID',
        'Workload API update, SVID 0: the private key does not match the certificate',
        "Workload API update, SVID 0: the certificate's SPIFFE ID is not the one announced",
        expect.stringMatching(/^Workload API update, SVID 0: the certificate chain/),
        'Workload API update, SVID 0: the private key is not PKCS#8 DER',
        expect.stringMatching(/^Workload API update: trust domain "Bad Domain": /),
        expect.stringMatching(/^Workload API update: the bundle of partner.example: /),
      ]);
      expect(seen).toHaveLength(1);
      expect(source.svid.certPem.replace(/\s/g, '')).toBe(rotated.certPem.replace(/\s/g, ''));
    } finally {
      source.close();
    }
  });

  it('reconnects with backoff after the agent restarts, and takes the SVID it then pushes', async () => {
    const errors: string[] = [];
    const opened = await X509Source.open(socket, { backoff: fast, onError: (r) => errors.push(r) });
    if (!opened.ok) throw new Error(opened.reason);
    const source = opened.value;
    try {
      const callsBefore = agent.calls;
      agent.stop();
      await waitFor(() => errors.length >= 2, 5000, 'failed reconnects');
      expect(errors[0]).toMatch(/^FetchX509SVID (UNAVAILABLE|CANCELLED|stream ended)/);
      const next = await workloadSvid(ca, ID);
      agent.svidResponse = { svids: [svidMessage(ID, next, [ca])] };
      await agent.start();
      await waitFor(() => source.svid.certPem.replace(/\s/g, '') === next.certPem.replace(/\s/g, ''), 5000, 'new SVID');
      expect(agent.calls).toBeGreaterThan(callsBefore);
      // backoff: with 50 ms doubling to a 200 ms cap, reconnect attempts are spaced, not a busy loop
      expect(errors.length).toBeLessThan(40);
    } finally {
      source.close();
    }
  });

  it('streams bundles only with FetchX509Bundles', async () => {
    agent.pushBundles({ bundles: { 'cluster.local': ca.der, 'partner.example': partnerCa.der } });
    const client = new WorkloadApiClient(`unix://${socket}`, fast);
    const sets: string[][] = [];
    client.watchX509Bundles({ onUpdate: (set) => sets.push([...set.keys()].sort()), onError: () => {} });
    await waitFor(() => sets.length === 1);
    expect(sets[0]).toEqual(['cluster.local', 'partner.example']);
    agent.pushBundles({ bundles: { 'cluster.local': ca.der } });
    await waitFor(() => sets.length === 2);
    expect(sets[1]).toEqual(['cluster.local']);
    client.close();
  });

  it('fails to open with a clear reason when there is no agent at the socket', async () => {
    const t0 = Date.now();
    const opened = await X509Source.open(join(dir, 'missing.sock'), { backoff: fast, waitMs: 600 });
    expect(opened.ok).toBe(false);
    if (opened.ok) return;
    expect(opened.reason).toMatch(
      /^no X.509-SVID from the Workload API at .*missing.sock within 600 ms: FetchX509SVID UNAVAILABLE/,
    );
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('fails to open when the agent has no SVID for this workload yet', async () => {
    const empty = new FakeWorkloadApi(join(dir, 'empty.sock'));
    await empty.start();
    try {
      const opened = await X509Source.open(empty.socketPath, { backoff: fast, waitMs: 400 });
      expect(opened).toMatchObject({ ok: false, reason: expect.stringContaining('no answer') });
    } finally {
      empty.stop();
    }
  });
});
