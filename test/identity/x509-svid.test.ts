import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { clearX509SvidCache, parsePemBlocks, parseX509Svid, parseX509SvidPem } from '../../src/identity/x509-svid.js';
import { createCa, EKU, issue, KeyUsage, workloadSvid, type CertAuthority, type IssuedCert } from '../support/pki.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/default';
const DAY = 86_400_000;

let ca: CertAuthority;
let good: IssuedCert;

beforeAll(async () => {
  ca = await createCa();
  good = await workloadSvid(ca, BOOKINFO);
});
beforeEach(() => clearX509SvidCache());

function reasonOf(pem: string, now = new Date()): string {
  const result = parseX509SvidPem(pem, now);
  return result.ok ? `accepted ${result.value.spiffeId.uri}` : result.reason;
}

describe('parseX509SvidPem: the leaf SVID', () => {
  it('accepts a workload SVID as Istio issues it and describes it', () => {
    const result = parseX509SvidPem(good.certPem, new Date());
    if (!result.ok) throw new Error(result.reason);
    const svid = result.value;
    expect(svid.spiffeId).toEqual({ uri: BOOKINFO, trustDomain: 'cluster.local', path: '/ns/bookinfo/sa/default' });
    expect(svid.sha256).toBe(createHash('sha256').update(good.der).digest('hex'));
    expect(svid.serialNumber).toMatch(/^[0-9a-f]{24}$/);
    expect(svid.notBefore.getTime()).toBeLessThan(Date.now());
    expect(svid.notAfter.getTime()).toBeGreaterThan(Date.now());
  });

  it('accepts a DNS SAN before the URI SAN, and after it', async () => {
    const before = await workloadSvid(ca, BOOKINFO, { dns: ['details.bookinfo.svc'] });
    const after = await workloadSvid(ca, BOOKINFO, { dns: ['details.bookinfo.svc'], dnsAfterUris: true });
    expect(reasonOf(before.certPem)).toBe(`accepted ${BOOKINFO}`);
    expect(reasonOf(after.certPem)).toBe(`accepted ${BOOKINFO}`);
  });

  it('accepts a leaf without extended key usage (optional per the standard)', async () => {
    const cert = await workloadSvid(ca, BOOKINFO, { extKeyUsage: null });
    expect(reasonOf(cert.certPem)).toBe(`accepted ${BOOKINFO}`);
  });

  it('accepts a subject with a non-critical SAN', async () => {
    const cert = await workloadSvid(ca, BOOKINFO, { subject: 'CN=details, O=Example Org', sanCritical: false });
    expect(reasonOf(cert.certPem)).toBe(`accepted ${BOOKINFO}`);
  });

  it('uses the leaf when a chain follows it', () => {
    const result = parseX509SvidPem(`${good.certPem}\n${ca.certPem}`, new Date());
    expect(result.ok && result.value.sha256).toBe(createHash('sha256').update(good.der).digest('hex'));
  });

  it("accepts Envoy's URL-encoded PEM", () => {
    expect(reasonOf(encodeURIComponent(good.certPem))).toBe(`accepted ${BOOKINFO}`);
  });

  const refused: Array<[string, () => Promise<IssuedCert>, string]> = [
    [
      'two URI SANs',
      () => issue({ issuer: ca, uris: [BOOKINFO, 'spiffe://cluster.local/ns/other/sa/x'] }),
      'leaf certificate has more than one URI SAN',
    ],
    ['no SAN at all', () => issue({ issuer: ca, subject: 'CN=bookinfo' }), 'leaf certificate has no URI SAN'],
    ['only a DNS SAN', () => issue({ issuer: ca, dns: ['bookinfo.example.com'] }), 'leaf certificate has no URI SAN'],
    ['a CA leaf', () => workloadSvid(ca, BOOKINFO, { ca: true }), 'leaf certificate must not have CA flag set to true'],
    [
      'keyCertSign',
      () => workloadSvid(ca, BOOKINFO, { keyUsage: KeyUsage.digitalSignature | KeyUsage.keyCertSign }),
      "leaf certificate must not have 'keyCertSign' set as key usage",
    ],
    [
      'cRLSign',
      () => workloadSvid(ca, BOOKINFO, { keyUsage: KeyUsage.digitalSignature | KeyUsage.cRLSign }),
      "leaf certificate must not have 'cRLSign' set as key usage",
    ],
    [
      'no digitalSignature',
      () => workloadSvid(ca, BOOKINFO, { keyUsage: KeyUsage.keyEncipherment }),
      "leaf certificate must have 'digitalSignature' set as key usage",
    ],
    [
      'no key usage extension',
      () => workloadSvid(ca, BOOKINFO, { keyUsage: null }),
      'leaf certificate has no key usage extension',
    ],
    [
      'a non-critical key usage',
      () => workloadSvid(ca, BOOKINFO, { keyUsageCritical: false }),
      'leaf certificate key usage extension must be critical',
    ],
    [
      'extended key usage without clientAuth',
      () => workloadSvid(ca, BOOKINFO, { extKeyUsage: [EKU.serverAuth] }),
      "leaf certificate extended key usage must include 'serverAuth' and 'clientAuth'",
    ],
    [
      'a root SPIFFE ID',
      () => workloadSvid(ca, 'spiffe://cluster.local'),
      'leaf certificate SPIFFE ID must have a non-root path',
    ],
    [
      'an https URI SAN',
      () => workloadSvid(ca, 'https://cluster.local/ns/bookinfo/sa/default'),
      'leaf certificate URI SAN: invalid SPIFFE ID: scheme is missing or invalid',
    ],
    [
      'an uppercase trust domain',
      () => workloadSvid(ca, 'spiffe://Cluster.local/ns/bookinfo/sa/default'),
      'leaf certificate URI SAN: invalid SPIFFE ID: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores',
    ],
    [
      'a dot segment',
      () => workloadSvid(ca, 'spiffe://cluster.local/ns/bookinfo/../x'),
      'leaf certificate URI SAN: invalid SPIFFE ID: path cannot contain dot segments',
    ],
    [
      'an empty subject with a non-critical SAN',
      () => workloadSvid(ca, BOOKINFO, { sanCritical: false }),
      'leaf certificate with an empty subject must mark the SAN extension critical',
    ],
    [
      'an expired certificate',
      () =>
        workloadSvid(ca, BOOKINFO, { notBefore: new Date(Date.now() - 2 * DAY), notAfter: new Date(Date.now() - DAY) }),
      'certificate has expired',
    ],
    [
      'a not yet valid certificate',
      () =>
        workloadSvid(ca, BOOKINFO, { notBefore: new Date(Date.now() + DAY), notAfter: new Date(Date.now() + 2 * DAY) }),
      'certificate is not yet valid',
    ],
  ];
  it.each(refused)('refuses %s', async (_name, make, reason) => {
    const cert = await make();
    expect(reasonOf(cert.certPem)).toBe(reason);
  });

  it('checks the validity period inclusively at both ends', async () => {
    const notBefore = new Date('2030-01-01T00:00:00Z');
    const notAfter = new Date('2030-01-02T00:00:00Z');
    const cert = await workloadSvid(ca, BOOKINFO, { notBefore, notAfter });
    expect(reasonOf(cert.certPem, notBefore)).toBe(`accepted ${BOOKINFO}`);
    expect(reasonOf(cert.certPem, notAfter)).toBe(`accepted ${BOOKINFO}`);
    expect(reasonOf(cert.certPem, new Date(notBefore.getTime() - 1000))).toBe('certificate is not yet valid');
    expect(reasonOf(cert.certPem, new Date(notAfter.getTime() + 1000))).toBe('certificate has expired');
  });
});

