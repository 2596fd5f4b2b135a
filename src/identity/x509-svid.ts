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
import { fail, ok, type Result } from '../common/result.js';
import type { SpiffeId } from './spiffe-id.js';
import { fastChainShape, UNSURE } from './svid-der.js';
import { referenceChainShape } from './x509-svid-reference.js';

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
  return shape.ok ? checkValidityPeriod(shape.value, now) : shape;
}

/** parsePemBlocks + parseX509Svid, memoised on the exact PEM text (see the cache below). */
export function parseX509SvidPem(pem: string, now: Date): Result<X509Svid> {
  let shape = shapeCache.get(pem);
  if (shape === undefined) {
    const blocks = parsePemBlocks(pem);
    shape = blocks.ok ? validateChainShape(blocks.value) : blocks;
    shapeCache.set(pem, shape);
  }
  // The validity period depends on `now`, so it is never cached.
  return shape.ok ? checkValidityPeriod(shape.value, now) : shape;
}

let referenceFallbacks = 0;

/** Everything about the chain that does not depend on the time of the decision. */
function validateChainShape(chainDer: readonly Uint8Array[]): Result<X509Svid> {
  const problem = chainCountProblem(chainDer);
  if (problem) return problem;
  // The fast reader decides every chain it can read exactly as the reference would; the rest (damaged
  // or unusual encodings, which a TLS terminator rarely lets through) take the careful path.
  const fast = fastChainShape(chainDer);
  if (fast !== UNSURE) return fast;
  referenceFallbacks++;
  return referenceChainShape(chainDer);
}

function chainCountProblem(chainDer: readonly Uint8Array[]): Result<never> | undefined {
  if (chainDer.length === 0) return fail('no certificates found');
  if (chainDer.length > MAX_CHAIN_CERTS) return fail(`certificate chain has more than ${MAX_CHAIN_CERTS} certificates`);
  return undefined;
}

/** How many chains the fast reader handed to the reference validator (for tests and metrics). */
export function x509SvidReferenceFallbacks(): number {
  return referenceFallbacks;
}

function checkValidityPeriod(svid: X509Svid, now: Date): Result<X509Svid> {
  const t = now.getTime();
  if (Number.isNaN(t)) return fail('decision time is invalid');
  if (t < svid.notBefore.getTime()) return fail('certificate is not yet valid');
  if (t > svid.notAfter.getTime()) return fail('certificate has expired');
  // The cached value is shared by every caller; Dates are mutable even when frozen, so hand out copies.
  return ok({
    spiffeId: svid.spiffeId,
    notBefore: new Date(svid.notBefore),
    notAfter: new Date(svid.notAfter),
    serialNumber: svid.serialNumber,
    sha256: svid.sha256,
  });
}

// ---------------------------------------------------------------------------------------------- cache

// The Check path sees the same few workload certificates thousands of times a second, and parsing one
// costs far more than a Map lookup. So the time-independent outcome (the SVID or the structural reason
// it was refused) is kept per exact PEM text in a small LRU. The validity period is re-checked against
// `now` on every call, so an expired certificate is denied even when cached. Keys are capped in size
// so the cache stays bounded in memory (CACHE_ENTRIES × CACHE_MAX_KEY_CHARS) whatever callers send.
const CACHE_ENTRIES = 1024;
const CACHE_MAX_KEY_CHARS = 16 * 1024;

class ShapeCache {
  private readonly entries = new Map<string, Result<X509Svid>>();

  get(pem: string): Result<X509Svid> | undefined {
    const hit = this.entries.get(pem);
    if (hit !== undefined) {
      // Map keeps insertion order: re-inserting marks the entry most recently used.
      this.entries.delete(pem);
      this.entries.set(pem, hit);
    }
    return hit;
  }

  set(pem: string, value: Result<X509Svid>): void {
    if (pem.length > CACHE_MAX_KEY_CHARS) return;
    if (this.entries.size >= CACHE_ENTRIES) {
      const oldest = this.entries.keys().next();
      if (!oldest.done) this.entries.delete(oldest.value);
    }
    this.entries.set(pem, value);
  }

  clear(): void {
    this.entries.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}

const shapeCache = new ShapeCache();

/** Empties the parsed-certificate cache (for tests). */
export function clearX509SvidCache(): void {
  shapeCache.clear();
}

/** Number of cached certificate outcomes (for tests and metrics). */
export function x509SvidCacheSize(): number {
  return shapeCache.size;
}
