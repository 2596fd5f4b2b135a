// The seed's demo with a real identity plane: SPIRE issues every SVID. spire-server and spire-agent run
// on loopback and Unix sockets; Envoy takes its SVID and the trust bundle over SDS from the agent;
// bookinfo and sm-apigw-a get theirs with `spire-agent api fetch x509` (attested by uid); egress-authz
// gets its own from the Workload API (--spiffe-socket) and rotates it under load with a short TTL.
import { randomUUID, X509Certificate } from 'node:crypto';
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request as httpsRequest, type Server } from 'node:https';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, issue, workloadSvid } from '../support/pki.js';
import { check, checkClient, checkRequest, type CheckClient } from '../support/service.js';
import { curl, viaEgressProxy, type ProxyClient } from '../e2e/support/curl.js';
import { envoyBinary, repoRoot } from '../e2e/support/envoy.js';
import { freePort, httpOk, start, waitUntil, type RunningProcess } from '../e2e/support/processes.js';
import { startForwardProxy } from '../e2e/support/tinyproxy.js';
import { egressGatewaySdsConfig } from './envoy-sds.js';
import { asUid, Spire, TRUST_DOMAIN, type SvidFiles } from './support/spire.js';

const CLI = join(repoRoot, 'dist/cli.js');
const BUNDLE = join(repoRoot, 'dist/policy/bundle.tar.gz');
const ID = {
  bookinfo: `spiffe://${TRUST_DOMAIN}/ns/bookinfo/sa/productpage`,
  nettools: `spiffe://${TRUST_DOMAIN}/ns/sm-apigw-a/sa/nettools`,
  gateway: `spiffe://${TRUST_DOMAIN}/ns/istio-system/sa/istio-egressgateway`,
  authz: `spiffe://${TRUST_DOMAIN}/ns/egress-authz/sa/egress-authz`,
};
// unix workload attestor selectors: one uid per workload
const UID = { bookinfo: 10001, nettools: 10002, authz: 10003, gateway: 10004 };
/** egress-authz's SVID lifetime: SPIRE's agent renews at about half of it, so it rotates every few seconds */
const AUTHZ_SVID_TTL_S = 20;
const BOOKINFO_SNAT = '127.0.0.10';
const OTHER_SNAT = '127.0.0.11';
const PROXY_HOST = 'bigip-proxy-svc';

let dir = '';
let spire: Spire;
const procs: RunningProcess[] = [];
let authz: RunningProcess;
let target: Server | undefined;
let targetUrl = '';
let tinyproxyLog = '';
let grpcPort = 0;
let httpPort = 0;
let adminPort = 0;
let bookinfo: ProxyClient;
let nettools: ProxyClient;
let gatewaySvid: SvidFiles;

const readText = (p: string) => {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
};

function logLines(): Record<string, any>[] {
  return authz
    .stdout()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, any>);
}

