// Verifies an X.509-SVID chain (leaf first, intermediates after, as the peer presented it) against the
// trust bundle of the LEAF's trust domain, as go-spiffe's x509svid.Verify does with an x509bundle.Set.
// Signatures and issuer matching are OpenSSL's, through Node's X509Certificate (checkIssued: names,
// key identifiers, the issuer's key usage; verify: the signature); no signature code lives here. On top
// of that, what RFC 5280 path validation adds and OpenSSL's two calls do not: every certificate on the
// path is inside its validity period, every issuer is a CA with keyCertSign, path length limits hold,
// and no critical extension is ignored.
//
// Only the leaf's own trust domain's bundle is ever consulted: a CA of partner.example cannot vouch for
// a spiffe://cluster.local identity even though both bundles are configured. When that is what went
// wrong, the reason says so (the other bundles are looked at only to explain a failure).
import { X509Certificate } from 'node:crypto';
import { sha256Key } from '../common/hash.js';
import { ByteLru, MAP_ENTRY_BYTES, stringBytes, type LruStats } from '../common/lru.js';
import { fail, ok, type Result } from '../common/result.js';
import type { X509Bundle, X509BundleSource } from './x509-bundle.js';
import { MAX_CHAIN_CERTS, parsePemBlocks, signingCertificateFacts, type SigningCertificateFacts } from './x509-svid.js';

export interface VerifiedChain {
  trustDomain: string;
  /** positions in the presented chain of the intermediates used, leaf-side first */
  intermediates: number[];
  /** SHA-256 fingerprint (as Node prints it) of the bundle root the path ends at */
  rootFingerprint: string;
  /** the intersection of every validity period on the path */
  notBefore: Date;
  notAfter: Date;
}

export interface ChainVerifierOptions {
  /** verified chains remembered (0 = no cache); default DEFAULT_CHAIN_CACHE_ENTRIES */
  cacheEntries?: number;
  /** the cache's bound in estimated heap bytes; default: scaled with cacheEntries at the default's ratio */
  cacheBytes?: number;
}

/** Room for 100,000 workloads' chains (serve --chain-cache-entries). */
export const DEFAULT_CHAIN_CACHE_ENTRIES = 100_000;
/**
 * 100,000 cluster.local chains are estimated at 192 B an entry, 19.2 MB (173-182 B measured by
 * bench/cache-bytes.mjs, docs/performance.md); the rest is room for trust domains of up to ~70 characters.
 */
export const DEFAULT_CHAIN_CACHE_BYTES = 24 * 1024 * 1024;

/**
 * Bundle-set aware verification with a cache of successes. A cached success is used only while the
 * bundle set is at the generation it was verified against, for the same trust domain, and the decision
 * time is inside the path's validity window, so a rotated bundle or an expired intermediate is
 * re-verified (and refused). Failures are not cached: their reason can depend on the time, and they are
 * the rare case.
 */
export class ChainVerifier {
  private readonly cache: ByteLru<string> | undefined;
  private hitCount = 0;
  private missCount = 0;

  constructor(
    readonly bundles: X509BundleSource,
    opts: ChainVerifierOptions = {},
  ) {
    const entries = Math.max(0, Math.floor(opts.cacheEntries ?? DEFAULT_CHAIN_CACHE_ENTRIES));
    if (entries > 0) {
      const bytes = opts.cacheBytes ?? Math.ceil((DEFAULT_CHAIN_CACHE_BYTES * entries) / DEFAULT_CHAIN_CACHE_ENTRIES);
      this.cache = new ByteLru<string>({ maxBytes: bytes, maxEntries: entries, sizeOf: entryBytes });
      liveCache = this.cache;
    }
  }

  /** `pem`: the chain as the caller sent it (Envoy's URL-encoded form too); `trustDomain`: the leaf's. */
  verifyPem(pem: string, trustDomain: string, now: Date): Result<VerifiedChain> {
    const generation = this.bundles.generation;
    const cache = this.cache;
    const key = cache ? sha256Key(pem) : '';
    if (cache) {
      liveCache = cache;
      const packed = cache.get(key);
      const hit = packed === undefined ? undefined : unpack(packed, generation, trustDomain, now);
      if (hit) {
        this.hitCount++;
        totals.hits++;
        return ok(hit);
      }
    }
    this.missCount++;
    if (cache) totals.misses++;
    const blocks = parsePemBlocks(pem);
    const result = blocks.ok ? verifyChain(blocks.value, trustDomain, this.bundles, now) : blocks;
    if (cache) {
      const packed = result.ok ? pack(generation, result.value) : undefined;
      if (packed === undefined) {
        cache.delete(key);
      } else {
        const before = cache.stats().evictions;
        cache.set(key, packed);
        totals.evictions += cache.stats().evictions - before;
      }
    }
    return result;
  }

