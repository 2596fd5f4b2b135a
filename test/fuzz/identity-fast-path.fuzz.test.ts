// Differential test of the identity step's cache-hit fast path (src/identity/identity.ts: no claims
// array, the principal reused when it is the certificate's own URI, one frozen Identity per cached
// certificate; src/identity/x509-svid.ts parseX509SvidIdPem: the certificate's ID from a memo, the
// validity period checked every call) against the step as it was before (resolveIdentityReference
// below, verbatim but for names): generated and damaged evidence — the suite's certificate shapes,
// damaged PEM, principals and header IDs near the certificate's — at decision times inside and outside
// the validity period. Both must give the same Result, on the first call (cache miss) and on the next
// ones (hits), and the fast path's Identity must be frozen (it is shared between Checks).
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { fail, ok, withCode, type Result } from '../../src/common/result.js';
import {
  resolveIdentity,
  type ChainCheck,
  type Identity,
  type IdentitySource,
  type PeerEvidence,
  type ResolveOptions,
} from '../../src/identity/identity.js';
import { parseSpiffeId, type SpiffeId } from '../../src/identity/spiffe-id.js';
import { clearX509SvidCache, parseX509SvidPem } from '../../src/identity/x509-svid.js';
import { createCa, issue, workloadSvid } from '../support/pki.js';
import { FUZZ_RUNS } from './runs.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const OTHER = 'spiffe://example.org/payments/api';
const DAY = 86_400_000;
const NOW = new Date();

// ------------------------------------------------------------------ the reference (the step as it was)

interface Claim {
  source: IdentitySource;
  id: SpiffeId;
}

const LABEL: Record<IdentitySource, string> = {
  certificate: 'certificate SPIFFE ID',
  principal: 'source principal',
  header: 'header SPIFFE ID',
};

function resolveIdentityReference(
  evidence: PeerEvidence,
  now: Date = new Date(),
  opts: ResolveOptions = {},
): Result<Identity> {
  // Strongest first: the first claim names the identity, every other one must agree with it.
  const claims: Claim[] = [];

  for (const source of ['certificate', 'principal', 'header'] as const) {
    const value = evidenceOf(evidence, source);
    // Typed callers cannot do this, but --input documents and other JSON can: fail closed.
    if (value !== undefined && value !== null && typeof value !== 'string')
      return fail(`${source} evidence is not a string`, 'malformed');
  }

  if (evidence.headerError !== undefined) return evidence.headerError;
  if (evidence.headerCertificatePem !== undefined && typeof evidence.headerCertificatePem !== 'string')
    return fail('header evidence is not a string', 'malformed');

  if (present(evidence.certificatePem)) {
    const svid = parseX509SvidPem(evidence.certificatePem, now);
    if (!svid.ok) return svid;
    if (opts.verifyChain) {
      const chain = opts.verifyChain.verifyPem(evidence.certificatePem, svid.value.spiffeId.trustDomain, now);
      if (!chain.ok) return withCode(chain, 'chain');
    }
    claims.push({ source: 'certificate', id: svid.value.spiffeId });
  }
  for (const source of ['principal', 'header'] as const) {
    const text = evidenceOf(evidence, source);
    if (!present(text)) continue;
    const id = parseSpiffeId(text);
    if (!id.ok) {
      // A subject DN (what Envoy reports for a certificate without a URI SAN) lands here.
      return fail(
        text.startsWith('spiffe://') ? `${LABEL[source]}: ${id.reason}` : `${LABEL[source]} is not a SPIFFE ID`,
        'spiffe_id',
      );
    }
    // A trust domain's root ID names no workload; a certificate with one never gets here (x509-svid.ts).
    if (id.value.path === '')
      return fail(`${LABEL[source]} is a trust domain ID, not a workload identity`, 'spiffe_id');
    claims.push({ source, id: id.value });
  }

  if (present(evidence.headerCertificatePem)) {
    const svid = parseX509SvidPem(evidence.headerCertificatePem, now);
    if (!svid.ok) return fail(`header certificate: ${svid.reason}`, svid.code);
    const headerId = claims.find((c) => c.source === 'header');
    // The header's URI is what its proxy read off this very certificate: anything else is a forgery.
    if (headerId !== undefined && headerId.id.uri !== svid.value.spiffeId.uri)
      return fail('header SPIFFE ID does not match the header certificate', 'mismatch');
    if (headerId === undefined) claims.push({ source: 'header', id: svid.value.spiffeId });
  }

  if (opts.verifyChain && !present(evidence.certificatePem))
    return fail('certificate chain not verified: no peer certificate was sent', 'chain');
  const [first, ...others] = claims;
  if (first === undefined) return fail('no client identity', 'missing');
  // Both sides were parsed strictly (canonical lowercase form), so byte equality is identity equality.
  const disagreeing = others.find((claim) => claim.id.uri !== first.id.uri);
  if (disagreeing !== undefined)
    return fail(`${LABEL[first.source]} and ${LABEL[disagreeing.source]} differ`, 'mismatch');
  return ok(toIdentityReference(first.id, first.source));
}

