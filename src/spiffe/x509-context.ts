// What one Workload API message means, as plain data: the workload's X.509-SVIDs with their private
// keys, and the trust bundles by trust domain. A message is taken whole or not at all: if anything in it
// is unusable (a chain that is not an SVID, a key that does not match, a malformed bundle) the update is
// refused with a reason and the previous context stays in use.
import { createPrivateKey, type KeyObject, type X509Certificate } from 'node:crypto';
import { fail, ok, type Result } from '../common/result.js';
import { parseX509Svid } from '../identity/x509-svid.js';
import { checkTrustDomainName, parseConcatenatedDer, type X509BundleSet } from './x509-bundle.js';

/** The wire shape of X509SVID / X509SVIDResponse / X509BundlesResponse (proto/spiffe-workload-api.proto). */
export interface X509SvidMessage {
  spiffeId?: string;
  x509Svid?: Uint8Array;
  x509SvidKey?: Uint8Array;
  bundle?: Uint8Array;
  hint?: string;
}
export interface X509SvidResponseMessage {
  svids?: X509SvidMessage[];
  federatedBundles?: Record<string, Uint8Array>;
}
export interface X509BundlesResponseMessage {
  bundles?: Record<string, Uint8Array>;
}

export interface WorkloadSvid {
  spiffeId: string;
  trustDomain: string;
  hint: string;
  /** leaf first, then intermediates */
  chain: readonly X509Certificate[];
  key: KeyObject;
  /** PEM of the chain and of the key (PKCS#8), ready for a TLS context */
  certPem: string;
  keyPem: string;
  notAfter: Date;
}

export interface X509Context {
  /** the first one is the default identity (SPIFFE Workload API §5.3) */
  svids: readonly WorkloadSvid[];
  /** own trust domain (from each SVID's bundle) and federated ones */
  bundles: X509BundleSet;
}

export function parseX509SvidResponse(msg: X509SvidResponseMessage, now = new Date()): Result<X509Context> {
  const svidMessages = msg.svids ?? [];
  if (svidMessages.length === 0) return fail('Workload API update has no X.509-SVID');
  const svids: WorkloadSvid[] = [];
  const bundles = new Map<string, readonly X509Certificate[]>();
  for (const [i, m] of svidMessages.entries()) {
    const svid = parseWorkloadSvid(m, now);
    if (!svid.ok) return fail(`Workload API update, SVID ${i}: ${svid.reason}`);
    svids.push(svid.value);
    const bundle = parseConcatenatedDer(m.bundle ?? new Uint8Array(), `the bundle of ${svid.value.trustDomain}`);
    if (!bundle.ok) return fail(`Workload API update, SVID ${i}: ${bundle.reason}`);
    bundles.set(svid.value.trustDomain, bundle.value);
  }
  const federated = parseBundleMap(msg.federatedBundles ?? {});
  if (!federated.ok) return federated;
  // A federated bundle never replaces the one that came with an SVID of that trust domain.
  for (const [td, certs] of federated.value) if (!bundles.has(td)) bundles.set(td, certs);
  return ok({ svids, bundles });
}

export function parseX509BundlesResponse(msg: X509BundlesResponseMessage): Result<X509BundleSet> {
  const set = parseBundleMap(msg.bundles ?? {});
  if (!set.ok) return set;
  if (set.value.size === 0) return fail('Workload API update has no X.509 bundle');
  return set;
}

function parseBundleMap(map: Record<string, Uint8Array>): Result<Map<string, readonly X509Certificate[]>> {
  const out = new Map<string, readonly X509Certificate[]>();
  for (const [name, der] of Object.entries(map)) {
    const td = checkTrustDomainName(name);
    if (!td.ok) return td;
    const certs = parseConcatenatedDer(der, `the bundle of ${td.value}`);
    if (!certs.ok) return fail(`Workload API update: ${certs.reason}`);
    out.set(td.value, certs.value);
  }
  return ok(out);
}

function parseWorkloadSvid(m: X509SvidMessage, now: Date): Result<WorkloadSvid> {
  const chain = parseConcatenatedDer(m.x509Svid ?? new Uint8Array(), 'the certificate chain');
  if (!chain.ok) return chain;
  const shape = parseX509Svid(
    chain.value.map((c) => new Uint8Array(c.raw)),
    now,
  );
  if (!shape.ok) return shape;
  if (shape.value.spiffeId.uri !== m.spiffeId) return fail("the certificate's SPIFFE ID is not the one announced");
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: Buffer.from(m.x509SvidKey ?? new Uint8Array()), format: 'der', type: 'pkcs8' });
  } catch {
    return fail('the private key is not PKCS#8 DER');
  }
  const leaf = chain.value[0]!;
  if (!leaf.checkPrivateKey(key)) return fail('the private key does not match the certificate');
  return ok({
    spiffeId: shape.value.spiffeId.uri,
    trustDomain: shape.value.spiffeId.trustDomain,
    hint: m.hint ?? '',
    chain: chain.value,
    key,
    certPem: chain.value.map((c) => c.toString()).join(''),
    keyPem: key.export({ format: 'pem', type: 'pkcs8' }) as string,
    notAfter: shape.value.notAfter,
  });
}
