// Certificates for policy case files, made when the cases run: a case describes the certificate it
// needs (SANs, CA flag, key usage, validity) and no certificate or key is ever stored with the policy.
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY = 86_400_000;
const CA_NAME = 'CN=egress-authz policy cases CA';

/** What a case file's `certificate` field may say; everything else is shaped like an Istio SVID. */
export interface CertificateSpec {
  /** URI SANs in order (the SPIFFE ID goes here) */
  uris?: string[];
  /** DNS SANs, placed before the URI SANs */
  dns?: string[];
  /** subject DN, e.g. "CN=legacy-client"; empty by default, as Istio issues SVIDs */
  subject?: string;
  /** basicConstraints cA on the leaf */
  ca?: boolean;
  /** key usage flag names (digitalSignature, keyEncipherment, keyCertSign, cRLSign, …); null omits the extension */
  key_usage?: string[] | null;
  expired?: boolean;
  not_yet_valid?: boolean;
}

const SPEC_KEYS = new Set(['uris', 'dns', 'subject', 'ca', 'key_usage', 'expired', 'not_yet_valid']);

/** Checks a parsed `certificate` field; returns a message when it is not a CertificateSpec. */
export function certificateSpecProblem(spec: unknown): string | undefined {
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) return 'certificate must be an object';
  const s = spec as Record<string, unknown>;
  const unknown = Object.keys(s).filter((k) => !SPEC_KEYS.has(k));
  if (unknown.length > 0) return `certificate has unknown field(s): ${unknown.join(', ')}`;
  for (const key of ['uris', 'dns'] as const) {
    const v = s[key];
    if (v !== undefined && !(Array.isArray(v) && v.every((x) => typeof x === 'string')))
      return `certificate.${key} must be a list of strings`;
  }
  if (s['subject'] !== undefined && typeof s['subject'] !== 'string') return 'certificate.subject must be a string';
  for (const key of ['ca', 'expired', 'not_yet_valid'] as const) {
    if (s[key] !== undefined && typeof s[key] !== 'boolean') return `certificate.${key} must be a boolean`;
  }
  const ku = s['key_usage'];
  if (ku !== undefined && ku !== null) {
    if (!Array.isArray(ku)) return 'certificate.key_usage must be a list of flag names or null';
    const bad = ku.filter((f) => typeof f !== 'string' || !(f in x509.KeyUsageFlags));
    if (bad.length > 0) return `certificate.key_usage has unknown flag(s): ${bad.join(', ')}`;
  }
  return undefined;
}

/** Issues certificates from one throw-away CA, created on first use. */
export class CaseCertificateFactory {
  private ca: Promise<{ name: string; keys: webcrypto.CryptoKeyPair }> | undefined;

  /** The PEM of a leaf certificate as the spec describes it (call certificateSpecProblem first). */
  async pem(spec: CertificateSpec): Promise<string> {
    const ca = await (this.ca ??= this.createCa());
    const keys = await generateKeys();
    const now = Date.now();
    const [notBefore, notAfter] = spec.expired
      ? [new Date(now - 2 * DAY), new Date(now - DAY)]
      : spec.not_yet_valid
        ? [new Date(now + DAY), new Date(now + 2 * DAY)]
        : [new Date(now - 60_000), new Date(now + DAY)];
    const names: x509.JsonGeneralName[] = [
      ...(spec.dns ?? []).map((value) => ({ type: 'dns' as const, value })),
      ...(spec.uris ?? []).map((value) => ({ type: 'url' as const, value })),
    ];
    const subject = spec.subject ?? '';
    const extensions: x509.Extension[] = [new x509.BasicConstraintsExtension(spec.ca ?? false, undefined, true)];
    const usage = spec.key_usage === undefined ? ['digitalSignature', 'keyEncipherment'] : spec.key_usage;
    if (usage !== null) {
      const flags = usage.reduce((acc, f) => acc | (x509.KeyUsageFlags[f as keyof typeof x509.KeyUsageFlags] ?? 0), 0);
      extensions.push(new x509.KeyUsagesExtension(flags, true));
    }
    // SAN is critical when the subject is empty (RFC 5280 4.2.1.6).
    if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names, subject === ''));
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject,
      issuer: ca.name,
      notBefore,
      notAfter,
      signingAlgorithm: ALG,
      publicKey: keys.publicKey,
      signingKey: ca.keys.privateKey,
      extensions,
    });
    return cert.toString('pem');
  }

  private async createCa(): Promise<{ name: string; keys: webcrypto.CryptoKeyPair }> {
    const keys = await generateKeys();
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serial(),
      name: CA_NAME,
      notBefore: new Date(now - DAY),
      notAfter: new Date(now + 7 * DAY),
      signingAlgorithm: ALG,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      ],
    });
    return { name: cert.subject, keys };
  }
}

async function generateKeys(): Promise<webcrypto.CryptoKeyPair> {
  return await webcrypto.subtle.generateKey(ALG, false, ['sign', 'verify']);
}

function serial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(12));
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x01;
  return Buffer.from(bytes).toString('hex');
}
