// Identity evidence from a request header the operator trusts (`serve --trusted-identity-header`):
// Envoy's x-forwarded-client-cert by its grammar (xfcc.ts), any other header as the SPIFFE ID itself.
import type { PeerEvidence } from './identity.js';
import { XFCC_HEADER, xfccEvidence } from './xfcc.js';

export type HeaderEvidence = Pick<PeerEvidence, 'headerSpiffeId' | 'headerCertificatePem' | 'headerError'>;

/** `name` lowercased; `trustedProxies` binds an XFCC element to the proxies that may add it (By=). */
export function trustedHeaderEvidence(
  name: string,
  value: unknown,
  trustedProxies?: readonly string[],
): HeaderEvidence {
  if (typeof value !== 'string')
    return { headerError: { ok: false, reason: 'header evidence is not a string', code: 'malformed' } };
  if (name !== XFCC_HEADER) return { headerSpiffeId: value.trim() };
  const xfcc = xfccEvidence(value, { trustedProxies });
  if (!xfcc.ok) return { headerError: xfcc };
  const evidence: HeaderEvidence = {};
  if (xfcc.value.uri !== undefined) evidence.headerSpiffeId = xfcc.value.uri;
  if (xfcc.value.certificatePem !== undefined) evidence.headerCertificatePem = xfcc.value.certificatePem;
  return evidence;
}