  /** Verifications answered from the cache. */
  get hits(): number {
    return this.hitCount;
  }

  /** Verifications done in full (the cache off, or nothing current cached). */
  get misses(): number {
    return this.missCount;
  }

  get cacheSize(): number {
    return this.cache?.size ?? 0;
  }

  /** This verifier's cache: its own hits and misses; evictions, entries and bytes against the bound. */
  cacheStats(): LruStats {
    const lru = this.cache?.stats();
    return {
      hits: this.hitCount,
      misses: this.missCount,
      evictions: lru?.evictions ?? 0,
      entries: lru?.entries ?? 0,
      bytes: lru?.bytes ?? 0,
      maxBytes: lru?.maxBytes ?? 0,
      maxEntries: lru?.maxEntries ?? 0,
    };
  }
}

// ---------------------------------------------------------------------------------------------- cache

// Every workload's chain is verified again and again until it rotates, so a cluster's working set is one
// entry per workload (100,000 in a big cluster). The key is the SHA-256 of the exact text (32 Latin-1
// characters, whatever the chain's size, and no text can find another's entry); the value is what a
// hit needs packed into ONE Latin-1 string (one heap object per entry; see x509-svid.ts for why):
// bundle generation, notBefore, notAfter (float64 each), the root's SHA-256 fingerprint (32 bytes), the
// number of intermediates on the path and their positions (a byte each), then the trust domain.
const PACK_HEAD = 8 + 8 + 8 + 32 + 1;
const MAX_POSITION = 0xff;

// Every verifier's counts since start, and the cache of the one that answered (or was made) last: a
// service has one, whose bytes /metrics reports.
const totals = { hits: 0, misses: 0, evictions: 0 };
let liveCache: ByteLru<string> | undefined;

/** Hits, misses and evictions of every chain-verification cache; bytes and bound of the live one. */
export function chainCacheStats(): {
  hits: number;
  misses: number;
  evictions: number;
  bytes: number;
  maxBytes: number;
} {
  return { ...totals, bytes: liveCache?.bytes ?? 0, maxBytes: liveCache?.maxBytes ?? 0 };
}

function entryBytes(key: string, packed: string): number {
  return MAP_ENTRY_BYTES + stringBytes(key) + stringBytes(packed);
}

function pack(generation: number, chain: VerifiedChain): string | undefined {
  const fingerprint = Buffer.from(chain.rootFingerprint.replaceAll(':', ''), 'hex');
  const n = chain.intermediates.length;
  // Never met from verifyChain (at most MAX_CHAIN_CERTS positions, Node's fingerprint format); what
  // would not round-trip is verified on every call rather than cached wrong.
  if (fingerprint.length !== 32 || fingerprintText(fingerprint) !== chain.rootFingerprint) return undefined;
  if (n > MAX_POSITION || chain.intermediates.some((p) => !(p >= 0 && p <= MAX_POSITION))) return undefined;
  const packed = Buffer.allocUnsafe(PACK_HEAD + n + chain.trustDomain.length);
  packed.writeDoubleBE(generation, 0);
  packed.writeDoubleBE(chain.notBefore.getTime(), 8);
  packed.writeDoubleBE(chain.notAfter.getTime(), 16);
  fingerprint.copy(packed, 24);
  packed.writeUInt8(n, 56);
  chain.intermediates.forEach((p, i) => packed.writeUInt8(p, PACK_HEAD + i));
  packed.write(chain.trustDomain, PACK_HEAD + n, 'latin1');
  const text = packed.toString('latin1');
  return text.endsWith(chain.trustDomain) ? text : undefined;
}

/** The cached chain, if it is current: same bundle generation and trust domain, `now` in its window. */
function unpack(text: string, generation: number, trustDomain: string, now: Date): VerifiedChain | undefined {
  // Only the 24 bytes of numbers go through a Buffer (a shared one: a hit allocates none); the rest
  // are Latin-1 characters read from the string itself.
  scratch.write(text, 0, 24, 'latin1');
  const n = text.charCodeAt(56);
  if (scratch.readDoubleBE(0) !== generation || text.slice(PACK_HEAD + n) !== trustDomain) return undefined;
  const notBefore = scratch.readDoubleBE(8);
  const notAfter = scratch.readDoubleBE(16);
  const t = now.getTime();
  if (!(t >= notBefore && t <= notAfter)) return undefined;
  const intermediates: number[] = [];
  for (let i = 0; i < n; i++) intermediates.push(text.charCodeAt(PACK_HEAD + i));
  return {
    trustDomain,
    intermediates,
    rootFingerprint: fingerprintOf(text.slice(24, 56)),
    notBefore: new Date(notBefore),
    notAfter: new Date(notAfter),
  };
}

