// Chain verification over generated PKIs: two trust domains, each a root and an intermediate, as a
// SPIRE server with an upstream authority issues them.
import { X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { ChainVerifier, verifyChain } from '../../src/identity/chain-verify.js';
import { parsePemBlocks } from '../../src/identity/x509-svid.js';
import { parseX509Bundle, X509BundleSet, type X509Bundle } from '../../src/identity/x509-bundle.js';
import { resolveIdentity } from '../../src/identity/identity.js';
import { createCa, KeyUsage, workloadSvid, issue, type CertAuthority } from '../support/pki.js';

const DAY = 86_400_000;
const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/default';
const PARTNER = 'spiffe://partner.example/ns/payments/sa/api';

let local: { root: CertAuthority; inter: CertAuthority };
let partner: { root: CertAuthority; inter: CertAuthority };
let set: X509BundleSet;

function bundle(td: string, ...cas: CertAuthority[]): X509Bundle {
  const r = parseX509Bundle(td, cas.map((c) => c.certPem).join(''));
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

async function domain(td: string) {
  const root = await createCa(`${td} root`, { uris: [`spiffe://${td}`] });
  const inter = await createCa(`${td} intermediate`, { issuer: root, uris: [`spiffe://${td}`] });
  return { root, inter };
}

beforeAll(async () => {
  local = await domain('cluster.local');
  partner = await domain('partner.example');
  set = new X509BundleSet([bundle('cluster.local', local.root), bundle('partner.example', partner.root)]);
});

function outcome(pem: string, td = 'cluster.local', bundles = set, now = new Date()): string {
  const blocks = parsePemBlocks(pem);
  if (!blocks.ok) return blocks.reason;
  const r = verifyChain(blocks.value, td, bundles, now);
  return r.ok ? `verified via ${r.value.intermediates.join(',') || 'root'}` : r.reason;
}

describe('verifyChain', () => {
  it('verifies leaf + intermediate to the root of the leaf’s trust domain', async () => {
    const leaf = await workloadSvid(local.inter, BOOKINFO);
    expect(outcome(leaf.certPem + local.inter.certPem)).toBe('verified via 1');
    const p = await workloadSvid(partner.inter, PARTNER);
    expect(outcome(p.certPem + partner.inter.certPem, 'partner.example')).toBe('verified via 1');
  });

  it('verifies a leaf signed by the root itself (SPIRE without an upstream authority)', async () => {
    const leaf = await workloadSvid(local.root, BOOKINFO);
    expect(outcome(leaf.certPem)).toBe('verified via root');
  });

  it('finds the path whatever the order of the intermediates, ignoring extra ones', async () => {
    const lower = await createCa('cluster.local lower', { issuer: local.inter });
    const leaf = await workloadSvid(lower, BOOKINFO);
    expect(outcome(leaf.certPem + local.inter.certPem + partner.inter.certPem + lower.certPem)).toBe(
      'verified via 3,1',
    );
  });

  it('refuses an unknown trust domain', async () => {
    const leaf = await workloadSvid(local.inter, BOOKINFO);
    expect(outcome(leaf.certPem + local.inter.certPem, 'cluster.local', new X509BundleSet())).toBe(
      'certificate chain not verified: no trust bundle for trust domain cluster.local',
    );
  });

  it("refuses a certificate of one domain signed by the other domain's CA", async () => {
    const forged = await workloadSvid(partner.inter, BOOKINFO);
    expect(outcome(forged.certPem + partner.inter.certPem)).toBe(
      'certificate chain not verified: signed by a CA of trust domain partner.example, not of cluster.local',
    );
    const direct = await workloadSvid(partner.root, BOOKINFO);
    expect(outcome(direct.certPem)).toContain('signed by a CA of trust domain partner.example');
  });

  it('refuses a missing intermediate', async () => {
    const leaf = await workloadSvid(local.inter, BOOKINFO);
    expect(outcome(leaf.certPem)).toBe(
      'certificate chain not verified: no path to a root of trust domain cluster.local (issuer not in the bundle; intermediate missing?)',
    );
  });

  it('refuses an expired or not yet valid intermediate', async () => {
    const expired = await createCa('cluster.local old', {
      issuer: local.root,
      notBefore: new Date(Date.now() - 10 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    const leaf = await workloadSvid(expired, BOOKINFO);
    expect(outcome(leaf.certPem + expired.certPem)).toBe(
      'certificate chain not verified: intermediate certificate 1 has expired',
    );
    const future = await createCa('cluster.local next', { issuer: local.root, notBefore: new Date(Date.now() + DAY) });
    const leaf2 = await workloadSvid(future, BOOKINFO);
    expect(outcome(leaf2.certPem + future.certPem)).toBe(
      'certificate chain not verified: intermediate certificate 1 is not yet valid',
    );
  });

  it('refuses an expired root and an expired leaf', async () => {
    const oldRoot = await createCa('old root', {
      notBefore: new Date(Date.now() - 10 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    const leaf = await workloadSvid(oldRoot, BOOKINFO);
    const bundles = new X509BundleSet([bundle('cluster.local', oldRoot)]);
    expect(outcome(leaf.certPem, 'cluster.local', bundles)).toBe(
      'certificate chain not verified: root of the trust bundle has expired',
    );
    const late = new Date(Date.now() + 3 * DAY);
    const fresh = await workloadSvid(local.root, BOOKINFO);
    expect(outcome(fresh.certPem, 'cluster.local', set, late)).toBe(
      'certificate chain not verified: leaf certificate has expired',
    );
  });

  it('refuses a self-signed leaf', async () => {
    const self = await issue({ uris: [BOOKINFO] });
    expect(outcome(self.certPem)).toBe('certificate chain not verified: leaf certificate is self-signed');
  });

  it('enforces path length limits, of intermediates and roots', async () => {
    const root0 = await createCa('strict root', { pathLength: 0 });
    const inter = await createCa('under strict root', { issuer: root0 });
    const leaf = await workloadSvid(inter, BOOKINFO);
    const bundles = new X509BundleSet([bundle('cluster.local', root0)]);
    expect(outcome(leaf.certPem + inter.certPem, 'cluster.local', bundles)).toBe(
      'certificate chain not verified: root of the trust bundle allows 0 intermediate(s) below it, the path has 1',
    );
    const inter0 = await createCa('strict intermediate', { issuer: local.root, pathLength: 0 });
    const lower = await createCa('below strict intermediate', { issuer: inter0 });
    const leaf2 = await workloadSvid(lower, BOOKINFO);
    expect(outcome(leaf2.certPem + lower.certPem + inter0.certPem)).toBe(
      'certificate chain not verified: intermediate certificate 2 allows 0 intermediate(s) below it, the path has 1',
    );
  });

  it('refuses an intermediate without keyCertSign', async () => {
    const noSign = await createCa('no keyCertSign', {
      issuer: local.root,
      keyUsage: KeyUsage.cRLSign | KeyUsage.digitalSignature,
    });
    const leaf = await workloadSvid(noSign, BOOKINFO);
    // OpenSSL's checkIssued already refuses an issuer whose key usage forbids signing certificates.
    expect(outcome(leaf.certPem + noSign.certPem)).toMatch(
      /^certificate chain not verified: (no path|intermediate certificate 1 is not usable)/,
    );
  });

  it('refuses a chain whose intermediate was swapped for another with the same name', async () => {
    const impostor = await createCa('cluster.local intermediate', { uris: ['spiffe://cluster.local'] });
    const leaf = await workloadSvid(local.inter, BOOKINFO);
    expect(outcome(leaf.certPem + impostor.certPem)).toContain('no path to a root of trust domain cluster.local');
  });
});

describe('ChainVerifier (the cached path decides like verifyChain)', () => {
  it('caches a success per bundle generation; a rotation re-verifies and refuses the old root', async () => {
    const bundles = new X509BundleSet([bundle('cluster.local', local.root)]);
    const verifier = new ChainVerifier(bundles);
    const pem = (await workloadSvid(local.inter, BOOKINFO)).certPem + local.inter.certPem;
    expect(verifier.verifyPem(pem, 'cluster.local', new Date()).ok).toBe(true);
    expect(verifier.verifyPem(pem, 'cluster.local', new Date()).ok).toBe(true);
    expect([verifier.hits, verifier.misses]).toEqual([1, 1]);
    // Rotation: the bundle now holds only a new root; the cached success must not survive.
    const next = await createCa('cluster.local root 2');
    bundles.replace('static', [bundle('cluster.local', next)]);
    const after = verifier.verifyPem(pem, 'cluster.local', new Date());
    expect(after.ok ? 'verified' : after.reason).toContain('no path to a root of trust domain cluster.local');
    // Overlap (old and new root) verifies both generations of SVIDs.
    bundles.replace('static', [bundle('cluster.local', local.root, next)]);
    expect(verifier.verifyPem(pem, 'cluster.local', new Date()).ok).toBe(true);
    const newLeaf = (await workloadSvid(next, BOOKINFO)).certPem;
    expect(verifier.verifyPem(newLeaf, 'cluster.local', new Date()).ok).toBe(true);
  });

  it('keys a long chain text by its hash, and never lets a hash-shaped text find an entry', async () => {
    const verifier = new ChainVerifier(set);
    const pem = (await workloadSvid(local.inter, BOOKINFO)).certPem + '\n'.repeat(9000) + local.inter.certPem;
    expect(verifier.verifyPem(pem, 'cluster.local', new Date()).ok).toBe(true);
    expect(verifier.verifyPem(pem, 'cluster.local', new Date()).ok).toBe(true);
    expect(verifier.hits).toBe(1);
    const lookalike = verifier.verifyPem('sha256:00', 'cluster.local', new Date());
    expect(lookalike.ok).toBe(false);
    expect(verifier.hits).toBe(1);
  });

  it('re-checks expiry on a cache hit', async () => {
    const shortLived = await createCa('short intermediate', {
      issuer: local.root,
      notAfter: new Date(Date.now() + 60_000),
    });
    const pem = (await workloadSvid(shortLived, BOOKINFO)).certPem + shortLived.certPem;
    const verifier = new ChainVerifier(set);
    expect(verifier.verifyPem(pem, 'cluster.local', new Date()).ok).toBe(true);
    const later = verifier.verifyPem(pem, 'cluster.local', new Date(Date.now() + 120_000));
    expect(later.ok ? 'verified' : later.reason).toBe(
      'certificate chain not verified: intermediate certificate 1 has expired',
    );
  });

  it('agrees with verifyChain over damaged chains, cached and uncached', async () => {
    const leaf = await workloadSvid(local.inter, BOOKINFO);
    const forged = await workloadSvid(partner.inter, BOOKINFO);
    const pieces = [leaf.certPem, local.inter.certPem, partner.inter.certPem, local.root.certPem, forged.certPem];
    const cached = new ChainVerifier(set);
    const uncached = new ChainVerifier(set, { cacheEntries: 0 });
    let seed = 7;
    const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
    for (let i = 0; i < 200; i++) {
      const n = 1 + rnd(4);
      const pem = [pieces[rnd(2) === 0 ? 0 : 4]!, ...Array.from({ length: n - 1 }, () => pieces[1 + rnd(3)]!)].join('');
      const careful = outcome(pem);
      for (const v of [cached, uncached, cached]) {
        const r = v.verifyPem(pem, 'cluster.local', new Date());
        expect(r.ok ? `verified via ${r.value.intermediates.join(',') || 'root'}` : r.reason).toBe(careful);
      }
    }
    expect(cached.hits).toBeGreaterThan(0);
  });
});

describe('resolveIdentity with chain verification', () => {
  it('is a deny with the reason when the chain does not verify, the identity when it does', async () => {
    const verifier = new ChainVerifier(set);
    const leaf = await workloadSvid(local.inter, BOOKINFO);
    const ok = resolveIdentity({ certificatePem: leaf.certPem + local.inter.certPem }, new Date(), {
      verifyChain: verifier,
    });
    expect(ok.ok && ok.value.spiffe_id).toBe(BOOKINFO);
    const missing = resolveIdentity({ certificatePem: leaf.certPem }, new Date(), { verifyChain: verifier });
    expect(missing.ok ? 'ok' : missing.reason).toContain('no path to a root');
    const none = resolveIdentity({ principal: BOOKINFO }, new Date(), { verifyChain: verifier });
    expect(none.ok ? 'ok' : none.reason).toBe('certificate chain not verified: no peer certificate was sent');
    // Without verification the shape check alone accepts the leaf (Envoy / BIG-IP verified it).
    expect(resolveIdentity({ certificatePem: leaf.certPem }).ok).toBe(true);
  });
});

describe('ChainVerifier cache: keyed by a hash of the text, bounded in bytes, least recently used out', () => {
  // Distinct texts of one chain (blank lines between the certificates): each is its own cache key, as
  // each distinct chain a workload sends is, and each is verified in full on a miss.
  async function chainTexts(n: number): Promise<string[]> {
    const leaf = (await workloadSvid(local.inter, BOOKINFO)).certPem;
    return Array.from({ length: n }, (_, i) => leaf + '\n'.repeat(i) + local.inter.certPem);
  }

  it('evicts by bytes, the least recently used first; the entry count is not the bound', async () => {
    const [a, b, c, d] = await chainTexts(4);
    const probe = new ChainVerifier(set);
    expect(probe.verifyPem(a!, 'cluster.local', new Date()).ok).toBe(true);
    const perEntry = probe.cacheStats().bytes;
    expect(perEntry).toBeGreaterThan(0);
    // A fixed-size key: a chain text 5,000 characters longer costs no more.
    expect(perEntry).toBeLessThan(a!.length);

    const verifier = new ChainVerifier(set, { cacheEntries: 1000, cacheBytes: 3 * perEntry + perEntry / 2 });
    const now = new Date();
    for (const pem of [a, b, c]) expect(verifier.verifyPem(pem!, 'cluster.local', now).ok).toBe(true);
    expect(verifier.verifyPem(a!, 'cluster.local', now).ok).toBe(true); // a is now the most recent
    expect(verifier.verifyPem(d!, 'cluster.local', now).ok).toBe(true); // pushes out b, the least recent
    expect(verifier.cacheStats()).toMatchObject({ entries: 3, evictions: 1, bytes: 3 * perEntry });
    const hitsBefore = verifier.hits;
    for (const pem of [a, c, d]) expect(verifier.verifyPem(pem!, 'cluster.local', now).ok).toBe(true);
    expect(verifier.hits).toBe(hitsBefore + 3);
    expect(verifier.verifyPem(b!, 'cluster.local', now).ok).toBe(true);
    expect(verifier.hits).toBe(hitsBefore + 3); // b was evicted: verified again
    expect(verifier.cacheStats().bytes).toBeLessThanOrEqual(verifier.cacheStats().maxBytes);
  });

  it('keeps 5,000 distinct chains by default (the 1,024-entry Map missed them all on a second pass)', async () => {
    const texts = await chainTexts(5000);
    const verifier = new ChainVerifier(set);
    const now = new Date();
    for (const pem of texts) expect(verifier.verifyPem(pem, 'cluster.local', now).ok).toBe(true);
    expect([verifier.hits, verifier.misses]).toEqual([0, 5000]);
    for (const pem of texts) expect(verifier.verifyPem(pem, 'cluster.local', now).ok).toBe(true);
    expect([verifier.hits, verifier.misses]).toEqual([5000, 5000]);
    expect(verifier.cacheStats()).toMatchObject({ entries: 5000, evictions: 0 });
    // Room for 100,000 workloads within the default bound.
    expect((verifier.cacheStats().bytes / 5000) * 100_000).toBeLessThanOrEqual(verifier.cacheStats().maxBytes);
  }, 120_000);

  it('answers a hit exactly as the verification did (trust domain, path, root, validity window)', async () => {
    const [pem] = await chainTexts(1);
    const verifier = new ChainVerifier(set);
    const now = new Date();
    const first = verifier.verifyPem(pem!, 'cluster.local', now);
    const second = verifier.verifyPem(pem!, 'cluster.local', now);
    expect(verifier.hits).toBe(1);
    expect(second).toEqual(first);
    expect(first.ok && first.value.rootFingerprint).toBe(new X509Certificate(local.root.certPem).fingerprint256);
    const blocks = parsePemBlocks(pem!);
    expect(second).toEqual(verifyChain(blocks.ok ? blocks.value : [], 'cluster.local', set, now));
  });

  it('re-verifies a cached chain for another trust domain, a rotated bundle, an expired intermediate', async () => {
    const bundles = new X509BundleSet([bundle('cluster.local', local.root), bundle('partner.example', partner.root)]);
    const shortLived = await createCa('short intermediate 2', {
      issuer: local.root,
      notAfter: new Date(Date.now() + 60_000),
    });
    const pem = (await workloadSvid(shortLived, BOOKINFO)).certPem + shortLived.certPem;
    const verifier = new ChainVerifier(bundles);
    expect(verifier.verifyPem(pem, 'cluster.local', new Date()).ok).toBe(true);
    const foreign = verifier.verifyPem(pem, 'partner.example', new Date());
    expect(foreign.ok ? 'verified' : foreign.reason).toContain('not of partner.example');
    expect(verifier.verifyPem(pem, 'cluster.local', new Date()).ok).toBe(true);
    const expired = verifier.verifyPem(pem, 'cluster.local', new Date(Date.now() + 120_000));
    expect(expired.ok ? 'verified' : expired.reason).toBe(
      'certificate chain not verified: intermediate certificate 1 has expired',
    );
    bundles.replace('static', [bundle('cluster.local', await createCa('cluster.local root 3'))]);
    const rotated = verifier.verifyPem(pem, 'cluster.local', new Date());
    expect(rotated.ok ? 'verified' : rotated.reason).toContain('no path to a root of trust domain cluster.local');
    // Failures are never kept: the refused chain left the cache, and asking again verifies again.
    expect(verifier.cacheStats().entries).toBe(0);
    const misses = verifier.misses;
    expect(verifier.verifyPem(pem, 'cluster.local', new Date()).ok).toBe(false);
    expect(verifier.misses).toBe(misses + 1);
  });

  it('with cacheEntries 0 keeps nothing and verifies every time', async () => {
    const [pem] = await chainTexts(1);
    const verifier = new ChainVerifier(set, { cacheEntries: 0 });
    for (let i = 0; i < 3; i++) expect(verifier.verifyPem(pem!, 'cluster.local', new Date()).ok).toBe(true);
    expect([verifier.hits, verifier.misses]).toEqual([0, 3]);
    expect(verifier.cacheStats()).toMatchObject({ entries: 0, bytes: 0 });
  });
});
