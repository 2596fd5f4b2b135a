// SPIFFE ID parsing, strictly per the SPIFFE ID standard (spiffe/spiffe standards/SPIFFE-ID.md §2):
//   spiffe://<trust domain>[/<segment>]*
// Only the canonical lowercase form is accepted: the scheme exactly "spiffe://" and the trust domain in
// [a-z0-9._-]. The standard calls scheme and trust domain case-insensitive, but an authorization
// decision must compare identities byte for byte, so a non-canonical spelling is rejected rather than
// folded (go-spiffe v2 behaves the same way).
//
// Reasons are fixed ASCII strings and never echo the input: they end up in logs and response headers.
import { fail, ok, type Result } from '../common/result.js';

declare const parsed: unique symbol;

/**
 * A SPIFFE ID that passed parseSpiffeId: immutable, and obtainable only from the parser (the brand
 * cannot be written outside this module), so a function that takes a SpiffeId never sees an
 * unchecked string dressed up as one — go-spiffe's opaque `spiffeid.ID`.
 */
export interface SpiffeId {
  /** The whole ID, e.g. spiffe://cluster.local/ns/bookinfo/sa/default */
  readonly uri: string;
  /** e.g. cluster.local */
  readonly trustDomain: string;
  /** "" for the trust domain's root ID, otherwise "/seg/seg…" */
  readonly path: string;
  readonly [parsed]: true;
}

const SCHEME = 'spiffe://';
/** §2.3: implementations must support IDs up to 2048 bytes; longer ones are refused here. */
export const MAX_SPIFFE_ID_BYTES = 2048;
/** §2.3: RFC 3986 caps the host, hence the trust domain name, at 255 bytes. */
export const MAX_TRUST_DOMAIN_BYTES = 255;

const REASON_PREFIX = 'invalid SPIFFE ID: ';

function invalid(detail: string): Result<never> {
  return fail(REASON_PREFIX + detail, 'spiffe_id');
}

function isTrustDomainChar(c: number): boolean {
  return (
    (c >= 0x61 && c <= 0x7a) || // a-z
    (c >= 0x30 && c <= 0x39) || // 0-9
    c === 0x2e ||
    c === 0x2d ||
    c === 0x5f // . - _
  );
}

function isPathSegmentChar(c: number): boolean {
  return isTrustDomainChar(c) || (c >= 0x41 && c <= 0x5a); // plus A-Z
}

/** The URI delimiters the standard forbids get a reason of their own; other characters the charset one. */
function delimiterReason(c: number, where: 'trust domain' | 'path'): string | undefined {
  switch (c) {
    case 0x3f: // ?
      return 'query is not allowed';
    case 0x23: // #
      return 'fragment is not allowed';
    case 0x25: // %
      return `${where} cannot contain percent-encoded characters`;
  }
  if (where === 'trust domain') {
    if (c === 0x3a) return 'trust domain cannot contain a port'; // :
    if (c === 0x40) return 'trust domain cannot contain userinfo'; // @
  }
  return undefined;
}

export function parseSpiffeId(text: string): Result<SpiffeId> {
  if (typeof text !== 'string' || text === '') return invalid('cannot be empty');
  // Valid IDs are pure ASCII, so the UTF-16 length is the byte length for every string that could pass.
  if (text.length > MAX_SPIFFE_ID_BYTES) return invalid(`longer than ${MAX_SPIFFE_ID_BYTES} bytes`);
  if (!text.startsWith(SCHEME)) return invalid('scheme is missing or invalid');

  let end = SCHEME.length;
  for (; end < text.length; end++) {
    const c = text.charCodeAt(end);
    if (c === 0x2f) break; // '/'
    if (!isTrustDomainChar(c)) {
      return invalid(
        delimiterReason(c, 'trust domain') ??
          'trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores',
      );
    }
  }
  const trustDomain = text.slice(SCHEME.length, end);
  if (trustDomain === '') return invalid('trust domain is missing');
  if (trustDomain.length > MAX_TRUST_DOMAIN_BYTES)
    return invalid(`trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes`);

  const path = text.slice(end);
  const pathProblem = checkPath(path);
  if (pathProblem !== undefined) return invalid(pathProblem);
  return ok(Object.freeze({ uri: text, trustDomain, path }) as SpiffeId);
}

/** "" or "/seg(/seg)*" with non-empty, non-dot segments of [A-Za-z0-9._-]. Returns the defect, if any. */
function checkPath(path: string): string | undefined {
  if (path === '') return undefined;
  let segmentStart = 1; // path[0] is '/'
  for (let i = 1; i <= path.length; i++) {
    const c = i < path.length ? path.charCodeAt(i) : 0x2f;
    if (c === 0x2f) {
      const segment = path.slice(segmentStart, i);
      if (segment === '')
        return i === path.length ? 'path cannot have a trailing slash' : 'path cannot contain empty segments';
      if (segment === '.' || segment === '..') return 'path cannot contain dot segments';
      segmentStart = i + 1;
      continue;
    }
    if (!isPathSegmentChar(c)) {
      return (
        delimiterReason(c, 'path') ??
        'path segment characters are limited to letters, numbers, dots, dashes, and underscores'
      );
    }
  }
  return undefined;
}