const scratch = Buffer.alloc(24);
// A trust domain has one root or two (during a rotation): the last one's text is kept.
let lastFingerprint = { bytes: '', text: '' };

function fingerprintOf(bytes: string): string {
  if (bytes !== lastFingerprint.bytes) lastFingerprint = { bytes, text: fingerprintText(Buffer.from(bytes, 'latin1')) };
  return lastFingerprint.text;
}

/** As Node prints X509Certificate.fingerprint256: upper-case hex pairs joined by colons. */
function fingerprintText(bytes: Uint8Array): string {
  return Buffer.from(bytes)
    .toString('hex')
    .toUpperCase()
    .replace(/..(?!$)/g, '$&:');
}

const PREFIX = 'certificate chain not verified: ';

/**
 * The careful path: builds a path from the leaf through the presented intermediates to a root in the
 * bundle of `trustDomain`, trying every candidate issuer (depth-first, each intermediate used once).
 * `trustDomain` must be the leaf's, from its validated SPIFFE ID.
 */
export function verifyChain(
  chainDer: readonly Uint8Array[],
  trustDomain: string,
  bundles: X509BundleSource,
  now: Date,
): Result<VerifiedChain> {
  try {
    return verifyUnguarded(chainDer, trustDomain, bundles, now);
  } catch {
    // OpenSSL refusing a key type or a malformed structure it did not refuse at parse time.
    return fail(`${PREFIX}a certificate could not be processed`);
  }
}

interface IssuerCertificate {
  cert: X509Certificate;
  /** signingCertificateFacts of its DER, computed once per certificate */
  facts: Result<SigningCertificateFacts>;
}

// Intermediates and roots are few and shared by every workload of a trust domain, while parsing one
// for its path length and extensions (pkijs) costs milliseconds: each distinct certificate is parsed
// once. Roots are keyed by their X509Certificate object (bundles are immutable), intermediates by DER.
const rootFacts = new WeakMap<X509Certificate, Result<SigningCertificateFacts>>();
const intermediateCache = new Map<string, IssuerCertificate>();
const INTERMEDIATE_CACHE_ENTRIES = 256;

function issuerCertificate(der: Uint8Array): IssuerCertificate {
  const key = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString('base64');
  let hit = intermediateCache.get(key);
  if (hit === undefined) {
    hit = { cert: new X509Certificate(der), facts: signingCertificateFacts(der) };
    if (intermediateCache.size >= INTERMEDIATE_CACHE_ENTRIES) {
      const oldest = intermediateCache.keys().next();
      if (!oldest.done) intermediateCache.delete(oldest.value);
    }
    intermediateCache.set(key, hit);
  }
  return hit;
}

function factsOfRoot(root: X509Certificate): Result<SigningCertificateFacts> {
  let facts = rootFacts.get(root);
  if (facts === undefined) {
    facts = signingCertificateFacts(root.raw);
    rootFacts.set(root, facts);
  }
  return facts;
}

interface Candidate extends IssuerCertificate {
  /** position in the presented chain (1 = first after the leaf) */
  position: number;
}

