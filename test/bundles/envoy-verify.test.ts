// The Envoy path with trust bundles: by default Envoy's own TLS verification is trusted (as before);
// with --verify-peer-chain the peer certificate Envoy forwards must chain to the bundle of its trust
// domain too. Envoy's ext_authz sends only the peer's leaf in source.certificate, so only a leaf issued
// directly by a bundle root can verify there.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChainVerifier } from '../../src/identity/chain-verify.js';
import { parseX509Bundle, X509BundleSet, type X509Bundle } from '../../src/identity/x509-bundle.js';
import { check, checkClient, checkRequest, startTestService, type TestService } from '../support/service.js';
import { createCa, workloadSvid, type CertAuthority } from '../support/pki.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';

let localRoot: CertAuthority;
let localInter: CertAuthority;
let partnerRoot: CertAuthority;
let strict: TestService;
let trusting: TestService;

function bundle(td: string, ca: CertAuthority): X509Bundle {
  const r = parseX509Bundle(td, ca.certPem);
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

beforeAll(async () => {
  localRoot = await createCa('cluster.local root');
  localInter = await createCa('cluster.local intermediate', { issuer: localRoot });
  partnerRoot = await createCa('partner.example root');
  const set = new X509BundleSet([bundle('cluster.local', localRoot), bundle('partner.example', partnerRoot)]);
  strict = await startTestService({ chainVerifier: new ChainVerifier(set), verifyEnvoyChain: true });
  trusting = await startTestService({ chainVerifier: new ChainVerifier(set) });
});
afterAll(async () => {
  await strict?.close(100);
  await trusting?.close(100);
});

async function envoy(service: TestService, req: ReturnType<typeof checkRequest>) {
  const client = checkClient(service.grpcPort);
  try {
    const res = await check(client, req);
    return { code: res.status?.code ?? 0, body: String(res.deniedResponse?.body ?? ''), headers: res };
  } finally {
    client.close();
  }
}

describe('--verify-peer-chain on', () => {
  it('allows a leaf issued by a bundle root', async () => {
    const leaf = await workloadSvid(localRoot, BOOKINFO);
    expect((await envoy(strict, checkRequest({ principal: BOOKINFO, certificatePem: leaf.certPem }))).code).toBe(0);
  });

  it('denies with the reason: leaf of an intermediate (Envoy sends no chain), another domain’s CA, no certificate', async () => {
    const viaInter = await workloadSvid(localInter, BOOKINFO);
    const forged = await workloadSvid(partnerRoot, BOOKINFO);
    const cases: [ReturnType<typeof checkRequest>, string][] = [
      [checkRequest({ principal: BOOKINFO, certificatePem: viaInter.certPem }), 'intermediate missing?'],
      [
        checkRequest({ principal: BOOKINFO, certificatePem: forged.certPem }),
        'signed by a CA of trust domain partner.example',
      ],
      [checkRequest({ principal: BOOKINFO }), 'no peer certificate was sent'],
    ];
    for (const [req, why] of cases) {
      const r = await envoy(strict, req);
      expect(r.code, why).toBe(7);
      expect(r.body, why).toContain(why);
    }
  });
});

describe('--verify-peer-chain off (default) with bundles configured', () => {
  it('trusts Envoy’s verification on the gRPC path, but verifies the sideband', async () => {
    const forged = await workloadSvid(partnerRoot, BOOKINFO);
    expect((await envoy(trusting, checkRequest({ principal: BOOKINFO, certificatePem: forged.certPem }))).code).toBe(0);
    const res = await fetch(`http://127.0.0.1:${trusting.httpPort}/v1/sideband`, {
      method: 'POST',
      body: forged.certPem,
    });
    expect(res.status).toBe(403);
    expect(res.headers.get('x-egress-reason')).toContain('signed by a CA of trust domain partner.example');
  });
});
