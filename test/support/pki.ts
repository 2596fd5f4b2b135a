// Test PKI made at test time: an organisation CA and workload certificates shaped the way Istio or
// SPIRE issue them, plus deliberately broken variants. No key is ever written to the repository.
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';

// Node's WebCrypto under the names @peculiar/x509's types use (this project compiles without the DOM lib).
type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY = 86_400_000;

export const KeyUsage = x509.KeyUsageFlags;

export interface IssuedCert {
  certPem: string;
  keyPem: string;
  der: Uint8Array;
}

export interface CertAuthority extends IssuedCert {
  name: string;
  keys: CryptoKeyPair;
}

export interface CertOptions {
  /** URI SANs, in order (SPIFFE IDs go here). */
  uris?: string[];
  /** DNS SANs, placed before the URI SANs unless dnsAfterUris is set. */
  dns?: string[];
  dnsAfterUris?: boolean;
  subject?: string;
  /** basicConstraints cA=TRUE on the leaf (an X.509-SVID leaf must not be a CA). */
  ca?: boolean;
  /** key usage flags; default digitalSignature|keyEncipherment. null omits the extension. */
  keyUsage?: number | null;
  /** whether the key usage extension is marked critical (the X.509-SVID standard requires it); default true. */
  keyUsageCritical?: boolean;
  /** extended key usages as OIDs; default serverAuth + clientAuth, as Istio issues them. null omits the extension. */
  extKeyUsage?: string[] | null;
  sanCritical?: boolean;
  notBefore?: Date;
  notAfter?: Date;
  /** issuer; self-signed when omitted */
  issuer?: CertAuthority;
}

export const EKU = { serverAuth: '1.3.6.1.5.5.7.3.1', clientAuth: '1.3.6.1.5.5.7.3.2' } as const;

async function keyPem(key: CryptoKey): Promise<string> {
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(pkcs8, 'PRIVATE KEY');
}

export interface CaOptions {
  notBefore?: Date;
  notAfter?: Date;
  /** signed by this CA (an intermediate); self-signed (a root) when omitted */
  issuer?: CertAuthority;
  /** basicConstraints pathLenConstraint */
  pathLength?: number;
  /** URI SANs, e.g. the trust domain's SPIFFE ID as SPIRE puts it on its CAs */
  uris?: string[];
  /** key usage flags; default keyCertSign|cRLSign */
  keyUsage?: number;
}

export async function createCa(name = 'Example Org Intermediate CA', opts: CaOptions = {}): Promise<CertAuthority> {
  const keys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const now = Date.now();
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(true, opts.pathLength, true),
    new x509.KeyUsagesExtension(opts.keyUsage ?? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
  ];
  if (opts.uris?.length)
    extensions.push(
      new x509.SubjectAlternativeNameExtension(
        opts.uris.map((value) => ({ type: 'url' as const, value })),
        false,
      ),
    );
  const params = {
    serialNumber: randomSerial(),
    notBefore: opts.notBefore ?? new Date(now - DAY),
    notAfter: opts.notAfter ?? new Date(now + 30 * DAY),
    signingAlgorithm: alg,
    extensions,
  };
  const cert = opts.issuer
    ? await x509.X509CertificateGenerator.create({
        ...params,
        subject: `CN=${name}, O=Example Org`,
        issuer: opts.issuer.name,
        publicKey: keys.publicKey,
        signingKey: opts.issuer.keys.privateKey,
      })
    : await x509.X509CertificateGenerator.createSelfSigned({ ...params, name: `CN=${name}, O=Example Org`, keys });
  return {
    name: cert.subject,
    keys,
    certPem: cert.toString('pem'),
    keyPem: await keyPem(keys.privateKey),
    der: new Uint8Array(cert.rawData),
  };
}