describe('parseX509Svid: the chain after the leaf', () => {
  it('refuses a non-CA certificate in the signing position', async () => {
    const other = await workloadSvid(ca, 'spiffe://cluster.local/ns/other/sa/x');
    expect(parseX509Svid([good.der, other.der], new Date())).toEqual({
      ok: false,
      code: 'svid',
      reason: 'signing certificate must have CA flag set to true',
    });
  });

  it('accepts leaf, intermediate and root', async () => {
    const root = await createCa('Example Root CA');
    const intermediate = await createCa('Example Intermediate CA', { issuer: root });
    const leaf = await workloadSvid(intermediate, BOOKINFO);
    const result = parseX509Svid([leaf.der, intermediate.der, root.der], new Date());
    expect(result.ok && result.value.spiffeId.uri).toBe(BOOKINFO);
  });

  it('refuses an empty chain and undecodable DER', () => {
    expect(parseX509Svid([], new Date())).toEqual({ ok: false, code: 'svid', reason: 'no certificates found' });
    expect(parseX509Svid([new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01])], new Date())).toEqual({
      ok: false,
      code: 'svid',
      reason: 'leaf certificate is not valid DER',
    });
    expect(parseX509Svid([good.der.subarray(0, good.der.length - 10)], new Date())).toEqual({
      ok: false,
      code: 'svid',
      reason: 'leaf certificate is not valid DER',
    });
    expect(parseX509Svid([good.der, new Uint8Array([1, 2, 3])], new Date())).toEqual({
      ok: false,
      code: 'svid',
      reason: 'signing certificate is not valid DER',
    });
  });

  it('refuses trailing bytes after the certificate', () => {
    const padded = new Uint8Array([...good.der, 0]);
    expect(parseX509Svid([padded], new Date())).toEqual({
      ok: false,
      code: 'svid',
      reason: 'leaf certificate is not valid DER',
    });
  });
});