function verifyUnguarded(
  chainDer: readonly Uint8Array[],
  trustDomain: string,
  bundles: X509BundleSource,
  now: Date,
): Result<VerifiedChain> {
  if (chainDer.length === 0) return fail(`${PREFIX}no certificates`);
  if (chainDer.length > MAX_CHAIN_CERTS) return fail(`${PREFIX}more than ${MAX_CHAIN_CERTS} certificates`);
  let leaf: X509Certificate;
  const intermediates: Candidate[] = [];
  try {
    leaf = new X509Certificate(chainDer[0]!);
    for (let i = 1; i < chainDer.length; i++) intermediates.push({ ...issuerCertificate(chainDer[i]!), position: i });
  } catch {
    return fail(`${PREFIX}a certificate could not be parsed`);
  }
  const bundle = bundles.bundleFor(trustDomain);
  if (bundle === undefined) return fail(`${PREFIX}no trust bundle for trust domain ${trustDomain}`);

  const leafFrom = new Date(leaf.validFrom);
  const leafTo = new Date(leaf.validTo);
  const t = now.getTime();
  if (!(t >= leafFrom.getTime())) return fail(`${PREFIX}leaf certificate is not yet valid`);
  if (!(t <= leafTo.getTime())) return fail(`${PREFIX}leaf certificate has expired`);

  const search = new PathSearch(bundle, intermediates, now);
  const found = search.from(leaf, 0, new Set());
  if (found.ok) {
    const v = found.value;
    return ok({ ...v, notBefore: later(leafFrom, v.notBefore), notAfter: earlier(leafTo, v.notAfter) });
  }

  // Explain the failure as precisely as the evidence allows.
  // checkIssued(leaf) is false here: OpenSSL wants keyCertSign on an issuer, which a leaf lacks.
  if (leaf.subject === leaf.issuer && safeVerify(leaf, leaf)) return fail(`${PREFIX}leaf certificate is self-signed`);
  if (search.problem !== undefined) return fail(`${PREFIX}${search.problem}`);
  for (const other of bundles.trustDomains()) {
    if (other === trustDomain) continue;
    const foreign = bundles.bundleFor(other);
    if (foreign && new PathSearch(foreign, intermediates, now).from(leaf, 0, new Set()).ok) {
      return fail(`${PREFIX}signed by a CA of trust domain ${other}, not of ${trustDomain}`);
    }
  }
  return fail(
    intermediates.length === 0
      ? `${PREFIX}no path to a root of trust domain ${trustDomain} (issuer not in the bundle; intermediate missing?)`
      : `${PREFIX}no path to a root of trust domain ${trustDomain}`,
  );
}

/** One depth-first path search; remembers the first concrete defect met (an expired issuer, …). */
class PathSearch {
  problem: string | undefined;

  constructor(
    private readonly bundle: X509Bundle,
    private readonly intermediates: readonly Candidate[],
    private readonly now: Date,
  ) {}

  /**
   * A path from `subject` to a root. `below`: intermediates already on the path beneath `subject`'s
   * issuer (for path length limits); `used`: chain positions already on the path.
   */
  from(subject: X509Certificate, below: number, used: ReadonlySet<number>): Result<VerifiedChain> {
    for (const root of this.bundle.authorities) {
      if (!issuedBy(subject, root)) continue;
      const facts = this.check(root, factsOfRoot(root), 'root of the trust bundle', below);
      if (!facts.ok) continue;
      return ok({
        trustDomain: this.bundle.trustDomain,
        intermediates: [],
        rootFingerprint: root.fingerprint256,
        notBefore: facts.value.notBefore,
        notAfter: facts.value.notAfter,
      });
    }
    if (used.size >= MAX_CHAIN_CERTS) return fail('path too long');
    for (const c of this.intermediates) {
      if (used.has(c.position) || !issuedBy(subject, c.cert)) continue;
      const facts = this.check(c.cert, c.facts, `intermediate certificate ${c.position}`, below);
      if (!facts.ok) continue;
      const rest = this.from(c.cert, below + 1, new Set(used).add(c.position));
      if (!rest.ok) continue;
      return ok({
        ...rest.value,
        intermediates: [c.position, ...rest.value.intermediates],
        notBefore: later(facts.value.notBefore, rest.value.notBefore),
        notAfter: earlier(facts.value.notAfter, rest.value.notAfter),
      });
    }
    return fail('no path');
  }

  /** Is `issuer` fit to have signed a path with `below` intermediates under it, now? */
  private check(
    issuer: X509Certificate,
    facts: Result<SigningCertificateFacts>,
    what: string,
    below: number,
  ): Result<SigningCertificateFacts> {
    const bad = (problem: string): Result<never> => {
      this.problem ??= `${what} ${problem}`;
      return fail(problem);
    };
    if (!facts.ok) return bad(`is not usable: ${facts.reason}`);
    if (!issuer.ca) return bad('is not a CA');
    const t = this.now.getTime();
    if (t < facts.value.notBefore.getTime()) return bad('is not yet valid');
    if (t > facts.value.notAfter.getTime()) return bad('has expired');
    if (facts.value.pathLen !== undefined && below > facts.value.pathLen)
      return bad(`allows ${facts.value.pathLen} intermediate(s) below it, the path has ${below}`);
    return facts;
  }
}

function issuedBy(subject: X509Certificate, issuer: X509Certificate): boolean {
  return subject.checkIssued(issuer) && safeVerify(subject, issuer);
}

function safeVerify(subject: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return subject.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

function later(a: Date, b: Date): Date {
  return a.getTime() >= b.getTime() ? a : b;
}

function earlier(a: Date, b: Date): Date {
  return a.getTime() <= b.getTime() ? a : b;
}
