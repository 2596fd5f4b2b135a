// X.509-SVID parsing and shape validation per the SPIFFE X.509-SVID standard
// (spiffe/spiffe standards/X509-SVID.md §2-§5; go-spiffe v2 svid/x509svid is the model).
//
// What this does NOT do: verify signatures or build a path to a trust bundle. The certificate reaches
// us from a TLS terminator that already did RFC 5280 path validation against the mesh CA (Envoy for
// `source.certificate`, the BIG-IP client-ssl profile for the sideband). This module checks what path
// validation does not: that the leaf really is a leaf SVID naming exactly one well-formed SPIFFE ID,
// with the key usage the standard demands, inside its validity period at decision time.
//
// Reasons are fixed ASCII strings; no certificate or key material is ever echoed into them.
import { sha256Key } from '../common/hash.js';
import { ByteLru, MAP_ENTRY_BYTES, stringBytes, type LruStats } from '../common/lru.js';
import { fail, ok, withCode, type Failure, type Result } from '../common/result.js';
import type { SpiffeId } from './spiffe-id.js';
import { fastChainShape, UNSURE } from './svid-der.js';
import { referenceChainShape } from './x509-svid-reference.js';

export { signingCertificateFacts, type SigningCertificateFacts } from './x509-svid-reference.js';

export interface X509Svid {
  spiffeId: SpiffeId;
  notBefore: Date;
  notAfter: Date;
  /** lowercase hex of the leaf's serial number as encoded (two's complement bytes) */
  serialNumber: string;
  /** lowercase hex SHA-256 of the leaf certificate's DER */
  sha256: string;
}

/** Inputs above these limits are refused before any parsing work. */
export const MAX_PEM_CHARS = 64 * 1024;
export const MAX_CHAIN_CERTS = 10;

// ---------------------------------------------------------------------------------------------- PEM

const BEGIN = '-----BEGIN ';
const DASHES = '-----';
const BASE64_BODY = /^[A-Za-z0-9+/]+={0,2}$/;

/**
 * Splits PEM text into the DER of its CERTIFICATE blocks, in order. Also accepts the URL-encoded PEM
 * Envoy puts in `attributes.source.certificate`. Anything else in the text (another block type, stray
 * text, PEM headers, bad base64) is refused: the input is a peer's certificate chain and nothing more.
 */
export function parsePemBlocks(input: string): Result<Uint8Array[]> {
  const blocks = pemBlocks(input);
  return blocks.ok ? blocks : withCode(blocks, 'pem');
}

function pemBlocks(input: string): Result<Uint8Array[]> {
  if (typeof input !== 'string' || input.trim() === '') return fail('certificate PEM is empty');
  if (input.length > MAX_PEM_CHARS) return fail(`certificate PEM is longer than ${MAX_PEM_CHARS} characters`);
  let text = input;
  if (text.includes('%')) {
    // Plain PEM never contains '%', so this can only be the URL-encoded form.
    try {
      text = decodeURIComponent(text);
    } catch {
      return fail('certificate PEM has invalid URL encoding');
    }
  }

  const blocks: Uint8Array[] = [];
  let pos = 0;
  for (;;) {
    const begin = text.indexOf(BEGIN, pos);
    if (text.slice(pos, begin < 0 ? text.length : begin).trim() !== '')
      return fail('certificate PEM has text outside PEM blocks');
    if (begin < 0) break;
    const labelStart = begin + BEGIN.length;
    const labelEnd = text.indexOf(DASHES, labelStart);
    const label = labelEnd < 0 ? '' : text.slice(labelStart, labelEnd);
    if (labelEnd < 0 || /[^A-Z0-9 ]/.test(label)) return fail('certificate PEM has a malformed BEGIN line');
    // Checked before anything else about the block, so a key is never decoded or described further.
    if (label.includes('PRIVATE KEY'))
      return fail('certificate PEM contains a private key; only CERTIFICATE blocks are accepted');
    if (label !== 'CERTIFICATE') return fail('certificate PEM contains a non-CERTIFICATE block');
    const endLine = `-----END ${label}-----`;
    const bodyStart = labelEnd + DASHES.length;
    const end = text.indexOf(endLine, bodyStart);
    if (end < 0) return fail('certificate PEM has an unterminated CERTIFICATE block');
    if (blocks.length === MAX_CHAIN_CERTS) return fail(`certificate PEM has more than ${MAX_CHAIN_CERTS} certificates`);
    const body = text.slice(bodyStart, end).replace(/[ \t\r\n]+/g, '');
    if (body.length === 0 || body.length % 4 !== 0 || !BASE64_BODY.test(body)) {
      return fail('certificate PEM has a CERTIFICATE block with invalid base64');
    }
    blocks.push(new Uint8Array(Buffer.from(body, 'base64')));
    pos = end + endLine.length;
  }
  if (blocks.length === 0) return fail('certificate PEM has no CERTIFICATE block');
  return ok(blocks);
}

