// Trust bundles as the Workload API carries them: per trust domain, CA certificates DER encoded and
// concatenated. A set is replaced as a whole on every update, so a reader never sees half of one
// bundle and half of another.
import { X509Certificate } from 'node:crypto';
import { fail, ok, type Result } from '../common/result.js';
import { parseSpiffeId } from '../identity/spiffe-id.js';

/** The CA certificates (X.509 authorities) of every trust domain the workload trusts, by name. */
export type X509BundleSet = ReadonlyMap<string, readonly X509Certificate[]>;

/** At most this many certificates in one bundle or one chain: more is refused, not parsed. */
export const MAX_BUNDLE_CERTS = 64;

/**
 * Splits certificates that are DER encoded and concatenated (how the Workload API carries chains and
 * bundles) at their outer SEQUENCE boundaries, then parses each with node:crypto.
 */
export function parseConcatenatedDer(der: Uint8Array, what: string): Result<X509Certificate[]> {
  const buf = Buffer.from(der.buffer, der.byteOffset, der.byteLength);
  if (buf.length === 0) return fail(`${what} is empty`);
  const certs: X509Certificate[] = [];
  let pos = 0;
  while (pos < buf.length) {
    if (certs.length === MAX_BUNDLE_CERTS) return fail(`${what} has more than ${MAX_BUNDLE_CERTS} certificates`);
    const length = derElementLength(buf, pos);
    if (length === undefined) return fail(`${what} is not a sequence of DER certificates`);
    try {
      certs.push(new X509Certificate(buf.subarray(pos, pos + length)));
    } catch {
      return fail(`${what} holds a certificate that does not parse`);
    }
    pos += length;
  }
  return ok(certs);
}

/** The whole length (header + content) of the DER SEQUENCE at `pos`, or undefined if it is not one. */
function derElementLength(buf: Buffer, pos: number): number | undefined {
  if (buf.length - pos < 2 || buf[pos] !== 0x30) return undefined;
  const first = buf[pos + 1]!;
  let header = 2;
  let content = first;
  if (first & 0x80) {
    const n = first & 0x7f;
    // Certificates are far below 2^32 bytes; indefinite length (n = 0) is not DER.
    if (n === 0 || n > 4 || buf.length - pos < 2 + n) return undefined;
    content = 0;
    for (let i = 0; i < n; i++) content = content * 256 + buf[pos + 2 + i]!;
    header += n;
  }
  const total = header + content;
  return pos + total <= buf.length ? total : undefined;
}

/** A trust domain name as the Workload API sends it: bare ("cluster.local"), valid per the SPIFFE ID standard. */
export function checkTrustDomainName(name: string): Result<string> {
  const id = parseSpiffeId(`spiffe://${name}`);
  if (!id.ok || id.value.path !== '') return fail('invalid trust domain name in a bundle');
  return ok(id.value.trustDomain);
}

export function certificatesPem(certs: readonly X509Certificate[]): string {
  return certs.map((c) => c.toString()).join('');
}
