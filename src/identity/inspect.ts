// `egress-authz inspect FILE`: what an operator needs to know about a certificate (the BIG-IP's own, a
// pod's): its SPIFFE ID, and whether it passes the very X.509-SVID validation the service applies, with
// the reason when it does not. The facts are read even from a certificate that fails validation.
import { sha256Hex } from '../common/hash.js';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { parsePemBlocks, parseX509SvidReference } from './x509-svid.js';

export interface CertificateReport {
  /** the SPIFFE ID when the certificate is a valid X.509-SVID */
  spiffe_id?: string;
  valid: boolean;
  /** why it is not a valid X.509-SVID */
  reason?: string;
  subject?: string;
  issuer?: string;
  uri_sans?: string[];
  dns_sans?: string[];
  not_before?: string;
  not_after?: string;
  serial?: string;
  sha256?: string;
  /** certificates in the file (leaf first) */
  chain_length: number;
}

const SAN_OID = '2.5.29.17';

export function inspectCertificate(pemText: string, now: Date = new Date()): CertificateReport {
  const blocks = parsePemBlocks(pemText);
  if (!blocks.ok) return { valid: false, reason: blocks.reason, chain_length: 0 };
  const leaf = blocks.value[0];
  const report: CertificateReport = { valid: false, chain_length: blocks.value.length };
  if (leaf) Object.assign(report, describe(leaf));
  // The careful path: an operator's tool can afford the full object model.
  const svid = parseX509SvidReference(blocks.value, now);
  if (svid.ok) {
    report.valid = true;
    report.spiffe_id = svid.value.spiffeId.uri;
  } else {
    report.reason = svid.reason;
  }
  return report;
}

/** The plain facts of a certificate; empty when it does not even parse (the SVID reason says why). */
function describe(der: Uint8Array): Partial<CertificateReport> {
  try {
    const asn1 = asn1js.fromBER(der);
    if (asn1.offset === -1) return {};
    const cert = new pkijs.Certificate({ schema: asn1.result });
    const uris: string[] = [];
    const dns: string[] = [];
    const san = cert.extensions?.find((e) => e.extnID === SAN_OID);
    const names = (san?.parsedValue as pkijs.AltName | undefined)?.altNames ?? [];
    for (const n of names) {
      if (n.type === 6) uris.push(String(n.value));
      if (n.type === 2) dns.push(String(n.value));
    }
    return {
      subject: distinguishedName(cert.subject),
      issuer: distinguishedName(cert.issuer),
      uri_sans: uris,
      dns_sans: dns,
      not_before: cert.notBefore.value.toISOString(),
      not_after: cert.notAfter.value.toISOString(),
      serial: Buffer.from(cert.serialNumber.valueBlock.valueHexView).toString('hex'),
      sha256: sha256Hex(der),
    };
  } catch {
    return {};
  }
}

const SHORT_NAMES: Record<string, string> = {
  '2.5.4.3': 'CN',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
  '2.5.4.6': 'C',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
};

function distinguishedName(name: pkijs.RelativeDistinguishedNames): string {
  return name.typesAndValues
    .map((tv) => {
      const value = (tv.value as { valueBlock?: { value?: unknown } }).valueBlock?.value;
      return `${SHORT_NAMES[tv.type] ?? tv.type}=${typeof value === 'string' ? value : ''}`;
    })
    .join(', ');
}

/** The text `inspect` prints for people; `--json` prints the report itself. */
export function formatReport(file: string, r: CertificateReport): string {
  const lines = [`${file}: ${r.valid ? 'valid X.509-SVID' : 'NOT a valid X.509-SVID'}`];
  if (r.spiffe_id) lines.push(`  spiffe id:  ${r.spiffe_id}`);
  if (r.reason) lines.push(`  reason:     ${r.reason}`);
  if (r.subject !== undefined) lines.push(`  subject:    ${r.subject || '(empty)'}`);
  if (r.issuer !== undefined) lines.push(`  issuer:     ${r.issuer}`);
  if (r.uri_sans) lines.push(`  URI SANs:   ${r.uri_sans.join(', ') || '(none)'}`);
  if (r.dns_sans?.length) lines.push(`  DNS SANs:   ${r.dns_sans.join(', ')}`);
  if (r.not_before) lines.push(`  valid:      ${r.not_before} .. ${r.not_after}`);
  if (r.serial) lines.push(`  serial:     ${r.serial}`);
  if (r.sha256) lines.push(`  sha256:     ${r.sha256}`);
  lines.push(`  chain:      ${r.chain_length} certificate(s) in the file`);
  return lines.join('\n');
}