function toIdentityReference(id: SpiffeId, source: IdentitySource): Identity {
  const identity: Identity = { spiffe_id: id.uri, trust_domain: id.trustDomain, path: id.path, source };
  const segments = id.path.split('/');
  // "/ns/a/sa/b".split('/') → ['', 'ns', 'a', 'sa', 'b']; parseSpiffeId already refused empty segments.
  if (segments.length === 5 && segments[1] === 'ns' && segments[3] === 'sa') {
    identity.namespace = segments[2];
    identity.service_account = segments[4];
  }
  return identity;
}

function evidenceOf(evidence: PeerEvidence, source: IdentitySource): unknown {
  if (source === 'certificate') return evidence.certificatePem;
  return source === 'principal' ? evidence.principal : evidence.headerSpiffeId;
}

function present(value: unknown): value is string {
  return typeof value === 'string' && value !== '';
}

// ------------------------------------------------------------------------------------------- inputs

/** Edits that keep a text looking like the original (IDs, PEM): near misses. */
const edit = fc.record({
  at: fc.nat(),
  cut: fc.integer({ min: 0, max: 3 }),
  text: fc.constantFrom('', '/', '.', '..', 'A', 'x', '%2F', ' ', '\u0000', 'é', '//', ':1', '?q', '#f', '%', '\n'),
});
type Edit = typeof edit extends fc.Arbitrary<infer T> ? T : never;

function damage(text: string, edits: Edit[]): string {
  let s = text;
  for (const e of edits) {
    const at = e.at % (s.length + 1);
    s = s.slice(0, at) + e.text + s.slice(at + e.cut);
  }
  return s;
}

/** A fresh copy of a string: the fast path must compare text, never rely on object identity. */
function copy(s: string): string {
  return (' ' + s).slice(1);
}

const pems: string[] = [];
const pemIds = [BOOKINFO, OTHER, 'spiffe://cluster.local/ns/a/sa/b/extra', 'spiffe://cluster.local'];

