// X.509 trust bundles, one per trust domain (the SPIFFE Trust Domain and Bundle standard; go-spiffe v2
// bundle/x509bundle is the model). A bundle holds the root CA certificates that may issue SVIDs of its
// trust domain and nothing else: bundles of different trust domains are never merged, so a CA of one
// domain can never vouch for an identity of another (SPIFFE Federation §4.2).
//
// Every source (files, a bundle endpoint, the Workload API) parses into X509Bundle and hands whole
// updates to an X509BundleSet, which swaps its view in one step: a verification sees either the old
// bundles or the new ones, never a mix. Parsers return Results; reasons never echo key material.
import { createPublicKey, X509Certificate, type JsonWebKey } from 'node:crypto';
import { isObject } from '../common/json.js';
import { fail, ok, type Result } from '../common/result.js';
import { parseSpiffeId } from './spiffe-id.js';

export interface X509Bundle {
  /** e.g. cluster.local */
  readonly trustDomain: string;
  /** the trust domain's root CA certificates (X.509 authorities) */
  readonly authorities: readonly X509Certificate[];
  /** seconds; how often the publisher suggests polling (spiffe_refresh_hint) */
  readonly refreshHintSeconds?: number;
  /** the publisher's bundle sequence number (spiffe_sequence) */
  readonly sequenceNumber?: number;
}

/** What a verifier reads: one consistent view of every trust domain's bundle. */
export interface X509BundleSource {
  /** the bundle of a trust domain, or undefined when none is configured (an unknown trust domain) */
  bundleFor(trustDomain: string): X509Bundle | undefined;
  /** every trust domain with a bundle (to explain a chain signed by another domain's CA) */
  trustDomains(): string[];
  /** changes whenever any bundle changes; verification results may be cached per generation */
  readonly generation: number;
}

/** Bundle files, endpoints and Workload API answers larger than this are not trust bundles. */
export const MAX_BUNDLE_DOCUMENT_BYTES = 1024 * 1024;
const MAX_BUNDLE_AUTHORITIES = 256;

// ------------------------------------------------------------------------------------ trust domains

/** A trust domain name, written bare (`cluster.local`) or as its SPIFFE ID (`spiffe://cluster.local`). */
export function parseTrustDomain(text: string): Result<string> {
  if (typeof text !== 'string' || text === '') return fail('trust domain is empty');
  const id = parseSpiffeId(text.startsWith('spiffe://') ? text : `spiffe://${text}`);
  if (!id.ok) return fail(`trust domain ${JSON.stringify(text.slice(0, 64))}: ${id.reason}`);
  if (id.value.path !== '') return fail(`trust domain ${JSON.stringify(text.slice(0, 64))} must not have a path`);
  return ok(id.value.trustDomain);
}

// ---------------------------------------------------------------------------------------- parsing

/** A bundle document as files and bundle endpoints carry it: SPIFFE bundle JSON (a JWKS) or PEM. */
export function parseX509Bundle(trustDomain: string, text: string): Result<X509Bundle> {
  if (typeof text !== 'string') return fail('bundle is not text');
  if (text.length > MAX_BUNDLE_DOCUMENT_BYTES) return fail(`bundle is larger than ${MAX_BUNDLE_DOCUMENT_BYTES} bytes`);
  return text.trimStart().startsWith('{')
    ? parseSpiffeBundleJson(trustDomain, text)
    : parsePemBundle(trustDomain, text);
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;

/** PEM CERTIFICATE blocks; text between blocks (comments, as in ca-bundle files) is allowed. */
function parsePemBundle(trustDomain: string, text: string): Result<X509Bundle> {
  const ders: Buffer[] = [];
  for (const m of text.matchAll(PEM_BLOCK)) {
    const label = m[1]!;
    if (label.includes('PRIVATE KEY'))
      return fail('bundle contains a private key; only CERTIFICATE blocks belong there');
    if (label !== 'CERTIFICATE') return fail('bundle contains a non-CERTIFICATE PEM block');
    const body = m[2]!.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(body) || body.length % 4 !== 0)
      return fail('bundle has a CERTIFICATE block with invalid base64');
    ders.push(Buffer.from(body, 'base64'));
  }
  if (ders.length === 0) return fail('bundle has no CERTIFICATE block (expected PEM or SPIFFE bundle JSON)');
  return bundleOf(trustDomain, ders, {});
}

