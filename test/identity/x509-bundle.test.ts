import { X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  bundlesFromWorkloadApi,
  fromPortableBundle,
  parseDerBundle,
  parseTrustDomain,
  parseX509Bundle,
  splitDer,
  toPortableBundle,
  X509BundleSet,
  type X509Bundle,
} from '../../src/identity/x509-bundle.js';
import { createCa, spiffeBundleJson, workloadSvid, type CertAuthority } from '../support/pki.js';

let rootA: CertAuthority;
let rootB: CertAuthority;

beforeAll(async () => {
  rootA = await createCa('cluster.local root', { uris: ['spiffe://cluster.local'] });
  rootB = await createCa('partner.example root', { uris: ['spiffe://partner.example'] });
});

function parsed(td: string, text: string): X509Bundle {
  const r = parseX509Bundle(td, text);
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

function reason(r: { ok: boolean; reason?: string }): string {
  return r.ok ? 'accepted' : (r.reason ?? '');
}

describe('parseTrustDomain', () => {
  it('takes the bare name and the SPIFFE ID form', () => {
    expect(parseTrustDomain('cluster.local')).toEqual({ ok: true, value: 'cluster.local' });
    expect(parseTrustDomain('spiffe://partner.example')).toEqual({ ok: true, value: 'partner.example' });
  });
  it.each([
    ['', 'trust domain is empty'],
    ['Cluster.Local', 'trust domain characters are limited'],
    ['spiffe://cluster.local/ns/x', 'must not have a path'],
    ['cluster.local:443', 'cannot contain a port'],
  ])('refuses %j', (text, why) => {
    expect(reason(parseTrustDomain(text))).toContain(why);
  });
});

describe('parseX509Bundle', () => {
  it('reads PEM, comments between blocks allowed, duplicates folded', () => {
    const b = parsed('cluster.local', `# roots\n${rootA.certPem}\n# again\n${rootA.certPem}`);
    expect(b.trustDomain).toBe('cluster.local');
    expect(b.authorities.map((c) => c.fingerprint256)).toEqual([new X509Certificate(rootA.der).fingerprint256]);
  });

  it('reads SPIFFE bundle JSON with refresh hint and sequence, skipping jwt-svid keys', async () => {
    const jwt = { kty: 'EC', crv: 'P-256', x: 'a', y: 'b', use: 'jwt-svid', kid: 'k1' };
    const text = await spiffeBundleJson([rootA, rootB], { refreshHint: 300, sequence: 7, extraKeys: [jwt] });
    const b = parsed('spiffe://cluster.local', text);
    expect(b.authorities).toHaveLength(2);
    expect(b.refreshHintSeconds).toBe(300);
    expect(b.sequenceNumber).toBe(7);
  });

  it('reads the Workload API form (concatenated DER)', () => {
    const r = parseDerBundle('cluster.local', Buffer.concat([rootA.der, rootB.der]));
    expect(r.ok && r.value.authorities.length).toBe(2);
    expect(reason(parseDerBundle('cluster.local', Buffer.concat([rootA.der, rootB.der.subarray(0, 40)])))).toBe(
      'bundle DER is truncated',
    );
    expect(reason(splitDer(new Uint8Array([0x02, 0x01, 0x00])))).toContain('not a sequence of certificates');
  });

  it('refuses what is not a bundle, with the reason', async () => {
    const leaf = await workloadSvid(rootA, 'spiffe://cluster.local/ns/a/sa/b');
    const good = JSON.parse(await spiffeBundleJson([rootA])) as { keys: Record<string, unknown>[] };
    const withKey = (patch: Record<string, unknown>) => JSON.stringify({ keys: [{ ...good.keys[0], ...patch }] });
    const cases: [string, string][] = [
      ['', 'no CERTIFICATE block'],
      ['hello', 'no CERTIFICATE block'],
      [`${rootA.certPem}${rootA.keyPem}`, 'contains a private key'],
      [leaf.certPem, 'authority 0 is not a CA certificate'],
      ['-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----', 'invalid base64'],
      ['-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----', 'authority 0 is not a valid certificate'],
      ['{', 'not valid JSON'],
      ['{"keys": 1}', 'no "keys" array'],
      ['{"keys": []}', 'no x509-svid key'],
      [withKey({ x5c: [] }), 'exactly one certificate'],
      [withKey({ x5c: [good.keys[0]!.x5c, good.keys[0]!.x5c].flat() }), 'exactly one certificate'],
      [withKey({ x5c: ['a_b-'] }), 'not standard base64'],
      [withKey({ x: (JSON.parse(JSON.stringify(good.keys[0])) as { y: string }).y }), 'key parameters'],
      [withKey({ d: 'secret' }), 'private key material'],
      [JSON.stringify({ keys: good.keys, spiffe_refresh_hint: -1 }), '"spiffe_refresh_hint" must be'],
    ];
    for (const [text, why] of cases) expect(reason(parseX509Bundle('cluster.local', text)), text).toContain(why);
    expect(reason(parseX509Bundle('Bad_TD!', rootA.certPem))).toContain('trust domain');
  });
});

describe('X509BundleSet', () => {
  it('serves each trust domain its own bundle and swaps an origin whole', () => {
    const set = new X509BundleSet();
    const a = parsed('cluster.local', rootA.certPem);
    const b = parsed('partner.example', rootB.certPem);
    expect(set.generation).toBe(0);
    set.replace('workload-api', [a, b]);
    expect(set.generation).toBe(1);
    expect(set.bundleFor('cluster.local')).toBe(a);
    expect(set.trustDomains()).toEqual(['cluster.local', 'partner.example']);
    // The same content again is no change: caches keyed on the generation stay warm.
    const seen: string[][] = [];
    set.subscribe((c) => seen.push(c.changed));
    set.replace('workload-api', [parsed('cluster.local', rootA.certPem), parsed('partner.example', rootB.certPem)]);
    expect(set.generation).toBe(1);
    set.replace('workload-api', [a]);
    expect(set.bundleFor('partner.example')).toBeUndefined();
    expect(set.generation).toBe(2);
    expect(seen).toEqual([['partner.example']]);
  });

  it('keeps a trust domain with the origin that provided it first, and reports the conflict', () => {
    const set = new X509BundleSet();
    const fromFile = parsed('cluster.local', rootA.certPem);
    set.set('file:a.pem', fromFile);
    const change = set.replace('workload-api', [parsed('cluster.local', rootB.certPem)]);
    expect(change.conflicts).toEqual(['cluster.local']);
    expect(set.bundleFor('cluster.local')).toBe(fromFile);
    set.delete('file:a.pem', 'cluster.local');
    // With the file's claim gone, the other origin's bundle takes over.
    expect(set.bundleFor('cluster.local')?.authorities[0]?.fingerprint256).toBe(
      new X509Certificate(rootB.der).fingerprint256,
    );
  });
});

describe('bundlesFromWorkloadApi', () => {
  it('maps trust domain IDs to bundles, refusing the whole update on one bad entry', () => {
    const r = bundlesFromWorkloadApi(
      Object.entries({ 'spiffe://cluster.local': rootA.der, 'spiffe://partner.example': rootB.der }),
    );
    expect(r.ok && r.value.map((b) => b.trustDomain)).toEqual(['cluster.local', 'partner.example']);
    const bad = bundlesFromWorkloadApi([
      ['spiffe://cluster.local', rootA.der],
      ['spiffe://partner.example', new Uint8Array([1, 2, 3])],
    ]);
    expect(bad.ok ? 'ok' : bad.reason).toBe(
      'bundle for "spiffe://partner.example": bundle DER is not a sequence of certificates',
    );
  });
});

describe('portable bundles (the primary of serve --workers to its workers)', () => {
  it('round-trip: same authorities, hint and sequence, as plain data that crosses a structured clone', async () => {
    const b = parsed('partner.example', await spiffeBundleJson([rootB, rootA], { refreshHint: 60, sequence: 7 }));
    const wire = structuredClone(toPortableBundle(b));
    const back = fromPortableBundle(wire);
    expect(back.ok).toBe(true);
    if (!back.ok) return;
    expect(back.value.trustDomain).toBe('partner.example');
    expect(back.value.authorities.map((c) => c.fingerprint256)).toEqual(b.authorities.map((c) => c.fingerprint256));
    expect(back.value).toMatchObject({ refreshHintSeconds: 60, sequenceNumber: 7 });
  });

  it('is checked again on arrival: a leaf, bytes that are not a certificate, a bad trust domain are refused', async () => {
    const leaf = await workloadSvid(rootA, 'spiffe://cluster.local/ns/a/sa/b');
    const good = toPortableBundle(parsed('cluster.local', rootA.certPem));
    expect(reason(fromPortableBundle({ ...good, authorities: [leaf.der] }))).toBe(
      'bundle authority 0 is not a CA certificate',
    );
    expect(reason(fromPortableBundle({ ...good, authorities: [new Uint8Array([0x30, 0x01, 0x00])] }))).toBe(
      'bundle authority 0 is not a valid certificate',
    );
    expect(reason(fromPortableBundle({ ...good, trustDomain: 'spiffe://cluster.local/path' }))).toMatch(/path/);
    expect(reason(fromPortableBundle({ ...good, authorities: ['MII' as unknown as Uint8Array] }))).toBe(
      'bundle authorities are not DER bytes',
    );
    expect(reason(fromPortableBundle(null as unknown as ReturnType<typeof toPortableBundle>))).toBe(
      'not a portable bundle',
    );
  });
});