beforeAll(async () => {
  const ca = await createCa();
  const valid = await workloadSvid(ca, BOOKINFO);
  const expired = await workloadSvid(ca, BOOKINFO, {
    notBefore: new Date(NOW.getTime() - 10 * DAY),
    notAfter: new Date(NOW.getTime() - DAY),
  });
  const future = await workloadSvid(ca, OTHER, {
    notBefore: new Date(NOW.getTime() + DAY),
    notAfter: new Date(NOW.getTime() + 10 * DAY),
  });
  const other = await workloadSvid(ca, OTHER);
  const nested = await workloadSvid(ca, pemIds[2]!);
  const root = await workloadSvid(ca, 'spiffe://cluster.local');
  const leafCa = await issue({ issuer: ca, uris: [BOOKINFO], ca: true });
  const twoUris = await issue({ issuer: ca, uris: [BOOKINFO, OTHER] });
  for (const c of [valid, expired, future, other, nested, root, leafCa, twoUris]) pems.push(c.certPem);
  pems.push(valid.certPem + ca.certPem, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n', 'not a pem');
});

/** null but one time in n */
const rarely = <T>(arbitrary: fc.Arbitrary<T>, n: number) =>
  fc.oneof({ weight: n - 1, arbitrary: fc.constant(null) }, { weight: 1, arbitrary });

const pemText = fc
  .tuple(fc.nat(), fc.boolean(), rarely(fc.array(edit, { minLength: 1, maxLength: 2 }), 4))
  .map(([i, urlEncode, edits]) => {
    let pem = pems[i % pems.length]!;
    if (edits) pem = damage(pem, edits);
    return urlEncode ? encodeURIComponent(pem) : pem;
  });

const idText = fc.oneof(
  { weight: 1, arbitrary: fc.constantFrom(BOOKINFO, OTHER) },
  fc.constantFrom(...pemIds, 'CN=productpage,O=bookinfo', 'spiffe://Cluster.local/ns/bookinfo/sa/productpage'),
  fc.tuple(fc.constantFrom(...pemIds), fc.array(edit, { minLength: 1, maxLength: 3 })).map(([id, e]) => damage(id, e)),
);

/** Mostly strings; now and then what an --input document may carry instead. */
const evidenceValue = <T>(text: fc.Arbitrary<T>) =>
  fc.oneof(
    { weight: 3, arbitrary: fc.constant(null) },
    { weight: 6, arbitrary: text },
    { weight: 1, arbitrary: fc.constantFrom<unknown>('', undefined, 42) },
  );

const evidence = fc.record({
  certificatePem: evidenceValue(pemText),
  /** the certificate's own URI (the common case) as a fresh string, or another ID */
  principal: fc.oneof(fc.constant('same' as const), evidenceValue(idText)),
  headerSpiffeId: evidenceValue(idText),
  headerCertificatePem: rarely(pemText, 6),
  headerError: rarely(fc.constant(fail('trusted header is malformed', 'malformed')), 30),
});

const times = fc.oneof(
  { weight: 4, arbitrary: fc.constant(NOW) },
  fc.constantFrom(new Date(NOW.getTime() - 5 * DAY), new Date(NOW.getTime() + 5 * DAY), new Date(NaN)),
);

/** A deterministic stand-in for the chain verifier: refuses one trust domain and one PEM damage. */
const chainCheck: ChainCheck = {
  verifyPem: (pem, trustDomain) =>
    trustDomain === 'example.org' || pem.includes('%0A%0A') ? fail('chain does not verify', 'svid') : ok(null),
};

function toEvidence(e: {
  certificatePem: unknown;
  principal: unknown;
  headerSpiffeId: unknown;
  headerCertificatePem: string | null;
  headerError: Result<never> | null;
}): PeerEvidence {
  const out: Record<string, unknown> = {};
  if (e.certificatePem !== null) out.certificatePem = e.certificatePem;
  if (e.principal === 'same') {
    const pem = typeof e.certificatePem === 'string' ? parseX509SvidPem(e.certificatePem, NOW) : undefined;
    out.principal = pem?.ok ? copy(pem.value.spiffeId.uri) : BOOKINFO;
  } else if (e.principal !== null) out.principal = e.principal;
  if (e.headerSpiffeId !== null) out.headerSpiffeId = e.headerSpiffeId;
  if (e.headerCertificatePem !== null) out.headerCertificatePem = e.headerCertificatePem;
  if (e.headerError !== null) out.headerError = e.headerError;
  return out;
}

// ---------------------------------------------------------------------------------------- properties

describe('identity fast path against the reference', () => {
  it('the same Result as the step it replaced, on cache misses and hits, for valid, damaged and odd evidence', () => {
    fc.assert(
      fc.property(evidence, times, fc.boolean(), fc.boolean(), (e, now, verify, cold) => {
        const ev = toEvidence(e);
        const opts: ResolveOptions = verify ? { verifyChain: chainCheck } : {};
        if (cold) clearX509SvidCache();
        const reference = resolveIdentityReference(ev, now, opts);
        // First after the reference (its parse filled the cache: a hit), then again after a cold start.
        const hit = resolveIdentity(ev, now, opts);
        clearX509SvidCache();
        const miss = resolveIdentity(ev, now, opts);
        const again = resolveIdentity(ev, now, opts);
        expect(hit).toEqual(reference);
        expect(miss).toEqual(reference);
        expect(again).toEqual(reference);
        if (again.ok) expect(Object.isFrozen(again.value)).toBe(true);
      }),
      { numRuns: FUZZ_RUNS * 10 },
    );
  });

  it('a cached certificate is checked against each decision time, never the first one', () => {
    fc.assert(
      fc.property(fc.nat(), fc.array(times, { minLength: 2, maxLength: 5 }), (i, nows) => {
        const ev = { certificatePem: pems[i % pems.length]!, principal: BOOKINFO };
        for (const now of nows) expect(resolveIdentity(ev, now)).toEqual(resolveIdentityReference(ev, now));
      }),
      { numRuns: FUZZ_RUNS * 2 },
    );
  });
});
