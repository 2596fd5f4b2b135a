// What a listener serves TLS with, whoever provides it: certificate files (transport/tls.ts) or the
// SPIFFE Workload API (spiffe/x509-source.ts). Both sit above this, so the type lives here.

export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  ca?: Buffer;
}

/**
 * Where the listeners' TLS material comes from (files, or the SPIFFE Workload API): the current version
 * and every new one. A subscriber configures new handshakes only; established connections keep theirs.
 */
export interface TlsMaterialSource {
  readonly current: TlsMaterial;
  subscribe(listener: (m: TlsMaterial) => void): () => void;
}

export function sameMaterial(a: TlsMaterial, b: TlsMaterial): boolean {
  const caSame = a.ca === undefined || b.ca === undefined ? a.ca === b.ca : a.ca.equals(b.ca);
  return caSame && a.cert.equals(b.cert) && a.key.equals(b.key);
}
