// What one Workload API message means, as plain data: the workload's X.509-SVIDs with their private
// keys, and the trust bundles by trust domain. A message is taken whole or not at all: if anything in it
// is unusable (a chain that is not an SVID, a key that does not match, a malformed bundle) the update is
// refused with a reason and the previous context stays in use.
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { fail, ok, type Result } from '../common/result.js';
import { MAX_CHAIN_CERTS, parseX509Svid } from '../identity/x509-svid.js';
import { parseDerBundle, parseTrustDomain, splitDer, type X509Bundle } from '../identity/x509-bundle.js';

/** Trust domain name → its bundle; replaced as a whole on every update. */
export type X509BundleSet = ReadonlyMap<string, X509Bundle>;

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
  const bundles = new Map<string, X509Bundle>();
  for (const [i, m] of svidMessages.entries()) {
    const svid = parseWorkloadSvid(m, now);
    if (!svid.ok) return fail(`Workload API update, SVID ${i}: ${svid.reason}`, svid.code);
    svids.push(svid.value);
    const td = svid.value.trustDomain;
    const bundle = parseDerBundle(td, m.bundle ?? new Uint8Array());
    if (!bundle.ok) return fail(`Workload API update, SVID ${i}: the bundle of ${td}: ${bundle.reason}`, bundle.code);
    bundles.set(td, bundle.value);
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

// Keys are trust domains, written bare or (as SPIRE does) as the trust domain's SPIFFE ID.
function parseBundleMap(map: Record<string, Uint8Array>): Result<Map<string, X509Bundle>> {
  const out = new Map<string, X509Bundle>();
  for (const [name, der] of Object.entries(map)) {
    const td = parseTrustDomain(name);
    if (!td.ok) return fail(`Workload API update: ${td.reason}`, td.code);
    const bundle = parseDerBundle(td.value, der);
    if (!bundle.ok) return fail(`Workload API update: the bundle of ${td.value}: ${bundle.reason}`, bundle.code);
    out.set(td.value, bundle.value);
  }
  return ok(out);
}

function parseChain(der: Uint8Array): Result<X509Certificate[]> {
  const ders = splitDer(der);
  if (!ders.ok) return fail(`the certificate chain: ${ders.reason}`, 'svid');
  if (ders.value.length === 0) return fail('the certificate chain is empty', 'svid');
  if (ders.value.length > MAX_CHAIN_CERTS)
    return fail(`the certificate chain has more than ${MAX_CHAIN_CERTS} certificates`, 'svid');
  try {
    return ok(ders.value.map((d) => new X509Certificate(d)));
  } catch {
    return fail('the certificate chain holds a certificate that does not parse', 'svid');
  }
}

function parseWorkloadSvid(m: X509SvidMessage, now: Date): Result<WorkloadSvid> {
  const chain = parseChain(m.x509Svid ?? new Uint8Array());
  if (!chain.ok) return chain;
  const shape = parseX509Svid(
    chain.value.map((c) => new Uint8Array(c.raw)),
    now,
  );
  if (!shape.ok) return shape;
  if (shape.value.spiffeId.uri !== m.spiffeId)
    return fail("the certificate's SPIFFE ID is not the one announced", 'mismatch');
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: Buffer.from(m.x509SvidKey ?? new Uint8Array()), format: 'der', type: 'pkcs8' });
  } catch {
    return fail('the private key is not PKCS#8 DER', 'svid');
  }
  const leaf = chain.value[0]!;
  if (!leaf.checkPrivateKey(key)) return fail('the private key does not match the certificate', 'mismatch');
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
