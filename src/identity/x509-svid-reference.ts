// The reference X.509-SVID validator: pkijs and asn1js build the whole certificate's object model, and
// the X.509-SVID rules (spiffe/spiffe standards/X509-SVID.md §2-§5) are read off it. It is the careful
// path: the fast DER reader of the Check path (svid-der.ts) answers only where it provably agrees with
// this one, hands everything else here, and a differential fuzz test holds the two together.
import { sha256Hex } from '../common/hash.js';
import * as asn1js from 'asn1js';
import { AltName, BasicConstraints, Certificate, ExtKeyUsage, type Extension } from 'pkijs';
import { fail, ok, type Result } from '../common/result.js';
import { parseSpiffeId, type SpiffeId } from './spiffe-id.js';
import type { X509Svid } from './x509-svid.js';

const OID = {
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

const GENERAL_NAME_URI = 6;

// KeyUsage BIT STRING (RFC 5280 §4.2.1.3): bit 0 is the most significant bit of the first byte.
const KU_DIGITAL_SIGNATURE = 0;
const KU_KEY_CERT_SIGN = 5;
const KU_CRL_SIGN = 6;

/** Everything about the chain that does not depend on the time of the decision. */
export function referenceChainShape(chainDer: readonly Uint8Array[]): Result<X509Svid> {
  // pkijs and asn1js are not written to never throw on hostile input; whatever slips through is a deny.
  try {
    return validateChainShapeUnguarded(chainDer);
  } catch {
    return fail('certificate could not be parsed');
  }
}

function validateChainShapeUnguarded(chainDer: readonly Uint8Array[]): Result<X509Svid> {
  const [leafDer, ...signingDer] = chainDer as [Uint8Array, ...Uint8Array[]];

  const leaf = decodeCertificate(leafDer);
  if (!leaf.ok) return fail(`leaf ${leaf.reason}`);
  const leafResult = validateLeaf(leaf.value);
  if (!leafResult.ok) return leafResult;

  for (const der of signingDer) {
    const cert = decodeCertificate(der);
    if (!cert.ok) return fail(`signing ${cert.reason}`);
    const signing = validateSigningCertificate(cert.value);
    if (!signing.ok) return signing;
  }

  const leafCert = leaf.value.cert;
  return ok({
    spiffeId: Object.freeze(leafResult.value),
    notBefore: leafCert.notBefore.value,
    notAfter: leafCert.notAfter.value,
    serialNumber: Buffer.from(leafCert.serialNumber.valueBlock.valueHexView).toString('hex'),
    sha256: sha256Hex(leafDer),
  });
}

interface DecodedCertificate {
  cert: Certificate;
  /** extensions by OID; duplicates were refused while decoding (RFC 5280 §4.2) */
  extensions: Map<string, Extension>;
}

function decodeCertificate(der: Uint8Array): Result<DecodedCertificate> {
  let cert: Certificate;
  try {
    const asn1 = asn1js.fromBER(der);
    if (asn1.offset === -1 || asn1.offset !== der.byteLength) return fail('certificate is not valid DER');
    cert = new Certificate({ schema: asn1.result });
  } catch {
    return fail('certificate is not valid DER');
  }
  if (!(cert.notBefore?.value instanceof Date) || !(cert.notAfter?.value instanceof Date)) {
    return fail('certificate has an unreadable validity period');
  }
  const extensions = new Map<string, Extension>();
  for (const ext of cert.extensions ?? []) {
    if (extensions.has(ext.extnID)) return fail('certificate has a duplicate extension');
    extensions.set(ext.extnID, ext);
  }
  return ok({ cert, extensions });
}

function validateLeaf({ cert, extensions }: DecodedCertificate): Result<SpiffeId> {
  const id = leafSpiffeId(cert, extensions);
  if (!id.ok) return id;

  const basic = basicConstraints(extensions);
  if (!basic.ok) return fail(`leaf ${basic.reason}`);
  if (basic.value) return fail('leaf certificate must not have CA flag set to true');

  const ku = keyUsage(extensions);
  if (!ku.ok) return fail(`leaf ${ku.reason}`);
  if (!ku.value.has(KU_DIGITAL_SIGNATURE))
    return fail("leaf certificate must have 'digitalSignature' set as key usage");
  if (ku.value.has(KU_KEY_CERT_SIGN)) return fail("leaf certificate must not have 'keyCertSign' set as key usage");
  if (ku.value.has(KU_CRL_SIGN)) return fail("leaf certificate must not have 'cRLSign' set as key usage");

  // §4.4: the extension is optional, but when present it must allow both TLS roles.
  const eku = extensions.get(OID.extKeyUsage);
  if (eku !== undefined) {
    const parsed = parsedExtension(eku, ExtKeyUsage);
    if (parsed === undefined) return fail('leaf certificate has a malformed extended key usage extension');
    if (!parsed.keyPurposes.includes(OID.serverAuth) || !parsed.keyPurposes.includes(OID.clientAuth)) {
      return fail("leaf certificate extended key usage must include 'serverAuth' and 'clientAuth'");
    }
  }
  return id;
}

function leafSpiffeId(cert: Certificate, extensions: Map<string, Extension>): Result<SpiffeId> {
  const sanExt = extensions.get(OID.subjectAltName);
  if (sanExt === undefined) return fail('leaf certificate has no URI SAN');
  const san = parsedExtension(sanExt, AltName);
  if (san === undefined) return fail('leaf certificate has a malformed subject alternative name extension');
  // §2: exactly one URI SAN; other name types (DNS, IP, …) may appear anywhere around it.
  const uris = san.altNames.filter((name) => name.type === GENERAL_NAME_URI);
  if (uris.length === 0) return fail('leaf certificate has no URI SAN');
  if (uris.length > 1) return fail('leaf certificate has more than one URI SAN');
  // §3.1 and RFC 5280 §4.1.2.6: with an empty subject the SAN is the only name, so it must be critical.
  if (cert.subject.typesAndValues.length === 0 && !sanExt.critical) {
    return fail('leaf certificate with an empty subject must mark the SAN extension critical');
  }
  const value: unknown = uris[0]?.value;
  if (typeof value !== 'string') return fail('leaf certificate URI SAN is unreadable');
  const id = parseSpiffeId(value);
  if (!id.ok) return fail(`leaf certificate URI SAN: ${id.reason}`);
  // §3.1 / §5.2: a leaf names a workload, never the trust domain itself.
  if (id.value.path === '') return fail('leaf certificate SPIFFE ID must have a non-root path');
  return id;
}

function validateSigningCertificate({ extensions }: DecodedCertificate): Result<true> {
  const basic = basicConstraints(extensions);
  if (!basic.ok) return fail(`signing ${basic.reason}`);
  if (!basic.value) return fail('signing certificate must have CA flag set to true');
  const ku = keyUsage(extensions);
  if (!ku.ok) return fail(`signing ${ku.reason}`);
  if (!ku.value.has(KU_KEY_CERT_SIGN)) return fail("signing certificate must have 'keyCertSign' set as key usage");
  return ok(true);
}

export interface SigningCertificateFacts {
  /** basicConstraints pathLenConstraint, when set */
  pathLen?: number;
  notBefore: Date;
  notAfter: Date;
}

/** Extensions a verifier understands; any other one marked critical makes the certificate unusable (RFC 5280 §4.2). */
const UNDERSTOOD_EXTENSIONS = new Set<string>([
  OID.keyUsage,
  OID.subjectAltName,
  OID.basicConstraints,
  OID.extKeyUsage,
  '2.5.29.14', // subjectKeyIdentifier
  '2.5.29.35', // authorityKeyIdentifier
  '2.5.29.32', // certificatePolicies
]);
const NAME_CONSTRAINTS = '2.5.29.30';

/**
 * What a chain verifier must know about an intermediate or root besides its signature: it is a CA with
 * keyCertSign (as for every signing certificate of an SVID chain), its path length limit, its validity
 * period, and that it has no critical extension we would ignore. Name constraints are refused rather than
 * ignored: a verifier that skips them would accept what the CA was forbidden to issue.
 */
export function signingCertificateFacts(der: Uint8Array): Result<SigningCertificateFacts> {
  try {
    const decoded = decodeCertificate(der);
    if (!decoded.ok) return decoded;
    const checked = validateSigningCertificate(decoded.value);
    if (!checked.ok) return checked;
    for (const [oid, ext] of decoded.value.extensions) {
      if (oid === NAME_CONSTRAINTS) return fail('signing certificate has name constraints, which are not supported');
      if (ext.critical && !UNDERSTOOD_EXTENSIONS.has(oid))
        return fail('signing certificate has an unsupported critical extension');
    }
    const basic = parsedExtension(decoded.value.extensions.get(OID.basicConstraints)!, BasicConstraints);
    const pathLen = basic?.pathLenConstraint;
    const { cert } = decoded.value;
    const facts: SigningCertificateFacts = { notBefore: cert.notBefore.value, notAfter: cert.notAfter.value };
    if (pathLen !== undefined) {
      const n = typeof pathLen === 'number' ? pathLen : pathLen.valueBlock.valueDec;
      if (!Number.isSafeInteger(n) || n < 0) return fail('signing certificate has a malformed path length constraint');
      facts.pathLen = n;
    }
    return ok(facts);
  } catch {
    return fail('signing certificate could not be parsed');
  }
}

/** The basicConstraints cA flag; an absent extension means "not a CA". */
function basicConstraints(extensions: Map<string, Extension>): Result<boolean> {
  const ext = extensions.get(OID.basicConstraints);
  if (ext === undefined) return ok(false);
  const parsed = parsedExtension(ext, BasicConstraints);
  if (parsed === undefined) return fail('certificate has a malformed basic constraints extension');
  return ok(parsed.cA === true);
}

/** §4.3: key usage must be present and critical on every SVID. Returns the set bit numbers. */
function keyUsage(extensions: Map<string, Extension>): Result<Set<number>> {
  const ext = extensions.get(OID.keyUsage);
  if (ext === undefined) return fail('certificate has no key usage extension');
  if (!ext.critical) return fail('certificate key usage extension must be critical');
  const raw = ext.extnValue.valueBlock.valueHexView;
  const asn1 = asn1js.fromBER(raw);
  if (asn1.offset !== raw.byteLength || !(asn1.result instanceof asn1js.BitString)) {
    return fail('certificate has a malformed key usage extension');
  }
  const bits = new Set<number>();
  const bytes = asn1.result.valueBlock.valueHexView;
  for (let i = 0; i < bytes.length * 8; i++) {
    if (((bytes[i >> 3] ?? 0) >> (7 - (i & 7))) & 1) bits.add(i);
  }
  return ok(bits);
}

/** pkijs decodes known extensions lazily and flags, rather than throws on, a malformed value. */
function parsedExtension<T>(ext: Extension, type: abstract new (...args: never[]) => T): T | undefined {
  let value: unknown;
  try {
    value = ext.parsedValue;
  } catch {
    return undefined;
  }
  if (!(value instanceof type)) return undefined;
  if ((value as { parsingError?: unknown }).parsingError !== undefined) return undefined;
  return value;
}