/**
 * The SPIFFE bundle format: a JWK Set whose `x509-svid` keys each carry exactly one authority in `x5c`
 * (standard base64 DER) with the same public key as the JWK itself. Keys of other uses (`jwt-svid`) are
 * skipped: this service verifies X.509-SVIDs only.
 */
export function parseSpiffeBundleJson(trustDomain: string, text: string): Result<X509Bundle> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return fail('bundle is not valid JSON');
  }
  if (!isObject(doc)) return fail('bundle JSON is not an object');
  if (!Array.isArray(doc.keys)) return fail('bundle JSON has no "keys" array');
  const meta: { refreshHintSeconds?: number; sequenceNumber?: number } = {};
  for (const [field, key] of [
    ['spiffe_refresh_hint', 'refreshHintSeconds'],
    ['spiffe_sequence', 'sequenceNumber'],
  ] as const) {
    const v = doc[field];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
      return fail(`bundle JSON "${field}" must be a non-negative integer`);
    meta[key] = v;
  }
  const ders: Buffer[] = [];
  for (const [i, jwk] of doc.keys.entries()) {
    if (!isObject(jwk)) return fail(`bundle JSON key ${i} is not an object`);
    if (jwk.use !== 'x509-svid') continue;
    const x5c = jwk.x5c;
    if (!Array.isArray(x5c) || x5c.length !== 1 || typeof x5c[0] !== 'string')
      return fail(`bundle JSON key ${i}: an x509-svid key must have exactly one certificate in "x5c"`);
    const b64 = x5c[0];
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0)
      return fail(`bundle JSON key ${i}: "x5c" is not standard base64`);
    const der = Buffer.from(b64, 'base64');
    const same = samePublicKey(jwk, der);
    if (!same.ok) return fail(`bundle JSON key ${i}: ${same.reason}`);
    ders.push(der);
  }
  if (ders.length === 0) return fail('bundle JSON has no x509-svid key');
  return bundleOf(trustDomain, ders, meta);
}

/**
 * The Workload API form (X509BundlesResponse, X509SVIDResponse.bundle): the authorities' DER
 * certificates concatenated.
 */
export function parseDerBundle(trustDomain: string, bytes: Uint8Array): Result<X509Bundle> {
  if (bytes.byteLength > MAX_BUNDLE_DOCUMENT_BYTES)
    return fail(`bundle is larger than ${MAX_BUNDLE_DOCUMENT_BYTES} bytes`);
  const ders = splitDer(bytes);
  if (!ders.ok) return ders;
  if (ders.value.length === 0) return fail('bundle has no certificate');
  return bundleOf(trustDomain, ders.value, {});
}

/**
 * A Workload API `X509BundlesResponse.bundles` map (trust domain SPIFFE ID → concatenated DER) as bundles,
 * ready for `X509BundleSet.replace('workload-api', …)`. One bad entry refuses the whole update, so the
 * set keeps the last good one rather than silently losing a trust domain.
 */
export function bundlesFromWorkloadApi(map: Iterable<[string, Uint8Array]>): Result<X509Bundle[]> {
  const out: X509Bundle[] = [];
  for (const [key, der] of map) {
    const b = parseDerBundle(key, der);
    if (!b.ok) return fail(`bundle for ${JSON.stringify(key.slice(0, 64))}: ${b.reason}`);
    out.push(b.value);
  }
  return ok(out);
}

/** Splits concatenated DER SEQUENCEs using their outer length (definite lengths only, as DER requires). */
export function splitDer(bytes: Uint8Array): Result<Buffer[]> {
  const out: Buffer[] = [];
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  while (pos < buf.length) {
    if (buf[pos] !== 0x30) return fail('bundle DER is not a sequence of certificates');
    const first = buf[pos + 1];
    if (first === undefined) return fail('bundle DER is truncated');
    let len: number;
    let header: number;
    if (first < 0x80) {
      len = first;
      header = 2;
    } else {
      const n = first & 0x7f;
      if (n === 0 || n > 4) return fail('bundle DER has an unsupported length encoding');
      if (pos + 2 + n > buf.length) return fail('bundle DER is truncated');
      len = 0;
      for (let i = 0; i < n; i++) len = len * 256 + buf[pos + 2 + i]!;
      header = 2 + n;
    }
    const end = pos + header + len;
    if (end > buf.length) return fail('bundle DER is truncated');
    out.push(Buffer.from(buf.subarray(pos, end)));
    if (out.length > MAX_BUNDLE_AUTHORITIES) return fail(`bundle has more than ${MAX_BUNDLE_AUTHORITIES} authorities`);
    pos = end;
  }
  return ok(out);
}