export async function issue(opts: CertOptions = {}): Promise<IssuedCert> {
  const keys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const now = Date.now();
  const names: x509.JsonGeneralName[] = [];
  const dns = (opts.dns ?? []).map((value) => ({ type: 'dns' as const, value }));
  const uris = (opts.uris ?? []).map((value) => ({ type: 'url' as const, value }));
  if (opts.dnsAfterUris) names.push(...uris, ...dns);
  else names.push(...dns, ...uris);
  const extensions: x509.Extension[] = [new x509.BasicConstraintsExtension(opts.ca ?? false, undefined, true)];
  const ku =
    opts.keyUsage === undefined
      ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment
      : opts.keyUsage;
  if (ku !== null) extensions.push(new x509.KeyUsagesExtension(ku, opts.keyUsageCritical ?? true));
  const eku = opts.extKeyUsage === undefined ? [EKU.serverAuth, EKU.clientAuth] : opts.extKeyUsage;
  if (eku !== null) extensions.push(new x509.ExtendedKeyUsageExtension(eku, false));
  if (names.length > 0)
    extensions.push(new x509.SubjectAlternativeNameExtension(names, opts.sanCritical ?? (opts.subject ?? '') === ''));
  const subject = opts.subject ?? '';
  const common = {
    serialNumber: randomSerial(),
    notBefore: opts.notBefore ?? new Date(now - 60_000),
    notAfter: opts.notAfter ?? new Date(now + DAY),
    signingAlgorithm: alg,
    extensions,
  };
  const cert = opts.issuer
    ? await x509.X509CertificateGenerator.create({
        ...common,
        subject,
        issuer: opts.issuer.name,
        publicKey: keys.publicKey,
        signingKey: opts.issuer.keys.privateKey,
      })
    : await x509.X509CertificateGenerator.createSelfSigned({ ...common, name: subject, keys });
  return { certPem: cert.toString('pem'), keyPem: await keyPem(keys.privateKey), der: new Uint8Array(cert.rawData) };
}

/** A workload SVID as Istio issues it: empty subject, one URI SAN, signed by the given CA. */
export function workloadSvid(
  ca: CertAuthority,
  spiffeId: string,
  extra: Omit<CertOptions, 'issuer' | 'uris'> = {},
): Promise<IssuedCert> {
  return issue({ issuer: ca, uris: [spiffeId], ...extra });
}

/** Writes cert/key PEMs into dir as <name>.crt / <name>.key (0600) and returns the paths. */
export function writeCert(dir: string, name: string, cert: IssuedCert): { cert: string; key: string } {
  mkdirSync(dir, { recursive: true });
  const certPath = join(dir, `${name}.crt`);
  const keyPath = join(dir, `${name}.key`);
  writeFileSync(certPath, cert.certPem);
  writeFileSync(keyPath, cert.keyPem, { mode: 0o600 });
  return { cert: certPath, key: keyPath };
}

function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(12));
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x01;
  return Buffer.from(bytes).toString('hex');
}

/** A SPIFFE bundle document (JWKS, `use: x509-svid`, one x5c each) for the given authorities. */
export async function spiffeBundleJson(
  authorities: CertAuthority[],
  meta: { refreshHint?: number; sequence?: number; extraKeys?: object[] } = {},
): Promise<string> {
  const keys: object[] = [];
  for (const ca of authorities) {
    const jwk = await webcrypto.subtle.exportKey('jwk', ca.keys.publicKey);
    keys.push({
      kty: jwk.kty,
      crv: jwk.crv,
      x: jwk.x,
      y: jwk.y,
      use: 'x509-svid',
      x5c: [Buffer.from(ca.der).toString('base64')],
    });
  }
  keys.push(...(meta.extraKeys ?? []));
  return JSON.stringify({
    keys,
    ...(meta.refreshHint !== undefined ? { spiffe_refresh_hint: meta.refreshHint } : {}),
    ...(meta.sequence !== undefined ? { spiffe_sequence: meta.sequence } : {}),
  });
}
