// The fast X.509-SVID reader of the Check path: a strict DER walk over exactly the fields the X.509-SVID
// rules need (validity, subject emptiness, SAN URIs, basicConstraints, keyUsage, extKeyUsage, critical
// flags, serial), with no ASN.1 object model. It runs the same rules, in the same order and with the same
// reasons, as the reference validator (x509-svid-reference.ts, pkijs), and it answers only when it read
// the certificate in full and in the one encoding both readers agree on: minimal-length DER, the
// certificate shape CAs issue. Anything else (BER leniencies, unusual string types, a malformed extension
// value, a field it does not model) is UNSURE, and the caller asks the reference. That keeps the verdict
// on damaged or exotic input exactly the careful one, which test/identity/x509-svid-differential.test.ts
// checks over generated and mutated certificates.
import { sha256Hex } from '../common/hash.js';
import { fail, ok, type Result } from '../common/result.js';
import { parseSpiffeId, type SpiffeId } from './spiffe-id.js';
import type { X509Svid } from './x509-svid.js';

/** "Not decided here": the reference validator must look at this chain. */
export const UNSURE = Symbol('unsure');
export type FastOutcome = Result<X509Svid> | typeof UNSURE;

// The outcome of reading one element: a reason to refuse, or UNSURE, is carried by throwing this.
class Unsure extends Error {}
const unsure = new Unsure();

// DER tags (single-byte identifiers only; a multi-byte tag is UNSURE).
const T_BOOLEAN = 0x01;
const T_INTEGER = 0x02;
const T_BIT_STRING = 0x03;
const T_OCTET_STRING = 0x04;
const T_NULL = 0x05;
const T_OID = 0x06;
const T_UTF8 = 0x0c;
const T_PRINTABLE = 0x13;
const T_IA5 = 0x16;
const T_UTC_TIME = 0x17;
const T_GENERALIZED_TIME = 0x18;
const T_SEQUENCE = 0x30;
const T_SET = 0x31;
const T_VERSION = 0xa0; // [0] EXPLICIT
const T_EXTENSIONS = 0xa3; // [3] EXPLICIT
const SAN_RFC822 = 0x81;
const SAN_DNS = 0x82;
const SAN_URI = 0x86;
const SAN_IP = 0x87;

// OIDs as their DER content bytes (OID encodings are checked minimal, so bytes compare like dotted text).
const OID_KEY_USAGE = '551d0f';
const OID_SAN = '551d11';
const OID_BASIC_CONSTRAINTS = '551d13';
const OID_EXT_KEY_USAGE = '551d25';
const OID_SERVER_AUTH = '2b06010505070301';
const OID_CLIENT_AUTH = '2b06010505070302';

const KU_DIGITAL_SIGNATURE = 0;
const KU_KEY_CERT_SIGN = 5;
const KU_CRL_SIGN = 6;

interface Tlv {
  tag: number;
  /** content start and end */
  start: number;
  end: number;
}

/** One TLV at `pos`, ending at or before `limit`; strict DER: definite, minimal length. */
function tlv(d: Uint8Array, pos: number, limit: number): Tlv {
  if (pos + 2 > limit) throw unsure;
  const tag = d[pos]!;
  if ((tag & 0x1f) === 0x1f) throw unsure;
  let len = d[pos + 1]!;
  let start = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    // 0x80 is BER's indefinite length; more than 3 length bytes is more than any certificate needs.
    if (n === 0 || n > 3 || start + n > limit) throw unsure;
    if (d[start] === 0) throw unsure;
    len = 0;
    for (let i = 0; i < n; i++) len = (len << 8) | d[start + i]!;
    if (len < 0x80) throw unsure;
    start += n;
  }
  const end = start + len;
  if (end > limit) throw unsure;
  return { tag, start, end };
}

function expect(d: Uint8Array, pos: number, limit: number, tag: number): Tlv {
  const t = tlv(d, pos, limit);
  if (t.tag !== tag) throw unsure;
  return t;
}

function hex(d: Uint8Array, t: Tlv): string {
  return Buffer.from(d.buffer, d.byteOffset + t.start, t.end - t.start).toString('hex');
}

/** An OBJECT IDENTIFIER with a minimal encoding and subidentifiers a double holds exactly. */
function oid(d: Uint8Array, pos: number, limit: number): Tlv {
  const t = expect(d, pos, limit, T_OID);
  if (t.end === t.start || d[t.end - 1]! & 0x80) throw unsure;
  let run = 0;
  for (let i = t.start; i < t.end; i++) {
    const b = d[i]!;
    if (run === 0 && b === 0x80) throw unsure;
    run = b & 0x80 ? run + 1 : 0;
    if (run > 6) throw unsure;
  }
  return t;
}

