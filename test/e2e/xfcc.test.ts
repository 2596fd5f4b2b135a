// Finding 1 of issue 11 through real Envoy: egress-authz trusts x-forwarded-client-cert from a front
// Envoy with SANITIZE_SET. A workload whose verified SVID names sm-apigw-a but whose Subject or DNS SAN
// spells `URI=<bookinfo>` must not be allowed; neither may a certificate that is no X.509-SVID when
// the front sends Cert=. The genuine bookinfo workload is allowed, in both forms.
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, issue, workloadSvid, writeCert, KeyUsage } from '../support/pki.js';
import { curl } from './support/curl.js';
import { envoyBinary, repoRoot } from './support/envoy.js';
import { freePort, httpOk, start, startEgressAuthz, waitUntil, type RunningProcess } from './support/processes.js';
import { xfccEnvoyConfig } from './support/xfcc-envoy-config.js';

const CLI = join(repoRoot, 'dist/cli.js');
const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const APIGW = 'spiffe://cluster.local/ns/sm-apigw-a/sa/default';
const GATEWAY = 'spiffe://cluster.local/ns/istio-system/sa/front-gateway';
const HOST = 'front-gateway';

let dir = '';
const procs: RunningProcess[] = [];
let authz: RunningProcess;
let caFile = '';
const ports = { admin: 0, uriOnly: 0, withCert: 0, inner: 0, grpc: 0, http: 0 };
const clients: Record<string, { cert: string; key: string }> = {};

beforeAll(async () => {
  const envoyBin = envoyBinary();
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
  dir = mkdtempSync(join(tmpdir(), 'egress-xfcc-'));
  const ca = await createCa('Example Org Mesh CA');
  caFile = join(dir, 'ca.crt');
  writeFileSync(caFile, ca.certPem);
  // The front's own SVID: Envoy writes its URI SAN as By=.
  const front = writeCert(dir, 'front', await issue({ issuer: ca, dns: [HOST], uris: [GATEWAY] }));
  clients.bookinfo = writeCert(dir, 'bookinfo', await workloadSvid(ca, BOOKINFO));
  // The issue's certificates: verified SVID of sm-apigw-a, Subject / DNS SAN spelling bookinfo's URI.
  // Envoy prints the Subject in RFC 2253 order (last RDN first): `CN=evil,O=x\,URI=…` as in the issue.
  clients.evilSubject = writeCert(
    dir,
    'evil-subject',
    await issue({ issuer: ca, subject: `O=x\\,URI=${BOOKINFO}, CN=evil`, uris: [APIGW] }),
  );
  clients.evilSubjectSemicolon = writeCert(
    dir,
    'evil-subject-semicolon',
    await issue({ issuer: ca, subject: `CN=evil\\;URI=${BOOKINFO}, O=x`, uris: [APIGW] }),
  );
  clients.evilDns = writeCert(
    dir,
    'evil-dns',
    await issue({ issuer: ca, dns: [`a,URI=${BOOKINFO}`], uris: [APIGW], dnsAfterUris: true }),
  );
  clients.evilDnsSemicolon = writeCert(
    dir,
    'evil-dns-semicolon',
    await issue({ issuer: ca, dns: [`a;URI=${BOOKINFO}`], uris: [APIGW], dnsAfterUris: true }),
  );
  // Not X.509-SVIDs, but chain to the CA: header mode used to run none of the SVID rules.
  clients.twoUris = writeCert(dir, 'two-uris', await issue({ issuer: ca, uris: [BOOKINFO, APIGW] }));
  clients.isCa = writeCert(dir, 'is-ca', await workloadSvid(ca, BOOKINFO, { ca: true }));
  clients.certSign = writeCert(
    dir,
    'cert-sign',
    await workloadSvid(ca, BOOKINFO, { keyUsage: KeyUsage.digitalSignature | KeyUsage.keyCertSign }),
  );

  for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
  // The element must be the front's own (By=, its URI SAN).
  const trust = ['--trusted-identity-header', 'x-forwarded-client-cert', '--trusted-proxy-id', GATEWAY];
  authz = startEgressAuthz(repoRoot, ports.grpc, ports.http, trust);
  procs.push(authz);
  const config = join(dir, 'envoy.json');
  writeFileSync(
    config,
    JSON.stringify(
      xfccEnvoyConfig({
        admin: ports.admin,
        fronts: [
          { name: 'uri_only', port: ports.uriOnly, cert: false },
          { name: 'with_cert', port: ports.withCert, cert: true },
        ],
        inner: ports.inner,
        authzGrpc: ports.grpc,
        tls: { certFile: front.cert, keyFile: front.key, clientCaFile: caFile },
      }),
    ),
  );
  const envoy = start('envoy', envoyBin, [
    '-c',
    config,
    '--disable-hot-restart',
    '--concurrency',
    '1',
    '--log-level',
    'warning',
  ]);
  procs.push(envoy);
  await Promise.all([
    waitUntil(authz, '/readyz answered 200', () => httpOk(`http://127.0.0.1:${ports.http}/readyz`)),
    waitUntil(envoy, 'ready', () => httpOk(`http://127.0.0.1:${ports.admin}/ready`)),
  ]);
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Logged {
  x_request_id?: string;
  allow: boolean;
  spiffe_id: string;
  snat_pool: string;
  reason: string;
}

async function decisionFor(requestId: string): Promise<Logged> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    const entry = authz
      .stdout()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Logged)
      .find((e) => e.x_request_id === requestId);
    if (entry) return entry;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no decision for ${requestId}:\n${authz.stdout().slice(-3000)}`);
}

/** One request through a front listener with a client certificate; the client also forges an XFCC. */
async function through(port: number, client: string): Promise<{ status: string; decision: Logged }> {
  const requestId = randomUUID();
  const c = clients[client]!;
  const r = await curl([
    '--cacert',
    caFile,
    '--cert',
    c.cert,
    '--key',
    c.key,
    '--resolve',
    `${HOST}:${port}:127.0.0.1`,
    '-H',
    `x-request-id: ${requestId}`,
    '-H',
    `x-forwarded-client-cert: By=${GATEWAY};URI=${BOOKINFO}`,
    '-o',
    '/dev/null',
    '-w',
    '%{http_code}',
    `https://${HOST}:${port}/`,
  ]);
  return { status: r.stdout, decision: await decisionFor(requestId) };
}