async function decisionFor(requestId: string): Promise<Record<string, any>> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const entry = logLines().find((d) => d.msg === 'decision' && d.x_request_id === requestId);
    if (entry) return entry;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no decision logged for ${requestId}:\n${authz.stdout().slice(-3000)}`);
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), ok(true)));
    s.once('error', () => ok(false));
  });
}

/** gRPC channel credentials as the gateway: its SPIRE SVID, the SPIRE bundle, egress-authz checked by URI SAN. */
function gatewayCredentials(seen: string[]): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(
    readFileSync(gatewaySvid.bundle),
    readFileSync(gatewaySvid.key),
    readFileSync(gatewaySvid.cert),
    {
      checkServerIdentity: (_host, cert: PeerCertificate) => {
        seen.push(cert.fingerprint256);
        return cert.subjectaltname === `URI:${ID.authz}`
          ? undefined
          : new Error(`unexpected peer ${cert.subjectaltname}`);
      },
    },
  );
}

/** The certificate egress-authz presents on its gRPC listener to a gateway client. */
function authzServerCertificate(): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      host: '127.0.0.1',
      port: grpcPort,
      ALPNProtocols: ['h2'],
      ca: readFileSync(gatewaySvid.bundle),
      cert: readFileSync(gatewaySvid.cert),
      key: readFileSync(gatewaySvid.key),
      checkServerIdentity: () => undefined,
    });
    socket.once('secureConnect', () => {
      const cert = socket.getPeerCertificate(true);
      socket.destroy();
      if (!socket.authorized) reject(new Error(String(socket.authorizationError)));
      else resolve(cert);
    });
    socket.once('error', reject);
  });
}

/** POST /v1/sideband as the gateway (an allowed caller), the body a PEM chain; egress-authz checked by URI SAN. */
function sideband(pem: string): Promise<{ status: number; reason: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port: httpPort,
        method: 'POST',
        path: '/v1/sideband',
        ca: readFileSync(gatewaySvid.bundle),
        cert: readFileSync(gatewaySvid.cert),
        key: readFileSync(gatewaySvid.key),
        agent: false,
        checkServerIdentity: (_h, cert) =>
          cert.subjectaltname === `URI:${ID.authz}` ? undefined : new Error(`unexpected peer ${cert.subjectaltname}`),
        headers: { 'content-type': 'application/x-pem-file', 'content-length': Buffer.byteLength(pem) },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode ?? 0, reason: String(res.headers['x-egress-reason']) }));
      },
    );
    req.on('error', reject);
    req.end(pem);
  });
}

beforeAll(async () => {
  const envoyBin = envoyBinary();
  dir = mkdtempSync(join(tmpdir(), 'egress-authz-spire-'));
  const t0 = Date.now();
  spire = new Spire(dir);
  await spire.start();
  await spire.createEntry({ spiffeId: ID.bookinfo, uid: UID.bookinfo });
  await spire.createEntry({ spiffeId: ID.nettools, uid: UID.nettools });
  await spire.createEntry({ spiffeId: ID.gateway, uid: UID.gateway, dns: [PROXY_HOST] });
  await spire.createEntry({ spiffeId: ID.authz, uid: UID.authz, ttlSeconds: AUTHZ_SVID_TTL_S });
  const [bookinfoSvid, nettoolsSvid, gateway] = await Promise.all([
    spire.fetchX509(UID.bookinfo, 'bookinfo'),
    spire.fetchX509(UID.nettools, 'nettools'),
    spire.fetchX509(UID.gateway, 'gateway'),
  ]);
  gatewaySvid = gateway;
  console.log(`spire: server + agent up, 4 entries, 3 SVIDs fetched in ${Date.now() - t0} ms`);

  let listenPort: number, targetPort: number, tinyproxyPort: number;
  [listenPort, httpPort, targetPort, tinyproxyPort] = await Promise.all([
    freePort(),
    freePort(),
    freePort(),
    freePort(),
  ]);
  [grpcPort, adminPort] = await Promise.all([freePort(), freePort()]);
  const client = { proxyHost: PROXY_HOST, proxyPort: listenPort, proxyCaFile: bookinfoSvid.bundle };
  bookinfo = { ...client, svid: { cert: bookinfoSvid.cert, key: bookinfoSvid.key } };
  nettools = { ...client, proxyCaFile: nettoolsSvid.bundle, svid: { cert: nettoolsSvid.cert, key: nettoolsSvid.key } };

  const ca = await createCa('Legacy Web CA');
  const targetCert = await issue({ issuer: ca, subject: 'CN=legacy.example.test', dns: ['legacy.example.test'] });
  target = createServer({ cert: targetCert.certPem, key: targetCert.keyPem }, (_req, res) =>
    res.writeHead(200, { 'content-type': 'text/plain' }).end('legacy billing system\n'),
  );
  await new Promise<void>((ok) => target!.listen(targetPort, '127.0.0.1', ok));
  targetUrl = `https://127.0.0.1:${targetPort}/`;

  const forwardProxy = startForwardProxy(dir, tinyproxyPort, [BOOKINFO_SNAT]);
  const tinyproxy = forwardProxy.proc;
  tinyproxyLog = forwardProxy.logFile;
  procs.push(tinyproxy);

  // egress-authz as its own uid: the agent attests it and hands it its SVID over the Workload API
  const [node, nodeArgs] = asUid(UID.authz, process.execPath, [
    CLI,
    'serve',
    '--grpc-addr',
    `127.0.0.1:${grpcPort}`,
    '--http-addr',
    `127.0.0.1:${httpPort}`,
    '--health-addr',
    '127.0.0.1:0',
    '--policy',
    BUNDLE,
    '--spiffe-socket',
    `unix://${spire.agentSocket}`,
    '--allowed-caller',
    ID.gateway,
  ]);
  authz = start('egress-authz', node, nodeArgs, { cwd: repoRoot, env: { ...process.env, HOME: dir } });
  procs.push(authz);

  const envoyDir = join(dir, 'envoy');
  mkdirSync(envoyDir);
  chownSync(envoyDir, UID.gateway, UID.gateway);
  const envoyConfig = join(envoyDir, 'envoy.json');
  writeFileSync(
    envoyConfig,
    JSON.stringify(
      egressGatewaySdsConfig(
        {
          listen: { address: '127.0.0.1', port: listenPort },
          admin: { address: '127.0.0.1', port: adminPort },
          authz: { address: '127.0.0.1', port: grpcPort, timeoutMs: 2000 },
          forwardProxy: { address: '127.0.0.1', port: tinyproxyPort },
          snatPools: [
            { name: 'bookinfo_snat', sourceAddress: BOOKINFO_SNAT },
            { name: 'sm_apigw_a_snat', sourceAddress: OTHER_SNAT },
          ],
          accessLogPath: join(envoyDir, 'access.log'),
        },
        { agentSocket: spire.agentSocket, envoyId: ID.gateway, authzId: ID.authz, trustDomain: TRUST_DOMAIN },
      ),
    ),
  );
  const [envoyCmd, envoyArgs] = asUid(UID.gateway, envoyBin, [
    '-c',
    envoyConfig,
    '--disable-hot-restart',
    '--concurrency',
    '1',
    '--log-level',
    'warning',
    '--base-id',
    String(10_000 + (process.pid % 50_000)),
  ]);
  const envoy = start('envoy', envoyCmd, envoyArgs, { cwd: envoyDir });
  procs.push(envoy);

  await Promise.all([
    waitUntil(tinyproxy, 'listening', () => tcpOpen(tinyproxyPort)),
    waitUntil(authz, 'serving', async () => logLines().some((l) => l.msg === 'egress-authz serving'), 60_000),
    waitUntil(envoy, 'ready (its SDS secrets arrived)', () => httpOk(`http://127.0.0.1:${adminPort}/ready`), 60_000),
  ]);
  console.log(`spire: whole scenario up in ${Date.now() - t0} ms`);
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await spire?.stop();
  await new Promise<void>((ok) => (target ? target.close(() => ok()) : ok()));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the seed scenario with SPIRE as the identity plane', () => {
  it('Envoy serves the SVID and trusts the bundle it got over SDS from the SPIRE agent', async () => {
    const certs = (await (await fetch(`http://127.0.0.1:${adminPort}/certs`)).json()) as {
      certificates: {
        ca_cert: { subject_alt_names?: unknown[] }[];
        cert_chain: { subject_alt_names?: { uri?: string }[] }[];
      }[];
    };
    const chains = certs.certificates.flatMap((c) => c.cert_chain);
    expect(chains.some((c) => c.subject_alt_names?.some((s) => s.uri === ID.gateway))).toBe(true);
    expect(certs.certificates.some((c) => c.ca_cert.length > 0)).toBe(true);
    // the proxy's server certificate curl sees is that SVID, issued under the SPIRE bundle
    const r = await curl([...viaEgressProxy(bookinfo), '--verbose', '--include', '--insecure', targetUrl]);
    expect(r.stderr).toMatch(/subjectAltName: host "bigip-proxy-svc" matched cert's "bigip-proxy-svc"/);
  });

  it('lets bookinfo (SPIRE SVID) out through tinyproxy from 127.0.0.10', async () => {
    const requestId = randomUUID();
    const before = readText(tinyproxyLog).length;
    const r = await curl([...viaEgressProxy(bookinfo, { requestId }), '--include', '--insecure', targetUrl]);
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('legacy billing system');
    expect(readText(tinyproxyLog).slice(before)).toMatch(/Connect \(file descriptor \d+\): 127\.0\.0\.10\b/);
    expect(await decisionFor(requestId)).toMatchObject({
      allow: true,
      snat_pool: 'bookinfo_snat',
      spiffe_id: ID.bookinfo,
    });
  });

  it('refuses sm-apigw-a (SPIRE SVID) with 403, nothing reaches tinyproxy', async () => {
    const requestId = randomUUID();
    const before = readText(tinyproxyLog);
    const r = await curl([...viaEgressProxy(nettools, { requestId }), '--include', '--insecure', targetUrl]);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 403 /m);
    expect(await decisionFor(requestId)).toMatchObject({ allow: false, spiffe_id: ID.nettools });
    expect(readText(tinyproxyLog)).toBe(before);
  });

  it('egress-authz presents its own SPIRE SVID, and refuses a caller that is not the gateway', async () => {
    const cert = await authzServerCertificate();
    expect(cert.subjectaltname).toBe(`URI:${ID.authz}`);
    const bundle = new X509Certificate(readFileSync(gatewaySvid.bundle));
    expect(new X509Certificate(cert.raw).checkIssued(bundle)).toBe(true);
    const lifetime = (Date.parse(cert.valid_to) - Date.parse(cert.valid_from)) / 1000;
    expect(lifetime).toBeLessThanOrEqual(AUTHZ_SVID_TTL_S + 15); // SPIRE backdates notBefore by 10 s
    // bookinfo's SVID is valid in the trust domain, but it is not an allowed caller
    const seen: string[] = [];
    const bookinfoCreds = grpc.credentials.createSsl(
      readFileSync(bookinfo.proxyCaFile),
      readFileSync(bookinfo.svid!.key),
      readFileSync(bookinfo.svid!.cert),
      { checkServerIdentity: (_h, c) => void seen.push(c.fingerprint256) },
    );
    const intruder = checkClient(grpcPort, bookinfoCreds);
    await expect(check(intruder, checkRequest({ principal: ID.bookinfo }))).rejects.toMatchObject({
      code: grpc.status.PERMISSION_DENIED,
    });
    intruder.close();
  });

  it('the sideband verifies SPIRE chains against the bundle from the Workload API; another CA is refused', async () => {
    const allowed = await sideband(readFileSync(bookinfo.svid!.cert, 'utf8'));
    expect(allowed).toMatchObject({ status: 200 });
    // the same SPIFFE ID, but issued by a CA that is not in cluster.local's bundle
    const forger = await createCa('Not SPIRE');
    const forged = await workloadSvid(forger, ID.bookinfo);
    const refused = await sideband(forged.certPem);
    expect(refused.status).toBe(403);
    expect(refused.reason).toMatch(/chain|bundle|issuer|verif/i);
  });

  it('rotates its SVID under a bounded load without one failed Check, through Envoy and directly', async () => {
    const rotationsBefore = logLines().filter((l) => l.msg === 'own X.509-SVID from the Workload API').length;
    const seen: string[] = [];
    const persistent: CheckClient = checkClient(grpcPort, gatewayCredentials(seen));
    const durationMs = 25_000;
    const end = Date.now() + durationMs;
    let ok = 0;
    const failures: string[] = [];
    const checkOnce = async (client: CheckClient) => {
      try {
        const res = await check(client, checkRequest({ principal: ID.bookinfo }));
        if (res.status.code === 0) ok++;
        else
          failures.push(`status ${res.status.code}: ${res.deniedResponse?.body ?? JSON.stringify(res).slice(0, 300)}`);
      } catch (err) {
        failures.push((err as Error).message);
      }
    };
    const worker = async () => {
      while (Date.now() < end) await checkOnce(persistent);
    };
    const freshConnections = async () => {
      let n = 0;
      while (Date.now() < end) {
        const fresh = checkClient(grpcPort, gatewayCredentials(seen));
        await checkOnce(fresh);
        fresh.close();
        n++;
        await new Promise((r) => setTimeout(r, 500));
      }
      return n;
    };
    let viaEnvoy = 0;
    const envoyFailures: string[] = [];
    const throughEnvoy = async () => {
      while (Date.now() < end) {
        const r = await curl([...viaEgressProxy(bookinfo), '--include', '--insecure', targetUrl]);
        if (r.stdout.includes('legacy billing system')) viaEnvoy++;
        else envoyFailures.push(`${r.exitCode} ${r.stdout.split('\n')[0]} ${r.stderr}`);
        await new Promise((r) => setTimeout(r, 1000));
      }
    };
    const [, , , , connections] = await Promise.all([worker(), worker(), worker(), throughEnvoy(), freshConnections()]);
    persistent.close();
    const rotations = logLines()
      .filter((l) => l.msg === 'own X.509-SVID from the Workload API')
      .slice(rotationsBefore);
    const distinct = new Set(seen).size;
    console.log(
      `rotation under load: ${ok} checks in ${durationMs / 1000} s, ${failures.length} failed; ` +
        `${viaEnvoy} curl through Envoy, ${envoyFailures.length} failed; ${rotations.length} SVID rotations; ` +
        `${connections} fresh connections saw ${distinct} distinct server certificates`,
    );
    expect(failures).toEqual([]);
    expect(envoyFailures).toEqual([]);
    expect(rotations.length).toBeGreaterThanOrEqual(2);
    expect(distinct).toBeGreaterThanOrEqual(2);
    expect(ok).toBeGreaterThan(100);
  });

  it('reconnects to the Workload API after the agent restarts, and keeps rotating', async () => {
    const before = logLines().length;
    const restartedAt = Date.now();
    await spire.restartAgent(1000);
    // SPIRE's agent renews at about half of the 20 s lifetime: a new SVID within ~20 s of the restart
    const deadline = restartedAt + 40_000;
    while (Date.now() < deadline) {
      if (
        logLines()
          .slice(before)
          .some((l) => l.msg === 'own X.509-SVID from the Workload API' && l.rotated)
      )
        break;
      await new Promise((r) => setTimeout(r, 250));
    }
    const after = logLines().slice(before);
    expect(after.some((l) => l.msg === 'Workload API' && /FetchX509SVID/.test(l.reason))).toBe(true);
    expect(after.some((l) => l.msg === 'own X.509-SVID from the Workload API' && l.rotated)).toBe(true);
    console.log(
      `agent restart (down 1 s): reconnected and took a new SVID ${Date.now() - restartedAt} ms after the stop`,
    );
    const seen: string[] = [];
    const client = checkClient(grpcPort, gatewayCredentials(seen));
    expect((await check(client, checkRequest({ principal: ID.bookinfo }))).status.code).toBe(0);
    client.close();
    expect(authz.child.exitCode).toBeNull();
  });
});