describe('parsePemBlocks', () => {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const block = (label: string, body: string) => `-----BEGIN ${label}-----\n${body}\n-----END ${label}-----\n`;

  it('returns the DER of each CERTIFICATE block in order, tolerating CRLF and surrounding whitespace', () => {
    const text = `\n  ${good.certPem.replace(/\n/g, '\r\n')}\n${ca.certPem}  \n`;
    const result = parsePemBlocks(text);
    expect(result.ok && result.value.map((der) => Buffer.from(der).toString('hex'))).toEqual([
      Buffer.from(good.der).toString('hex'),
      Buffer.from(ca.der).toString('hex'),
    ]);
  });

  it('refuses a private key without ever echoing it', () => {
    for (const text of [
      good.keyPem,
      good.certPem + good.keyPem,
      block('RSA PRIVATE KEY', 'AAAA'),
      block('ENCRYPTED PRIVATE KEY', 'AAAA'),
    ]) {
      const result = parsePemBlocks(text);
      expect(result).toEqual({
        ok: false,
        code: 'pem',
        reason: 'certificate PEM contains a private key; only CERTIFICATE blocks are accepted',
      });
    }
    const body = good.keyPem.split('\n')[1] ?? '';
    expect(body.length).toBeGreaterThan(20);
    expect(reasonOf(good.certPem + good.keyPem)).not.toContain(body.slice(0, 20));
  });

  const refused: Array<[string, string, string]> = [
    ['empty', '', 'certificate PEM is empty'],
    ['whitespace', ' \n\t', 'certificate PEM is empty'],
    ['garbage', 'hello, I am a certificate', 'certificate PEM has text outside PEM blocks'],
    ['a public key', block('PUBLIC KEY', 'AAAA'), 'certificate PEM contains a non-CERTIFICATE block'],
    ['a CSR', block('CERTIFICATE REQUEST', 'AAAA'), 'certificate PEM contains a non-CERTIFICATE block'],
    [
      'an unterminated block',
      '-----BEGIN CERTIFICATE-----\nAAAA\n',
      'certificate PEM has an unterminated CERTIFICATE block',
    ],
    [
      'a mismatched END',
      '-----BEGIN CERTIFICATE-----\nAAAA\n-----END X509 CRL-----\n',
      'certificate PEM has an unterminated CERTIFICATE block',
    ],
    [
      'a malformed BEGIN line',
      '-----BEGIN certificate-----\nAAAA\n-----END certificate-----\n',
      'certificate PEM has a malformed BEGIN line',
    ],
    ['bad base64', block('CERTIFICATE', 'not*base64!'), 'certificate PEM has a CERTIFICATE block with invalid base64'],
    ['an empty block', block('CERTIFICATE', ''), 'certificate PEM has a CERTIFICATE block with invalid base64'],
    [
      'PEM headers',
      block('CERTIFICATE', `Proc-Type: 4,ENCRYPTED\n\n${b64('abc')}`),
      'certificate PEM has a CERTIFICATE block with invalid base64',
    ],
    ['broken URL encoding', '-----BEGIN%20CERTIFICATE%ZZ', 'certificate PEM has invalid URL encoding'],
    ['over-long input', ' '.repeat(64 * 1024) + 'x', 'certificate PEM is longer than 65536 characters'],
  ];
  it.each(refused)('refuses %s', (_name, text, reason) => {
    expect(parsePemBlocks(text)).toEqual({ ok: false, code: 'pem', reason });
  });

  it('refuses text between or after blocks', () => {
    expect(parsePemBlocks(`${good.certPem}subject=CN=x\n${ca.certPem}`)).toEqual({
      ok: false,
      code: 'pem',
      reason: 'certificate PEM has text outside PEM blocks',
    });
    expect(parsePemBlocks(`${good.certPem}trailing`)).toEqual({
      ok: false,
      code: 'pem',
      reason: 'certificate PEM has text outside PEM blocks',
    });
  });

  it('refuses more than 10 certificates', () => {
    expect(parsePemBlocks(good.certPem.repeat(10)).ok).toBe(true);
    expect(parsePemBlocks(good.certPem.repeat(11))).toEqual({
      ok: false,
      code: 'pem',
      reason: 'certificate PEM has more than 10 certificates',
    });
  });

  it('turns a well-formed block of garbage DER into a reason', () => {
    expect(reasonOf(block('CERTIFICATE', b64('definitely not DER')))).toBe('leaf certificate is not valid DER');
  });
});

describe('hostile input', () => {
  it('never throws on damaged DER: every outcome is a Result', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.nat(),
        (flips, cut) => {
          const der = new Uint8Array(good.der);
          for (const [at, byte] of flips) der[at % der.length] = byte;
          const damaged = cut % 5 === 0 ? der.subarray(0, cut % der.length) : der;
          const result = parseX509Svid([damaged], new Date());
          expect(typeof result.ok).toBe('boolean');
          if (!result.ok) expect(result.reason).toMatch(/^[\x20-\x7e]+$/);
        },
      ),
      { numRuns: 1500 },
    );
  });

  it('never throws on arbitrary text', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.string({ unit: fc.constantFrom('-', 'BEGIN ', 'END ', 'CERTIFICATE', '\n', 'A', '=', '%', '%41') }),
        ),
        (text) => {
          expect(typeof parseX509SvidPem(text, new Date()).ok).toBe('boolean');
        },
      ),
      { numRuns: 1500 },
    );
  });
});