describe('x-forwarded-client-cert through real Envoy (SANITIZE_SET)', () => {
  it('allows the genuine bookinfo workload, with and without Cert=', async () => {
    for (const port of [ports.uriOnly, ports.withCert]) {
      const r = await through(port, 'bookinfo');
      expect(r.status, JSON.stringify(r.decision)).toBe('200');
      expect(r.decision).toMatchObject({ allow: true, spiffe_id: BOOKINFO, snat_pool: 'bookinfo_snat' });
    }
  });

  it.each(['evilSubject', 'evilSubjectSemicolon', 'evilDns', 'evilDnsSemicolon'])(
    'denies sm-apigw-a whose certificate text spells bookinfo (%s), with and without Cert=',
    async (client) => {
      for (const port of [ports.uriOnly, ports.withCert]) {
        const r = await through(port, client);
        expect(r.status, client).toBe('403');
        expect(r.decision.allow).toBe(false);
        expect(r.decision.spiffe_id).not.toBe(BOOKINFO);
      }
    },
  );

  it.each(['twoUris', 'isCa', 'certSign'])('denies a certificate that is no X.509-SVID (%s)', async (client) => {
    // URI= only: two URI SANs are two URI pairs; with Cert= every SVID rule runs.
    const ports_ = client === 'twoUris' ? [ports.uriOnly, ports.withCert] : [ports.withCert];
    for (const port of ports_) {
      const r = await through(port, client);
      expect(r.status, client).toBe('403');
      expect(r.decision.allow).toBe(false);
    }
  });
});
