import { beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { resolveIdentity, toIdentity } from '../../src/identity/identity.js';
import { parseSpiffeId } from '../../src/identity/spiffe-id.js';
import {
  clearX509SvidCache,
  configureX509SvidCache,
  DEFAULT_SVID_CACHE_ENTRIES,
  parseX509SvidPem,
  x509SvidCacheSize,
  x509SvidCacheStats,
  x509SvidIdMemoStats,
} from '../../src/identity/x509-svid.js';
import { createCa, issue, workloadSvid, type CertAuthority, type IssuedCert } from '../support/pki.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/default';
const OTHER = 'spiffe://cluster.local/ns/bookinfo-evil/sa/default';
const DAY = 86_400_000;

let ca: CertAuthority;
let svid: IssuedCert;

beforeAll(async () => {
  ca = await createCa();
  svid = await workloadSvid(ca, BOOKINFO);
});
beforeEach(() => clearX509SvidCache());

describe('resolveIdentity', () => {
  it('takes the identity from the certificate', () => {
    expect(resolveIdentity({ certificatePem: svid.certPem })).toEqual({
      ok: true,
      value: {
        spiffe_id: BOOKINFO,
        trust_domain: 'cluster.local',
        path: '/ns/bookinfo/sa/default',
        namespace: 'bookinfo',
        service_account: 'default',
        source: 'certificate',
      },
    });
  });

  it('takes the identity from the principal when there is no certificate', () => {
    const result = resolveIdentity({ principal: OTHER, certificatePem: '' });
    expect(result).toEqual({
      ok: true,
      value: {
        spiffe_id: OTHER,
        trust_domain: 'cluster.local',
        path: '/ns/bookinfo-evil/sa/default',
        namespace: 'bookinfo-evil',
        service_account: 'default',
        source: 'principal',
      },
    });
  });

  it('returns identities of any trust domain: the policy decides which are welcome', () => {
    const result = resolveIdentity({ principal: 'spiffe://partner.example.org/billing/exporter' });
    expect(result).toEqual({
      ok: true,
      value: {
        spiffe_id: 'spiffe://partner.example.org/billing/exporter',
        trust_domain: 'partner.example.org',
        path: '/billing/exporter',
        source: 'principal',
      },
    });
  });

  it('accepts a certificate and a principal that agree, reporting the certificate as the source', () => {
    const result = resolveIdentity({ certificatePem: svid.certPem, principal: BOOKINFO });
    expect(result.ok && result.value.source).toBe('certificate');
  });

  it('uses a trusted header only when given, and only when it agrees', () => {
    expect(resolveIdentity({ headerSpiffeId: BOOKINFO })).toMatchObject({
      ok: true,
      value: { spiffe_id: BOOKINFO, source: 'header' },
    });
    expect(resolveIdentity({ principal: BOOKINFO, headerSpiffeId: BOOKINFO })).toMatchObject({
      ok: true,
      value: { source: 'principal' },
    });
    expect(resolveIdentity({ principal: BOOKINFO, headerSpiffeId: OTHER })).toMatchObject({
      ok: false,
      reason: 'source principal and header SPIFFE ID differ',
    });
    expect(resolveIdentity({ certificatePem: svid.certPem, headerSpiffeId: OTHER })).toMatchObject({
      ok: false,
      reason: 'certificate SPIFFE ID and header SPIFFE ID differ',
    });
    expect(resolveIdentity({ headerSpiffeId: 'bookinfo' })).toMatchObject({
      ok: false,
      reason: 'header SPIFFE ID is not a SPIFFE ID',
    });
  });

  const denied: Array<[string, Parameters<typeof resolveIdentity>[0], string]> = [
    ['nothing', {}, 'no client identity'],
    ['only empty strings', { certificatePem: '', principal: '', headerSpiffeId: '' }, 'no client identity'],
    ['a subject DN as principal', { principal: 'CN=bookinfo,O=Example Org' }, 'source principal is not a SPIFFE ID'],
    [
      'an uppercase trust domain',
      { principal: 'spiffe://Cluster.local/ns/bookinfo/sa/default' },
      'source principal: invalid SPIFFE ID: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores',
    ],
    [
      'a port',
      { principal: 'spiffe://cluster.local:443/ns/bookinfo/sa/default' },
      'source principal: invalid SPIFFE ID: trust domain cannot contain a port',
    ],
    [
      'a dot segment',
      { principal: 'spiffe://cluster.local/ns/evil/../bookinfo/sa/x' },
      'source principal: invalid SPIFFE ID: path cannot contain dot segments',
    ],
    [
      'SPIFFE:// scheme',
      { principal: 'SPIFFE://cluster.local/ns/bookinfo/sa/default' },
      'source principal is not a SPIFFE ID',
    ],
    ['garbage certificate', { certificatePem: 'garbage' }, 'certificate PEM has text outside PEM blocks'],
  ];
  it.each(denied)('denies %s', (_name, evidence, reason) => {
    expect(resolveIdentity(evidence)).toMatchObject({ ok: false, reason });
  });

  it('denies when certificate and principal name different IDs', () => {
    expect(resolveIdentity({ certificatePem: svid.certPem, principal: OTHER })).toMatchObject({
      ok: false,
      reason: 'certificate SPIFFE ID and source principal differ',
    });
  });

  it('denies a bad certificate even when the principal is a good SPIFFE ID', async () => {
    const noUri = await issue({ issuer: ca, subject: 'CN=bookinfo' });
    expect(resolveIdentity({ certificatePem: noUri.certPem, principal: BOOKINFO })).toMatchObject({
      ok: false,
      reason: 'leaf certificate has no URI SAN',
    });
  });

  it('denies evidence that is not a string (JSON input documents can carry anything)', () => {
    const evidence = { principal: BOOKINFO, headerSpiffeId: ['x'] } as unknown as Parameters<typeof resolveIdentity>[0];
    expect(resolveIdentity(evidence)).toMatchObject({ ok: false, reason: 'header evidence is not a string' });
    const cert = { certificatePem: 42 } as unknown as Parameters<typeof resolveIdentity>[0];
    expect(resolveIdentity(cert)).toMatchObject({ ok: false, reason: 'certificate evidence is not a string' });
  });

  // A trust domain's root ID names the trust domain, not a workload: a certificate with it was already
  // refused (X.509-SVID §3.1); a principal or a header naming it is refused the same way.
  it('denies a principal or a header that is a trust domain root ID', () => {
    expect(resolveIdentity({ principal: 'spiffe://cluster.local' })).toEqual({
      ok: false,
      reason: 'source principal is a trust domain ID, not a workload identity',
      code: 'spiffe_id',
    });
    expect(resolveIdentity({ headerSpiffeId: 'spiffe://cluster.local' })).toEqual({
      ok: false,
      reason: 'header SPIFFE ID is a trust domain ID, not a workload identity',
      code: 'spiffe_id',
    });
  });

  it('denies a good certificate with a principal that is no SPIFFE ID', () => {
    expect(resolveIdentity({ certificatePem: svid.certPem, principal: 'CN=bookinfo' })).toMatchObject({
      ok: false,
      reason: 'source principal is not a SPIFFE ID',
    });
  });
});

describe('toIdentity: namespace and service account only for exactly /ns/<ns>/sa/<sa>', () => {
  const cases: Array<[string, { namespace?: string; service_account?: string }]> = [
    ['/ns/bookinfo/sa/default', { namespace: 'bookinfo', service_account: 'default' }],
    ['/ns/bookinfo/sa/default/extra', {}],
    ['/ns/bookinfo', {}],
    ['/sa/default/ns/bookinfo', {}],
    ['/x/ns/bookinfo/sa/default', {}],
    ['/NS/bookinfo/sa/default', {}],
    ['', {}],
  ];
  it.each(cases)('%j', (path, expected) => {
    const id = parseSpiffeId(`spiffe://cluster.local${path}`);
    if (!id.ok) throw new Error(id.reason);
    const identity = toIdentity(id.value, 'principal');
    expect({ namespace: identity.namespace, service_account: identity.service_account }).toEqual({
      namespace: expected.namespace,
      service_account: expected.service_account,
    });
    if (expected.namespace === undefined) expect(Object.keys(identity)).not.toContain('namespace');
  });
});

describe('certificate cache', () => {
  it('denies an expired certificate on the second call although the first call, earlier, passed', async () => {
    const notAfter = new Date(Date.now() + DAY);
    const cert = await workloadSvid(ca, BOOKINFO, { notAfter });
    const before = new Date(notAfter.getTime() - 60_000);
    const after = new Date(notAfter.getTime() + 60_000);
    expect(resolveIdentity({ certificatePem: cert.certPem }, before).ok).toBe(true);
    expect(x509SvidCacheSize()).toBe(1);
    expect(resolveIdentity({ certificatePem: cert.certPem }, after)).toMatchObject({
      ok: false,
      reason: 'certificate has expired',
    });
    expect(x509SvidCacheSize()).toBe(1);
  });

  it('accepts a not-yet-valid certificate once its time has come, though it was cached while early', async () => {
    const notBefore = new Date(Date.now() + DAY);
    const cert = await workloadSvid(ca, BOOKINFO, { notBefore, notAfter: new Date(notBefore.getTime() + DAY) });
    expect(resolveIdentity({ certificatePem: cert.certPem })).toMatchObject({
      ok: false,
      reason: 'certificate is not yet valid',
    });
    expect(resolveIdentity({ certificatePem: cert.certPem }, new Date(notBefore.getTime() + 1000)).ok).toBe(true);
  });

  it('cannot be corrupted through the values it returns', async () => {
    const notAfter = new Date(Date.now() + DAY);
    const cert = await workloadSvid(ca, BOOKINFO, { notAfter });
    const first = parseX509SvidPem(cert.certPem, new Date());
    if (!first.ok) throw new Error(first.reason);
    first.value.notAfter.setTime(Date.now() + 365 * DAY);
    expect(() => Object.assign(first.value.spiffeId, { path: '/ns/admin' })).toThrow();
    expect(parseX509SvidPem(cert.certPem, new Date(notAfter.getTime() + 1000))).toMatchObject({
      ok: false,
      reason: 'certificate has expired',
    });
  });

  it('remembers structural failures with their reason', () => {
    expect(resolveIdentity({ certificatePem: 'garbage' })).toMatchObject({
      ok: false,
      reason: 'certificate PEM has text outside PEM blocks',
    });
    expect(resolveIdentity({ certificatePem: 'garbage' })).toMatchObject({
      ok: false,
      reason: 'certificate PEM has text outside PEM blocks',
    });
    expect(x509SvidCacheSize()).toBe(1);
  });

  it('stays bounded in entries and in bytes, evicting the least recently used', () => {
    try {
      configureX509SvidCache({ entries: 1024 });
      for (let i = 0; i < 1500; i++) resolveIdentity({ certificatePem: `garbage ${i}` });
      expect(x509SvidCacheSize()).toBe(1024);
      configureX509SvidCache({ entries: 100_000, bytes: 64 * 1024 });
      for (let i = 0; i < 5000; i++) resolveIdentity({ certificatePem: `garbage ${i} ${'x'.repeat(i % 3000)}` });
      const stats = x509SvidCacheStats();
      expect(stats.bytes).toBeLessThanOrEqual(64 * 1024);
      expect(stats.entries).toBeGreaterThan(100);
      expect(stats.evictions).toBeGreaterThan(0);
    } finally {
      configureX509SvidCache({ entries: DEFAULT_SVID_CACHE_ENTRIES });
    }
  });

  it('counts the memo of expanded IDs: the first cache hit of a certificate misses it, the next ones hit', () => {
    clearX509SvidCache();
    const before = x509SvidIdMemoStats();
    for (let i = 0; i < 4; i++) expect(resolveIdentity({ certificatePem: svid.certPem }).ok).toBe(true);
    const after = x509SvidIdMemoStats();
    // The first resolve parses (the certificate cache's miss); the second expands the packed entry.
    expect(after.misses - before.misses).toBe(1);
    expect(after.hits - before.hits).toBe(2);
    expect(after.bytes).toBeGreaterThan(0);
    expect(after.bytes).toBeLessThanOrEqual(after.maxBytes);
  });

  it('is keyed by a hash of the text: a long certificate chain costs the same bytes as a short one', async () => {
    const single = svid.certPem;
    const chain = `${svid.certPem}${ca.certPem}${ca.certPem}${ca.certPem}`;
    resolveIdentity({ certificatePem: single });
    const one = x509SvidCacheStats().bytes;
    clearX509SvidCache();
    resolveIdentity({ certificatePem: chain });
    expect(x509SvidCacheStats().bytes).toBe(one);
    expect(one).toBeLessThan(single.length);
  });

  it('hands back from its packed entries exactly what a fresh parse gives, at the edges of every field', async () => {
    const longId = `spiffe://cluster.local/ns/${'n'.repeat(900)}/sa/${'s'.repeat(1000)}`;
    const certs = [
      await workloadSvid(ca, longId),
      // Before 1970 (a negative time) and far in the future: the packed times are float64, not unsigned.
      await workloadSvid(ca, BOOKINFO, {
        notBefore: new Date('1951-03-04T05:06:07Z'),
        notAfter: new Date('2999-12-31T23:59:59Z'),
      }),
      await workloadSvid(ca, 'spiffe://a/b'),
      // Random serials: some start with 00 (a positive number's sign byte) or are short.
      ...(await Promise.all(Array.from({ length: 12 }, (_, i) => workloadSvid(ca, `${BOOKINFO}-${i}`)))),
    ];
    const now = new Date();
    for (const cert of certs) {
      clearX509SvidCache();
      const fresh = parseX509SvidPem(cert.certPem, now);
      expect(fresh.ok).toBe(true);
      const fromCache = parseX509SvidPem(cert.certPem, now);
      expect(x509SvidCacheStats().hits).toBeGreaterThan(0);
      expect(fromCache).toEqual(fresh);
      if (fromCache.ok && fresh.ok) expect({ ...fromCache.value.spiffeId }).toEqual({ ...fresh.value.spiffeId });
    }
  });

  it('counts hits and misses; 0 entries turns it off and every call parses afresh', () => {
    configureX509SvidCache({ entries: DEFAULT_SVID_CACHE_ENTRIES });
    resolveIdentity({ certificatePem: svid.certPem });
    resolveIdentity({ certificatePem: svid.certPem });
    expect(x509SvidCacheStats()).toMatchObject({ hits: 1, misses: 1, entries: 1 });
    try {
      configureX509SvidCache({ entries: 0 });
      expect(resolveIdentity({ certificatePem: svid.certPem }).ok).toBe(true);
      expect(resolveIdentity({ certificatePem: 'garbage' }).ok).toBe(false);
      expect(x509SvidCacheStats()).toMatchObject({ hits: 0, entries: 0, bytes: 0 });
    } finally {
      configureX509SvidCache({ entries: DEFAULT_SVID_CACHE_ENTRIES });
    }
  });
});