function bundleOf(
  trustDomainText: string,
  ders: Buffer[],
  meta: { refreshHintSeconds?: number; sequenceNumber?: number },
): Result<X509Bundle> {
  const td = parseTrustDomain(trustDomainText);
  if (!td.ok) return td;
  if (ders.length > MAX_BUNDLE_AUTHORITIES) return fail(`bundle has more than ${MAX_BUNDLE_AUTHORITIES} authorities`);
  const authorities: X509Certificate[] = [];
  const seen = new Set<string>();
  for (const [i, der] of ders.entries()) {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(der);
    } catch {
      return fail(`bundle authority ${i} is not a valid certificate`);
    }
    // Roots sign other certificates; RFC 5280 path validation (and Go's) refuses a non-CA anchor.
    if (!cert.ca) return fail(`bundle authority ${i} is not a CA certificate`);
    if (seen.has(cert.fingerprint256)) continue;
    seen.add(cert.fingerprint256);
    authorities.push(cert);
  }
  return ok(Object.freeze({ trustDomain: td.value, authorities: Object.freeze(authorities), ...meta }));
}

function samePublicKey(jwk: Record<string, unknown>, der: Buffer): Result<true> {
  let certKey: Buffer;
  try {
    certKey = new X509Certificate(der).publicKey.export({ type: 'spki', format: 'der' });
  } catch {
    return fail('"x5c" is not a valid certificate');
  }
  let jwkKey: Buffer;
  try {
    // Only the public members: a JWK with "d" would be a private key, which has no place in a bundle.
    if ('d' in jwk) return fail('key contains private key material');
    jwkKey = createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'der' });
  } catch {
    return fail('key parameters are not a valid public JWK');
  }
  return jwkKey.equals(certKey) ? ok(true) : fail('key parameters do not match the "x5c" certificate');
}

/**
 * A bundle as plain data (DER authorities and the publisher's metadata), for another process: the
 * primary of `serve --workers N` hands the bundles it accepted to its workers in this form.
 */
export interface PortableX509Bundle {
  trustDomain: string;
  authorities: Uint8Array[];
  refreshHintSeconds?: number;
  sequenceNumber?: number;
}

export function toPortableBundle(b: X509Bundle): PortableX509Bundle {
  return {
    trustDomain: b.trustDomain,
    authorities: b.authorities.map((c) => new Uint8Array(c.raw)),
    ...(b.refreshHintSeconds !== undefined ? { refreshHintSeconds: b.refreshHintSeconds } : {}),
    ...(b.sequenceNumber !== undefined ? { sequenceNumber: b.sequenceNumber } : {}),
  };
}

/** The receiving side: every authority is parsed and checked again, as from any other source. */
export function fromPortableBundle(p: PortableX509Bundle): Result<X509Bundle> {
  if (!isObject(p) || typeof p.trustDomain !== 'string' || !Array.isArray(p.authorities))
    return fail('not a portable bundle');
  if (!p.authorities.every((a) => a instanceof Uint8Array)) return fail('bundle authorities are not DER bytes');
  return bundleOf(
    p.trustDomain,
    p.authorities.map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength)),
    {
      ...(p.refreshHintSeconds !== undefined ? { refreshHintSeconds: p.refreshHintSeconds } : {}),
      ...(p.sequenceNumber !== undefined ? { sequenceNumber: p.sequenceNumber } : {}),
    },
  );
}

/** Same authorities, hint and sequence: an unchanged refresh must not invalidate caches. */
function sameBundle(a: X509Bundle | undefined, b: X509Bundle | undefined): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined) return false;
  if (a.trustDomain !== b.trustDomain || a.refreshHintSeconds !== b.refreshHintSeconds) return false;
  if (a.sequenceNumber !== b.sequenceNumber || a.authorities.length !== b.authorities.length) return false;
  return a.authorities.every((cert, i) => cert.fingerprint256 === b.authorities[i]!.fingerprint256);
}

// -------------------------------------------------------------------------------------------- set