// ------------------------------------------------------------------------------------- certificates

/** Validates an X.509-SVID chain (leaf first) and returns the leaf's identity. */
export function parseX509Svid(chainDer: readonly Uint8Array[], now: Date): Result<X509Svid> {
  const shape = validateChainShape(chainDer);
  return shape.ok ? checkValidityPeriod(shape.value, now) : shape;
}

/**
 * parseX509Svid by the reference validator alone (pkijs object model, no fast path): what the fast path
 * is held to in the differential tests, and a second opinion for `inspect`.
 */
export function parseX509SvidReference(chainDer: readonly Uint8Array[], now: Date): Result<X509Svid> {
  const shape = chainCountProblem(chainDer) ?? referenceChainShape(chainDer);
  return shape.ok ? checkValidityPeriod(shape.value, now) : withCode(shape, 'svid');
}

/** parsePemBlocks + parseX509Svid, memoised on a hash of the exact PEM text (see the cache below). */
export function parseX509SvidPem(pem: string, now: Date): Result<X509Svid> {
  if (!cacheable(pem)) {
    const blocks = parsePemBlocks(pem);
    return blocks.ok ? parseX509Svid(blocks.value, now) : blocks;
  }
  const key = sha256Key(pem);
  const cached = shapeCache.get(key);
  const shape = cached === undefined ? storeShape(pem, key) : expand(cached);
  // The validity period depends on `now`, so it is never cached.
  return shape.ok ? checkValidityPeriod(shape.value, now) : shape;
}

/**
 * parseX509SvidPem's SPIFFE ID alone: what the identity step needs of the certificate on every Check.
 * A cache hit builds nothing (no Dates, no hex strings, no copy of the URI): the ID of a recently seen
 * certificate comes from a small memo as a shared, frozen Result, and only the validity period is
 * checked against `now`. Held to parseX509SvidPem by test/fuzz/identity-fast-path.fuzz.test.ts.
 */
export function parseX509SvidIdPem(pem: string, now: Date): Result<SpiffeId> {
  if (!cacheable(pem)) {
    const svid = parseX509SvidPem(pem, now);
    return svid.ok ? ok(svid.value.spiffeId) : svid;
  }
  const key = sha256Key(pem);
  const cached = shapeCache.get(key);
  if (cached === undefined) {
    const shape = storeShape(pem, key);
    if (!shape.ok) return shape;
    return (
      validityProblem(shape.value.notBefore.getTime(), shape.value.notAfter.getTime(), now) ?? ok(shape.value.spiffeId)
    );
  }
  if (typeof cached !== 'string') return cached;
  const hot = hotShape(cached);
  return validityProblem(hot.notBefore, hot.notAfter, now) ?? hot.id;
}

function cacheable(pem: string): boolean {
  return typeof pem === 'string' && pem.length <= MAX_PEM_CHARS && shapeCache.maxEntries > 0;
}

/** A cache miss: the careful parse, its time-independent outcome kept under `key`. */
function storeShape(pem: string, key: string): Result<X509Svid> {
  const blocks = parsePemBlocks(pem);
  const shape = blocks.ok ? validateChainShape(blocks.value) : blocks;
  const entry = compact(shape);
  if (entry !== undefined) shapeCache.set(key, entry);
  return shape;
}

let referenceFallbacks = 0;

/** Everything about the chain that does not depend on the time of the decision. */
function validateChainShape(chainDer: readonly Uint8Array[]): Result<X509Svid> {
  const problem = chainCountProblem(chainDer);
  if (problem) return problem;
  // The fast reader decides every chain it can read exactly as the reference would; the rest (damaged
  // or unusual encodings, which a TLS terminator rarely lets through) take the careful path.
  let shape = fastChainShape(chainDer);
  if (shape === UNSURE) {
    referenceFallbacks++;
    shape = referenceChainShape(chainDer);
  }
  return shape.ok ? shape : withCode(shape, 'svid');
}

function chainCountProblem(chainDer: readonly Uint8Array[]): Result<never> | undefined {
  if (chainDer.length === 0) return fail('no certificates found', 'svid');
  if (chainDer.length > MAX_CHAIN_CERTS)
    return fail(`certificate chain has more than ${MAX_CHAIN_CERTS} certificates`, 'svid');
  return undefined;
}

/** How many chains the fast reader handed to the reference validator (for tests and metrics). */
export function x509SvidReferenceFallbacks(): number {
  return referenceFallbacks;
}

