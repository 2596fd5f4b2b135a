// Envoy's x-forwarded-client-cert (XFCC), parsed by its grammar: elements separated by `,`, each a list
// of `key=value` pairs separated by `;`, keys case-insensitive; a value holding `,` `;` `=` is written
// in double quotes, with `\"` for a quote (and `\\` for a backslash) inside. Separators inside quotes are
// part of the value: Envoy quotes the Subject, and an RFC 2253 subject such as
// `CN=evil,O=x\,URI=spiffe://…/ns/bookinfo/…` must never become a URI pair.
//
// What the grammar alone cannot fix: Envoy (1.40 included) writes DNS and URI SANs unquoted, so a
// certificate whose DNS SAN is `a,URI=spiffe://…/ns/bookinfo/…` makes Envoy emit a second element that
// looks exactly like one a proxy added. So only a header holding exactly one element is accepted, which
// is what `forward_client_cert_details: SANITIZE_SET` produces (the proxy replaces whatever the client
// sent); a `;URI=…` or `;Cert=…` smuggled the same way is a second URI or a duplicate key, also refused.
//
// Reasons are fixed ASCII strings; no header text is echoed into them.
import { fail, ok, type Result } from '../common/result.js';

export const XFCC_HEADER = 'x-forwarded-client-cert';

/** Room for a URL-encoded leaf and chain (each at most MAX_PEM_CHARS decoded) and the other fields. */
export const MAX_XFCC_CHARS = 192 * 1024;
const MAX_ELEMENTS = 32;
const MAX_PAIRS = 64;

export interface XfccPair {
  /** lowercased */
  key: string;
  value: string;
}

export type XfccElement = XfccPair[];

const KEY = /^[A-Za-z][A-Za-z0-9_-]*$/;

/** Splits a header into its elements and pairs, unquoting values; anything off-grammar is refused. */
export function parseXfcc(header: string): Result<XfccElement[]> {
  if (typeof header !== 'string') return fail('x-forwarded-client-cert is not a string', 'malformed');
  if (header.length > MAX_XFCC_CHARS)
    return fail(`x-forwarded-client-cert is longer than ${MAX_XFCC_CHARS} characters`, 'malformed');
  const elements: XfccElement[] = [];
  let element: XfccElement = [];
  let i = 0;
  const n = header.length;
  const skipSpace = () => {
    while (i < n && (header[i] === ' ' || header[i] === '\t')) i++;
  };
  for (;;) {
    skipSpace();
    const keyStart = i;
    while (i < n && header[i] !== '=' && header[i] !== ',' && header[i] !== ';' && header[i] !== '"') i++;
    const key = header.slice(keyStart, i).trim();
    if (header[i] !== '=' || !KEY.test(key))
      return fail('x-forwarded-client-cert is malformed: expected key=value', 'malformed');
    i++; // '='
    let value = '';
    if (header[i] === '"') {
      i++;
      let closed = false;
      while (i < n) {
        const c = header[i]!;
        if (c === '"') {
          closed = true;
          i++;
          break;
        }
        if (c === '\\' && i + 1 < n) {
          const next = header[i + 1]!;
          // \" and \\ are the escapes; any other backslash (RFC 2253's `\,` in a Subject) stays as written.
          value += next === '"' || next === '\\' ? next : c + next;
          i += 2;
          continue;
        }
        value += c;
        i++;
      }
      if (!closed) return fail('x-forwarded-client-cert is malformed: unterminated quoted value', 'malformed');
      skipSpace();
    } else {
      const start = i;
      while (i < n && header[i] !== ',' && header[i] !== ';') {
        if (header[i] === '"')
          return fail('x-forwarded-client-cert is malformed: quote inside an unquoted value', 'malformed');
        i++;
      }
      value = header.slice(start, i).replace(/[ \t]+$/, '');
    }
    element.push({ key: key.toLowerCase(), value });
    if (element.length > MAX_PAIRS)
      return fail(`x-forwarded-client-cert has an element of more than ${MAX_PAIRS} pairs`, 'malformed');
    if (i >= n) break;
    const sep = header[i];
    i++;
    if (sep === ',') {
      elements.push(element);
      if (elements.length >= MAX_ELEMENTS)
        return fail(`x-forwarded-client-cert has more than ${MAX_ELEMENTS} elements`, 'malformed');
      element = [];
    } else if (sep !== ';') {
      return fail('x-forwarded-client-cert is malformed: text after a quoted value', 'malformed');
    }
  }
  elements.push(element);
  return ok(elements);
}

/** What the trusted proxy's element says about the client: the URI SAN it saw and, when sent, the cert. */
export interface XfccEvidence {
  /** the element's URI SAN ("" or absent when the certificate has none) */
  uri?: string;
  /** URL-encoded PEM from `Cert=` (or `Chain=` when there is no `Cert=`); validated as an X.509-SVID */
  certificatePem?: string;
  /** the proxy's own ID from `By=` */
  by?: string;
}

export interface XfccOptions {
  /** when set, the element must carry `By=` naming one of these (the proxy's own SPIFFE IDs) */
  trustedProxies?: readonly string[];
}

const SINGLE_KEYS = new Set(['by', 'hash', 'cert', 'chain', 'subject']);

/**
 * The client evidence in an XFCC header set by a trusted proxy. The proxy's element is the last one,
 * and with SANITIZE_SET the only one: more elements are refused (see the header comment).
 */
export function xfccEvidence(header: string, opts: XfccOptions = {}): Result<XfccEvidence> {
  const parsed = parseXfcc(header);
  if (!parsed.ok) return parsed;
  if (parsed.value.length !== 1) {
    return fail(
      'x-forwarded-client-cert has more than one element; the proxy in front must replace it (SANITIZE_SET)',
      'malformed',
    );
  }
  const element = parsed.value[parsed.value.length - 1]!;
  const single = new Map<string, string>();
  const uris: string[] = [];
  for (const { key, value } of element) {
    if (key === 'uri') {
      if (value !== '') uris.push(value);
      continue;
    }
    if (!SINGLE_KEYS.has(key)) continue;
    if (single.has(key)) return fail(`x-forwarded-client-cert element has more than one ${key} pair`, 'malformed');
    single.set(key, value);
  }
  // A valid X.509-SVID has exactly one URI SAN, and Envoy writes every URI SAN it sees.
  if (uris.length > 1) return fail('x-forwarded-client-cert element has more than one URI', 'svid');
  const by = single.get('by');
  if (opts.trustedProxies && opts.trustedProxies.length > 0) {
    if (by === undefined || by === '')
      return fail('x-forwarded-client-cert element has no By from a trusted proxy', 'mismatch');
    if (!opts.trustedProxies.includes(by))
      return fail('x-forwarded-client-cert element was added by an untrusted proxy', 'mismatch');
  }
  const certificatePem = nonEmpty(single.get('cert')) ?? nonEmpty(single.get('chain'));
  if (uris.length === 0 && certificatePem === undefined)
    return fail('x-forwarded-client-cert element has neither a URI nor a Cert', 'missing');
  const evidence: XfccEvidence = {};
  if (uris[0] !== undefined) evidence.uri = uris[0];
  if (certificatePem !== undefined) evidence.certificatePem = certificatePem;
  if (by !== undefined) evidence.by = by;
  return ok(evidence);
}

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v === '' ? undefined : v;
}