export interface BundleSetChange {
  generation: number;
  /** trust domains whose bundle was added, replaced or removed */
  changed: string[];
  /** trust domains an origin offered but another origin already provides (first one keeps it) */
  conflicts: string[];
}

/**
 * Every trust domain's bundle, fed by several origins (`file:…`, `url:…`, `workload-api`). Each origin
 * replaces its own bundles as a whole; a trust domain belongs to the first origin that provided it, so
 * an operator's explicit `--trust-bundle` is not overridden by what a later source offers for the same
 * name (the conflict is reported). Reads are of one immutable snapshot.
 */
export class X509BundleSet implements X509BundleSource {
  private view: ReadonlyMap<string, X509Bundle> = new Map();
  private readonly byOrigin = new Map<string, ReadonlyMap<string, X509Bundle>>();
  /** origins in the order they were first named; earlier ones keep a contested trust domain */
  private readonly order: string[] = [];
  private gen = 0;
  private readonly listeners = new Set<(change: BundleSetChange) => void>();

  constructor(initial: Iterable<X509Bundle> = [], origin = 'static') {
    const bundles = [...initial];
    if (bundles.length > 0) this.replace(origin, bundles);
  }

  get generation(): number {
    return this.gen;
  }

  bundleFor(trustDomain: string): X509Bundle | undefined {
    return this.view.get(trustDomain);
  }

  trustDomains(): string[] {
    return [...this.view.keys()].sort();
  }

  /** How many bundles the set holds. 0 means no verification is configured yet. */
  get size(): number {
    return this.view.size;
  }

  /**
   * Ranks `origin` now, before it has bundles: an operator's configured trust domains are reserved at
   * start so that a Workload API update arriving first does not take them.
   */
  reserve(origin: string): void {
    if (!this.order.includes(origin)) this.order.push(origin);
  }

  /** Replaces every bundle `origin` provided before with `bundles`, in one step. */
  replace(origin: string, bundles: Iterable<X509Bundle>): BundleSetChange {
    const mine = new Map<string, X509Bundle>();
    for (const b of bundles) mine.set(b.trustDomain, b);
    const next = new Map(this.byOrigin);
    if (mine.size === 0) next.delete(origin);
    else next.set(origin, mine);
    return this.commit(next);
  }

  /** Adds or replaces one trust domain's bundle from `origin`, keeping that origin's others. */
  set(origin: string, bundle: X509Bundle): BundleSetChange {
    const mine = new Map(this.byOrigin.get(origin) ?? []);
    mine.set(bundle.trustDomain, bundle);
    return this.commit(new Map(this.byOrigin).set(origin, mine));
  }

  /** Removes one trust domain's bundle from `origin` (a terminated federation relationship). */
  delete(origin: string, trustDomain: string): BundleSetChange {
    const mine = new Map(this.byOrigin.get(origin) ?? []);
    mine.delete(trustDomain);
    const next = new Map(this.byOrigin);
    if (mine.size === 0) next.delete(origin);
    else next.set(origin, mine);
    return this.commit(next);
  }

  /** Called after every change that altered at least one bundle; returns the unsubscribe function. */
  subscribe(listener: (change: BundleSetChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private commit(byOrigin: Map<string, ReadonlyMap<string, X509Bundle>>): BundleSetChange {
    const view = new Map<string, X509Bundle>();
    const conflicts: string[] = [];
    for (const origin of byOrigin.keys()) this.reserve(origin);
    for (const origin of this.order) {
      for (const [td, bundle] of byOrigin.get(origin) ?? []) {
        if (view.has(td)) conflicts.push(td);
        else view.set(td, bundle);
      }
    }
    const changed = [...new Set([...this.view.keys(), ...view.keys()])]
      .filter((td) => !sameBundle(this.view.get(td), view.get(td)))
      .sort();
    this.byOrigin.clear();
    for (const [origin, m] of byOrigin) this.byOrigin.set(origin, m);
    if (changed.length > 0) {
      this.view = view;
      this.gen++;
    }
    const change = { generation: this.gen, changed, conflicts: [...new Set(conflicts)].sort() };
    if (changed.length > 0) {
      for (const l of this.listeners) {
        try {
          l(change);
        } catch {
          // a listener's failure is its own; the new bundles are in place either way
        }
      }
    }
    return change;
  }
}
