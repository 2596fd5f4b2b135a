// The real service in-process, and a test PKI with the certificates the BIG-IP cases need.
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCa, issue, workloadSvid, type IssuedCert } from '../support/pki.js';
import { startTestService, type TestService } from '../support/service.js';

/** The service as `serve` runs it; the sideband route is part of every service. */
export function startSidebandService(): Promise<TestService> {
  return startTestService();
}

export interface BigipCerts {
  dir: string;
  /** PEM file path and the MD5 fingerprint X509::hash would give, per case */
  files: Record<string, { path: string; md5: string; pem: string }>;
  cleanup(): void;
}

export const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/default';
export const APIGW = 'spiffe://cluster.local/ns/sm-apigw-a/sa/default';

export async function makeBigipCerts(): Promise<BigipCerts> {
  const ca = await createCa();
  const certs: Record<string, IssuedCert> = {
    bookinfo: await workloadSvid(ca, BOOKINFO),
    apigw: await workloadSvid(ca, APIGW),
    // The seed's findstr parsing reads the first SAN; a DNS SAN first must not matter here.
    dnsFirst: await issue({ issuer: ca, dns: ['details.bookinfo.svc.cluster.local'], uris: [BOOKINFO] }),
    twoUris: await issue({ issuer: ca, uris: [BOOKINFO, 'spiffe://cluster.local/ns/bookinfo/sa/reviews'] }),
    // Passes a "starts_with spiffe://cluster.local/ns/bookinfo" prefix test without the trailing slash.
    evilPrefix: await workloadSvid(ca, 'spiffe://cluster.local/ns/bookinfo-evil/sa/default'),
  };
  const dir = mkdtempSync(join(tmpdir(), 'egress-authz-bigip-'));
  const files: BigipCerts['files'] = {};
  for (const [name, cert] of Object.entries(certs)) {
    const path = join(dir, `${name}.pem`);
    writeFileSync(path, cert.certPem);
    files[name] = { path, md5: md5Fingerprint(cert.der), pem: cert.certPem };
  }
  return { dir, files, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** X509::hash's format: MD5 of the DER, upper-case hex pairs joined by colons. */
export function md5Fingerprint(der: Uint8Array): string {
  return createHash('md5').update(der).digest('hex').toUpperCase().match(/../g)!.join(':');
}