function checkValidityPeriod(svid: X509Svid, now: Date): Result<X509Svid> {
  const problem = validityProblem(svid.notBefore.getTime(), svid.notAfter.getTime(), now);
  if (problem !== undefined) return problem;
  // The cached value is shared by every caller; Dates are mutable even when frozen, so hand out copies.
  return ok({
    spiffeId: svid.spiffeId,
    notBefore: new Date(svid.notBefore),
    notAfter: new Date(svid.notAfter),
    serialNumber: svid.serialNumber,
    sha256: svid.sha256,
  });
}

function validityProblem(notBefore: number, notAfter: number, now: Date): Failure | undefined {
  const t = now.getTime();
  if (Number.isNaN(t)) return INVALID_TIME;
  if (t < notBefore) return NOT_YET_VALID;
  if (t > notAfter) return EXPIRED;
  return undefined;
}

// Shared by every caller, hence frozen.
const INVALID_TIME = Object.freeze(fail('decision time is invalid', 'validity')) as Failure;
const NOT_YET_VALID = Object.freeze(fail('certificate is not yet valid', 'validity')) as Failure;
const EXPIRED = Object.freeze(fail('certificate has expired', 'validity')) as Failure;

// ---------------------------------------------------------------------------------------------- cache

// A cluster's gateway sees every workload's certificate again and again until it rotates, so the
// time-independent outcome (the SVID, or the structural reason it was refused) is kept in an LRU keyed
// by the SHA-256 of the exact PEM text: a fixed 32-character key whatever the certificate's size. The
// validity period is re-checked against `now` on every call, so an expired certificate is denied even
// when cached. The LRU is bounded in bytes; the per-entry overhead below was measured on Node 20
// (docs/performance.md: a workload SVID's entry holds 320-340 bytes of heap, estimated at ~365).

/**
 * What the cache keeps: a refusal as is, an SVID as ONE Latin-1 string (see pack): a record object
 * with its strings and HeapNumbers was six heap objects and ~330 bytes an entry; one string is one
 * object, so 100,000 workloads take a third less heap and the collector has a sixth of the objects to
 * mark. SPIFFE IDs are ASCII (parseSpiffeId refuses anything else), so one byte per character holds.
 * Rebuilt into a Result<X509Svid> on each hit.
 */
type CachedShape = string | Failure;

// Layout: notBefore, notAfter (float64 ms, 8 bytes each), where the path starts in the URI (uint16),
// the serial's byte count (uint16), the serial bytes, the 32 SHA-256 bytes, then the URI.
const PACK_HEAD = 8 + 8 + 2 + 2;
const SHA256_BYTES = 32;

function compact(shape: Result<X509Svid>): CachedShape | undefined {
  if (!shape.ok) return shape;
  const svid = shape.value;
  const { uri, path } = svid.spiffeId;
  const serial = Buffer.from(svid.serialNumber, 'hex');
  const pathStart = uri.length - path.length;
  // Out-of-range fields (never seen from a parser-accepted SVID: IDs are at most 2,048 ASCII characters)
  // are not cached at all rather than cut short: such a certificate is parsed on every Check.
  if (pathStart > 0xffff || serial.length > 0xffff || serial.length * 2 !== svid.serialNumber.length) return undefined;
  const packed = Buffer.allocUnsafe(PACK_HEAD + serial.length + SHA256_BYTES + uri.length);
  packed.writeDoubleBE(svid.notBefore.getTime(), 0);
  packed.writeDoubleBE(svid.notAfter.getTime(), 8);
  packed.writeUInt16BE(pathStart, 16);
  packed.writeUInt16BE(serial.length, 18);
  serial.copy(packed, PACK_HEAD);
  packed.write(svid.sha256, PACK_HEAD + serial.length, SHA256_BYTES, 'hex');
  packed.write(uri, PACK_HEAD + serial.length + SHA256_BYTES, 'latin1');
  const text = packed.toString('latin1');
  // A URI with a character beyond Latin-1 would not survive the round trip: not cached.
  return text.endsWith(uri) ? text : undefined;
}

function expand(cached: CachedShape): Result<X509Svid> {
  if (typeof cached !== 'string') return cached;
  const packed = Buffer.from(cached, 'latin1');
  const pathStart = packed.readUInt16BE(16);
  const serialEnd = PACK_HEAD + packed.readUInt16BE(18);
  const uri = cached.slice(serialEnd + SHA256_BYTES);
  return ok({
    // Re-cut from a URI parseSpiffeId accepted when the entry was stored, so it is a parsed SpiffeId.
    spiffeId: Object.freeze({
      uri,
      trustDomain: uri.slice(SPIFFE_SCHEME_LENGTH, pathStart),
      path: uri.slice(pathStart),
    }) as unknown as SpiffeId,
    notBefore: new Date(packed.readDoubleBE(0)),
    notAfter: new Date(packed.readDoubleBE(8)),
    serialNumber: packed.toString('hex', PACK_HEAD, serialEnd),
    sha256: packed.toString('hex', serialEnd, serialEnd + SHA256_BYTES),
  });
}