function algorithmIdentifier(d: Uint8Array, pos: number, limit: number): Tlv {
  const seq = expect(d, pos, limit, T_SEQUENCE);
  const id = oid(d, seq.start, seq.end);
  if (id.end === seq.end) return seq;
  const param = tlv(d, id.end, seq.end);
  if (param.end !== seq.end) throw unsure;
  if (param.tag === T_NULL) {
    if (param.end !== param.start) throw unsure;
  } else if (param.tag === T_OID) {
    oid(d, id.end, seq.end);
  } else throw unsure;
  return seq;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A Name; returns how many attributes it has (an empty subject is the Istio and SPIRE shape). */
function name(d: Uint8Array, pos: number, limit: number): { tlv: Tlv; attributes: number } {
  const seq = expect(d, pos, limit, T_SEQUENCE);
  let attributes = 0;
  for (let p = seq.start; p < seq.end;) {
    const set = expect(d, p, seq.end, T_SET);
    if (set.start === set.end) throw unsure;
    for (let q = set.start; q < set.end;) {
      const atv = expect(d, q, set.end, T_SEQUENCE);
      const type = oid(d, atv.start, atv.end);
      const value = tlv(d, type.end, atv.end);
      if (value.end !== atv.end || value.start === value.end) throw unsure;
      if (value.tag === T_UTF8) {
        try {
          utf8.decode(d.subarray(value.start, value.end));
        } catch {
          throw unsure;
        }
      } else if (value.tag !== T_PRINTABLE && value.tag !== T_IA5) throw unsure;
      attributes++;
      q = atv.end;
    }
    p = set.end;
  }
  return { tlv: seq, attributes };
}

const DIGITS = /^[0-9]+$/;

/** UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ, fields in range; else UNSURE. */
function time(d: Uint8Array, pos: number, limit: number): { tlv: Tlv; ms: number } {
  const t = tlv(d, pos, limit);
  const text = Buffer.from(d.buffer, d.byteOffset + t.start, t.end - t.start).toString('latin1');
  let year: number;
  let rest: string;
  if (t.tag === T_UTC_TIME && text.length === 13) {
    const yy = Number(text.slice(0, 2));
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
    rest = text.slice(2, 12);
  } else if (t.tag === T_GENERALIZED_TIME && text.length === 15) {
    year = Number(text.slice(0, 4));
    rest = text.slice(4, 14);
    if (year < 1950) throw unsure;
  } else throw unsure;
  if (text[text.length - 1] !== 'Z' || !DIGITS.test(text.slice(0, -1))) throw unsure;
  const month = Number(rest.slice(0, 2));
  const day = Number(rest.slice(2, 4));
  const hour = Number(rest.slice(4, 6));
  const minute = Number(rest.slice(6, 8));
  const second = Number(rest.slice(8, 10));
  const ms = Date.UTC(year, month - 1, day, hour, minute, second);
  // Out-of-range fields would roll over (13th month, 31 February): let the reference judge those.
  const check = new Date(ms);
  if (check.getUTCMonth() !== month - 1 || check.getUTCDate() !== day || hour > 23 || minute > 59 || second > 59)
    throw unsure;
  return { tlv: t, ms };
}

function bitString(d: Uint8Array, pos: number, limit: number): Tlv {
  const t = expect(d, pos, limit, T_BIT_STRING);
  // An empty BIT STRING, or unused bits beyond 7, is where BER readers differ.
  if (t.end - t.start < 2 || d[t.start]! > 7) throw unsure;
  return t;
}

interface Ext {
  critical: boolean;
  value: Tlv;
}

interface Decoded {
  der: Uint8Array;
  serial: Tlv;
  notBefore: number;
  notAfter: number;
  subjectAttributes: number;
  extensions: Map<string, Ext>;
}

/** The certificate read in full; UNSURE (thrown) on anything outside the shape modelled here. */
function decode(d: Uint8Array): Decoded {
  const cert = expect(d, 0, d.length, T_SEQUENCE);
  if (cert.end !== d.length) throw unsure;
  const tbs = expect(d, cert.start, cert.end, T_SEQUENCE);
  const sigAlg = algorithmIdentifier(d, tbs.end, cert.end);
  const sig = bitString(d, sigAlg.end, cert.end);
  if (sig.end !== cert.end) throw unsure;

  const version = expect(d, tbs.start, tbs.end, T_VERSION);
  const v = expect(d, version.start, version.end, T_INTEGER);
  if (v.end !== version.end || v.end - v.start !== 1 || d[v.start] !== 2) throw unsure;
  const serial = expect(d, version.end, tbs.end, T_INTEGER);
  if (serial.end === serial.start) throw unsure;
  const signature = algorithmIdentifier(d, serial.end, tbs.end);
  const issuer = name(d, signature.end, tbs.end);
  const validity = expect(d, issuer.tlv.end, tbs.end, T_SEQUENCE);
  const notBefore = time(d, validity.start, validity.end);
  const notAfter = time(d, notBefore.tlv.end, validity.end);
  if (notAfter.tlv.end !== validity.end) throw unsure;
  const subject = name(d, validity.end, tbs.end);
  const spki = expect(d, subject.tlv.end, tbs.end, T_SEQUENCE);
  const keyAlg = algorithmIdentifier(d, spki.start, spki.end);
  const key = bitString(d, keyAlg.end, spki.end);
  if (key.end !== spki.end) throw unsure;

  // No issuer/subject unique IDs; the extensions, and nothing after them.
  const extsWrap = expect(d, spki.end, tbs.end, T_EXTENSIONS);
  if (extsWrap.end !== tbs.end) throw unsure;
  const exts = expect(d, extsWrap.start, extsWrap.end, T_SEQUENCE);
  if (exts.end !== extsWrap.end || exts.start === exts.end) throw unsure;
  const extensions = new Map<string, Ext>();
  for (let p = exts.start; p < exts.end;) {
    const ext = expect(d, p, exts.end, T_SEQUENCE);
    const id = oid(d, ext.start, ext.end);
    let next = tlv(d, id.end, ext.end);
    let critical = false;
    if (next.tag === T_BOOLEAN) {
      critical = boolean(d, next);
      next = tlv(d, next.end, ext.end);
    }
    if (next.tag !== T_OCTET_STRING || next.end !== ext.end) throw unsure;
    const key = hex(d, id);
    if (extensions.has(key)) throw unsure;
    extensions.set(key, { critical, value: next });
    p = ext.end;
  }
  return {
    der: d,
    serial,
    notBefore: notBefore.ms,
    notAfter: notAfter.ms,
    subjectAttributes: subject.attributes,
    extensions,
  };
}

function boolean(d: Uint8Array, t: Tlv): boolean {
  if (t.end - t.start !== 1) throw unsure;
  const b = d[t.start];
  if (b === 0xff) return true;
  if (b === 0x00) return false;
  throw unsure;
}

/** The one element an extension's OCTET STRING holds, spanning it exactly. */
function extValue(d: Uint8Array, ext: Ext, tag: number): Tlv {
  const t = expect(d, ext.value.start, ext.value.end, tag);
  if (t.end !== ext.value.end) throw unsure;
  return t;
}

function leafSpiffeId(c: Decoded): Result<SpiffeId> {
  const d = c.der;
  const san = c.extensions.get(OID_SAN);
  if (san === undefined) return fail('leaf certificate has no URI SAN');
  const names = extValue(d, san, T_SEQUENCE);
  if (names.start === names.end) throw unsure;
  let uri: Tlv | undefined;
  let uris = 0;
  for (let p = names.start; p < names.end;) {
    const n = tlv(d, p, names.end);
    if (n.tag !== SAN_URI && n.tag !== SAN_DNS && n.tag !== SAN_IP && n.tag !== SAN_RFC822) throw unsure;
    if (n.start === n.end) throw unsure;
    if (n.tag === SAN_URI) {
      uris++;
      uri = n;
    }
    p = n.end;
  }
  if (uri === undefined) return fail('leaf certificate has no URI SAN');
  if (uris > 1) return fail('leaf certificate has more than one URI SAN');
  if (c.subjectAttributes === 0 && !san.critical) {
    return fail('leaf certificate with an empty subject must mark the SAN extension critical');
  }
  // One character per byte, as the reference's IA5String reading does.
  const id = parseSpiffeId(Buffer.from(d.buffer, d.byteOffset + uri.start, uri.end - uri.start).toString('latin1'));
  if (!id.ok) return fail(`leaf certificate URI SAN: ${id.reason}`);
  if (id.value.path === '') return fail('leaf certificate SPIFFE ID must have a non-root path');
  return id;
}

/** basicConstraints cA; absent means not a CA. */
function isCa(c: Decoded): boolean {
  const ext = c.extensions.get(OID_BASIC_CONSTRAINTS);
  if (ext === undefined) return false;
  const d = c.der;
  const seq = extValue(d, ext, T_SEQUENCE);
  if (seq.start === seq.end) return false;
  let t = tlv(d, seq.start, seq.end);
  let ca = false;
  if (t.tag === T_BOOLEAN) {
    ca = boolean(d, t);
    if (t.end === seq.end) return ca;
    t = tlv(d, t.end, seq.end);
  }
  // pathLenConstraint
  if (t.tag !== T_INTEGER || t.end !== seq.end || t.start === t.end || t.end - t.start > 4) throw unsure;
  return ca;
}

/** keyUsage bits, or the reason it is absent or not critical. */
function keyUsage(c: Decoded): Result<(bit: number) => boolean> {
  const ext = c.extensions.get(OID_KEY_USAGE);
  if (ext === undefined) return fail('certificate has no key usage extension');
  if (!ext.critical) return fail('certificate key usage extension must be critical');
  const bits = extValue(c.der, ext, T_BIT_STRING);
  if (bits.end - bits.start < 2 || c.der[bits.start]! > 7) throw unsure;
  const d = c.der;
  const first = bits.start + 1;
  return ok((bit: number) => first + (bit >> 3) < bits.end && ((d[first + (bit >> 3)]! >> (7 - (bit & 7))) & 1) === 1);
}

/** extKeyUsage, when present, must allow both TLS roles (X.509-SVID §4.4). */
function extKeyUsageAllowsTls(c: Decoded): boolean {
  const ext = c.extensions.get(OID_EXT_KEY_USAGE);
  if (ext === undefined) return true;
  const d = c.der;
  const seq = extValue(d, ext, T_SEQUENCE);
  if (seq.start === seq.end) throw unsure;
  let server = false;
  let client = false;
  for (let p = seq.start; p < seq.end;) {
    const id = oid(d, p, seq.end);
    const h = hex(d, id);
    if (h === OID_SERVER_AUTH) server = true;
    else if (h === OID_CLIENT_AUTH) client = true;
    p = id.end;
  }
  return server && client;
}

function validateLeaf(c: Decoded): Result<SpiffeId> {
  const id = leafSpiffeId(c);
  if (!id.ok) return id;
  if (isCa(c)) return fail('leaf certificate must not have CA flag set to true');
  const ku = keyUsage(c);
  if (!ku.ok) return fail(`leaf ${ku.reason}`);
  if (!ku.value(KU_DIGITAL_SIGNATURE)) return fail("leaf certificate must have 'digitalSignature' set as key usage");
  if (ku.value(KU_KEY_CERT_SIGN)) return fail("leaf certificate must not have 'keyCertSign' set as key usage");
  if (ku.value(KU_CRL_SIGN)) return fail("leaf certificate must not have 'cRLSign' set as key usage");
  if (!extKeyUsageAllowsTls(c))
    return fail("leaf certificate extended key usage must include 'serverAuth' and 'clientAuth'");
  return id;
}

function validateSigning(c: Decoded): Result<true> {
  if (!isCa(c)) return fail('signing certificate must have CA flag set to true');
  const ku = keyUsage(c);
  if (!ku.ok) return fail(`signing ${ku.reason}`);
  if (!ku.value(KU_KEY_CERT_SIGN)) return fail("signing certificate must have 'keyCertSign' set as key usage");
  return ok(true);
}

/**
 * The time-independent X.509-SVID checks of a chain (leaf first, 1..MAX_CHAIN_CERTS certificates, the
 * caller checks the count), or UNSURE when the reference must decide.
 */
export function fastChainShape(chainDer: readonly Uint8Array[]): FastOutcome {
  try {
    const leaf = decode(chainDer[0]!);
    const id = validateLeaf(leaf);
    if (!id.ok) return id;
    for (let i = 1; i < chainDer.length; i++) {
      const signing = validateSigning(decode(chainDer[i]!));
      if (!signing.ok) return signing;
    }
    return ok({
      spiffeId: Object.freeze(id.value),
      notBefore: new Date(leaf.notBefore),
      notAfter: new Date(leaf.notAfter),
      serialNumber: hex(leaf.der, leaf.serial),
      sha256: sha256Hex(leaf.der),
    });
  } catch (e) {
    if (e instanceof Unsure) return UNSURE;
    // Nothing else is expected to throw here; whatever does is the reference's to judge.
    return UNSURE;
  }
}