const SPIFFE_SCHEME_LENGTH = 'spiffe://'.length;

/** A certificate's ID as the identity step reads it: frozen, shared by every Check that presents it. */
interface HotShape {
  readonly id: Result<SpiffeId>;
  readonly notBefore: number;
  readonly notAfter: number;
}

// The identity step reads a certificate's ID on every Check, and expanding the packed entry each time
// made ~1 KB of garbage (a Buffer, two Dates, two hex strings, three objects). The IDs of recently seen
// certificates are kept expanded, keyed by the packed entry itself, so a memo entry is a function of its
// key alone and never stale, whatever the certificate cache evicts. Bounded in entries and bytes:
// 4,096 workloads (the warm benchmark's 3,000 fit: a cyclic pattern over more than an LRU holds would
// miss every time), ~2.3 MB of heap when full.
const HOT_ENTRIES = 4096;
const HOT_BYTES = 4 * 1024 * 1024;
/**
 * The memo's objects besides the strings (the HotShape, its Result, the SpiffeId, two HeapNumbers) and
 * what resolveIdentity keeps while the ID lives (its WeakMap entry, Result, frozen Identity, namespace
 * and service account): measured 538-566 bytes an entry in all for ~50-character IDs, beside the key
 * the certificate cache holds anyway; this estimate gives ~600.
 */
const HOT_OBJECT_BYTES = 400;

const hotShapes = new ByteLru<HotShape>({
  maxBytes: HOT_BYTES,
  maxEntries: HOT_ENTRIES,
  // The key is usually the certificate cache's own string, but counted: it may outlive that entry.
  // The ID's trust domain and path may be copies of the URI's characters: counted twice.
  sizeOf: (key, hot) =>
    MAP_ENTRY_BYTES + stringBytes(key) + HOT_OBJECT_BYTES + 2 * stringBytes(hot.id.ok ? hot.id.value.uri : ''),
});

function hotShape(packed: string): HotShape {
  const known = hotShapes.get(packed);
  if (known !== undefined) return known;
  const svid = expand(packed);
  // A packed entry always expands (only SVIDs are packed); the guard is for the type checker.
  if (!svid.ok) return Object.freeze({ id: svid, notBefore: NaN, notAfter: NaN });
  const hot: HotShape = Object.freeze({
    id: Object.freeze(ok(svid.value.spiffeId)),
    notBefore: svid.value.notBefore.getTime(),
    notAfter: svid.value.notAfter.getTime(),
  });
  hotShapes.set(packed, hot);
  return hot;
}

// bench/cache-bytes.mjs measured 220-228 bytes per workload entry in all (docs/performance.md).
function shapeBytes(key: string, shape: CachedShape): number {
  const bytes = MAP_ENTRY_BYTES + stringBytes(key);
  return bytes + stringBytes(typeof shape === 'string' ? shape : shape.reason);
}

/** Default: room for 100,000 workloads (~24 MB estimated with ~55-character SPIFFE IDs). */
export const DEFAULT_SVID_CACHE_ENTRIES = 100_000;
const DEFAULT_SVID_CACHE_BYTES = 24 * 1024 * 1024;

let shapeCache = newShapeCache(DEFAULT_SVID_CACHE_ENTRIES, DEFAULT_SVID_CACHE_BYTES);

function newShapeCache(entries: number, bytes: number): ByteLru<CachedShape> {
  return new ByteLru<CachedShape>({ maxBytes: bytes, maxEntries: entries, sizeOf: shapeBytes });
}

/**
 * Sizes the certificate cache (serve --svid-cache-entries N; 0 turns it off). The byte bound scales
 * with the entry count at the default's ratio. Empties the cache.
 */
export function configureX509SvidCache(opts: { entries: number; bytes?: number }): void {
  const entries = Math.max(0, Math.floor(opts.entries));
  const bytes = opts.bytes ?? Math.ceil((DEFAULT_SVID_CACHE_BYTES * Math.max(entries, 1)) / DEFAULT_SVID_CACHE_ENTRIES);
  shapeCache = newShapeCache(entries, bytes);
  hotShapes.clear();
}

/** Empties the parsed-certificate cache (for tests). */
export function clearX509SvidCache(): void {
  shapeCache.clear();
  hotShapes.clear();
}

/** Number of cached certificate outcomes (for tests and metrics). */
export function x509SvidCacheSize(): number {
  return shapeCache.size;
}

/** Hits, misses, evictions, entries and estimated bytes of the certificate cache (for /metrics). */
export function x509SvidCacheStats(): LruStats {
  return shapeCache.stats();
}

/** The same for the memo of recently seen certificates' expanded IDs (the hot shapes above). */
export function x509SvidIdMemoStats(): LruStats {
  return hotShapes.stats();
}
