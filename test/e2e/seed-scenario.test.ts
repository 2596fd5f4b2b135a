// The seed's demo, end to end on loopback with the real parts: a bookinfo pod's SVID gets through the
// mTLS egress proxy (Envoy standing in for the BIG-IP virtual server bigip-proxy-svc:3128) to the
// organisation's forward proxy (tinyproxy) from its tenant's SNAT address; an sm-apigw-a pod is
// refused; the firewall (tinyproxy's Allow list) admits only the bookinfo SNAT address.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, issue, workloadSvid, writeCert } from '../support/pki.js';
import { curl, viaEgressProxy, type ProxyClient } from './support/curl.js';
import { envoyBinary, repoRoot } from './support/envoy.js';
import { egressGatewayConfig, type AccessLogEntry } from './support/envoy-config.js';
import { freePort, httpOk, start, startEgressAuthz, waitUntil, type RunningProcess } from './support/processes.js';
import { startForwardProxy } from './support/tinyproxy.js';

const CLI = join(repoRoot, 'dist/cli.js');
const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const NETTOOLS = 'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools';
const BOOKINFO_SNAT = '127.0.0.10';
const OTHER_SNAT = '127.0.0.11';

interface DecisionLogEntry {
  decision_id: string;
  x_request_id?: string;
  spiffe_id?: string;
  allow: boolean;
  snat_pool: string;
  reason: string;
}

let dir = '';
const procs: RunningProcess[] = [];
let target: Server | undefined;
let authz: RunningProcess;
let tinyproxyLog = '';
let accessLog = '';
let bookinfo: ProxyClient;
let nettools: ProxyClient;
let noCert: ProxyClient;
let stranger: ProxyClient;
let targetUrl = '';
let tinyproxyPort = 0;
let adminUrl = '';
let authzUrl = '';

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), ok(true)));
    s.once('error', () => ok(false));
  });
}

/** Sum of the egress listener's TLS counter `listener.<addr>.ssl.<name>` from Envoy's admin stats. */
async function listenerTlsCounter(name: string): Promise<number> {
  const text = await (
    await fetch(`${adminUrl}/stats?filter=${encodeURIComponent(`^listener\\..*\\.ssl\\.${name}$`)}`)
  ).text();
  return text
    .split('\n')
    .map((l) => /: (\d+)$/.exec(l)?.[1])
    .reduce((sum, v) => sum + (v ? Number(v) : 0), 0);
}

const readText = (path: string) => (existsSync(path) ? readFileSync(path, 'utf8') : '');

function decisions(): DecisionLogEntry[] {
  return authz
    .stdout()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((e): e is Record<string, unknown> & DecisionLogEntry => typeof e.decision_id === 'string');
}

/** The decision egress-authz logged for this x-request-id (its log is written asynchronously). */
async function decisionFor(requestId: string): Promise<DecisionLogEntry> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    const entry = decisions().find((d) => d.x_request_id === requestId);
    if (entry) return entry;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no decision logged for x-request-id ${requestId}:\n${authz.stdout().slice(-4000)}`);
}

/** Envoy writes a tunnel's access log line when the tunnel closes and flushes the file on a timer. */
async function accessLogEntry(requestId: string): Promise<AccessLogEntry> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    const entry = readText(accessLog)
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as AccessLogEntry)
      .find((e) => e.x_request_id === requestId);
    if (entry) return entry;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no Envoy access log entry for x-request-id ${requestId}:\n${readText(accessLog)}`);
}

beforeAll(async () => {
  const envoyBin = envoyBinary();
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
  dir = mkdtempSync(join(tmpdir(), 'egress-e2e-'));

  const ca = await createCa('Example Org Mesh CA');
  const caFile = join(dir, 'ca.crt');
  writeFileSync(caFile, ca.certPem);
  const proxyHost = 'bigip-proxy-svc';
  const server = writeCert(
    dir,
    'bigip-proxy-svc',
    await issue({
      issuer: ca,
      subject: 'CN=bigip-proxy-svc',
      dns: [proxyHost, 'bigip-proxy-svc.bookinfo.svc.cluster.local'],
    }),
  );
  const otherCa = await createCa('Somebody Else CA');

  const [listenPort, adminPort, grpcPort, httpPort, targetPort] = await Promise.all([
    freePort(),
    freePort(),
    freePort(),
    freePort(),
    freePort(),
  ]);
  tinyproxyPort = await freePort();
  const client = { proxyHost, proxyPort: listenPort, proxyCaFile: caFile };
  bookinfo = { ...client, svid: writeCert(dir, 'productpage', await workloadSvid(ca, BOOKINFO)) };
  nettools = { ...client, svid: writeCert(dir, 'nettools', await workloadSvid(ca, NETTOOLS)) };
  stranger = { ...client, svid: writeCert(dir, 'stranger', await workloadSvid(otherCa, BOOKINFO)) };
  noCert = client;

  // The legacy application behind the forward proxy.
  const targetCert = await issue({ issuer: ca, subject: 'CN=legacy.example.test', dns: ['legacy.example.test'] });
  target = createServer({ cert: targetCert.certPem, key: targetCert.keyPem }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('legacy billing system\n');
  });
  await new Promise<void>((ok) => target!.listen(targetPort, '127.0.0.1', ok));
  targetUrl = `https://127.0.0.1:${targetPort}/`;

  const forwardProxy = startForwardProxy(dir, tinyproxyPort, [BOOKINFO_SNAT]);
  const tinyproxy = forwardProxy.proc;
  tinyproxyLog = forwardProxy.logFile;
  procs.push(tinyproxy);

  authz = startEgressAuthz(repoRoot, grpcPort, httpPort);
  authzUrl = `http://127.0.0.1:${httpPort}`;
  procs.push(authz);

  accessLog = join(dir, 'envoy-access.log');
  const envoyConfig = join(dir, 'envoy.json');
  writeFileSync(
    envoyConfig,
    JSON.stringify(
      egressGatewayConfig({
        listen: { address: '127.0.0.1', port: listenPort },
        admin: { address: '127.0.0.1', port: adminPort },
        authz: { address: '127.0.0.1', port: grpcPort },
        forwardProxy: { address: '127.0.0.1', port: tinyproxyPort },
        snatPools: [
          { name: 'bookinfo_snat', sourceAddress: BOOKINFO_SNAT },
          { name: 'sm_apigw_a_snat', sourceAddress: OTHER_SNAT },
        ],
        tls: { certFile: server.cert, keyFile: server.key, clientCaFile: caFile },
        accessLogPath: accessLog,
      }),
      null,
      2,
    ),
  );
  adminUrl = `http://127.0.0.1:${adminPort}`;
  const envoy = start('envoy', envoyBin, [
    '-c',
    envoyConfig,
    '--disable-hot-restart',
    '--concurrency',
    '1',
    '--log-level',
    'warning',
    '--file-flush-interval-msec',
    '100',
  ]);
  procs.push(envoy);

  await Promise.all([
    waitUntil(tinyproxy, 'listening', () => tcpOpen(tinyproxyPort)),
    waitUntil(authz, '/readyz answered 200', () => httpOk(`http://127.0.0.1:${httpPort}/readyz`)),
    waitUntil(envoy, 'ready', () => httpOk(`http://127.0.0.1:${adminPort}/ready`)),
  ]);
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await new Promise<void>((ok) => (target ? target.close(() => ok()) : ok()));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('seed scenario through real Envoy and tinyproxy', () => {
  it('lets a bookinfo pod out through tinyproxy from the bookinfo_snat address, with one id from curl to the decision log', async () => {
    const requestId = randomUUID();
    const before = readText(tinyproxyLog).length;
    const r = await curl([...viaEgressProxy(bookinfo, { requestId }), '--include', '--insecure', targetUrl]);
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    // tinyproxy's "200 Connection established" reaches curl re-framed by Envoy as HTTP/1.1 200.
    expect(r.stdout).toMatch(/^HTTP\/1\.1 200 [^\r\n]*\r\nproxy-agent: tinyproxy/im);
    expect(r.stdout).toContain('legacy billing system');

    // The firewall saw the tenant's SNAT address and nothing else.
    const seen = readText(tinyproxyLog).slice(before);
    expect(seen).toMatch(/Connect \(file descriptor \d+\): 127\.0\.0\.10\b/);
    expect(seen).not.toMatch(/Connect \(file descriptor \d+\): 127\.0\.0\.1\b/);

    const decision = await decisionFor(requestId);
    expect(decision).toMatchObject({ allow: true, snat_pool: 'bookinfo_snat', spiffe_id: BOOKINFO });
    const logged = await accessLogEntry(requestId);
    expect(logged).toMatchObject({
      method: 'CONNECT',
      decision_id: decision.decision_id,
      metadata_decision_id: decision.decision_id,
      snat_pool: 'bookinfo_snat',
      upstream_cluster: 'bookinfo_snat',
      peer_uri_san: BOOKINFO,
    });
    expect(String(logged.upstream_local_address)).toMatch(/^127\.0\.0\.10:\d+$/);
    // The client is told which decision let it through.
    expect(r.stdout.toLowerCase()).toContain(`x-egress-decision-id: ${decision.decision_id}`);
  });

  it('refuses an sm-apigw-a pod with 403 before anything reaches tinyproxy', async () => {
    const requestId = randomUUID();
    const before = readText(tinyproxyLog);
    const r = await curl([...viaEgressProxy(nettools, { requestId }), '--include', '--insecure', targetUrl]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 403 /m);
    expect(r.stderr).toMatch(/CONNECT tunnel failed, response 403/);

    const decision = await decisionFor(requestId);
    expect(decision).toMatchObject({ allow: false, snat_pool: '', spiffe_id: NETTOOLS });
    expect(r.stdout.toLowerCase()).toContain(`x-egress-decision-id: ${decision.decision_id}`);
    const logged = await accessLogEntry(requestId);
    expect(logged).toMatchObject({
      response_code: 403,
      denied_decision_id: decision.decision_id,
      response_flags: 'UAEX',
    });
    expect(readText(tinyproxyLog)).toBe(before);
  });

  it('does not let a denied pod pick the SNAT pool itself', async () => {
    const requestId = randomUUID();
    const before = readText(tinyproxyLog);
    const r = await curl([
      ...viaEgressProxy(nettools, { requestId, proxyHeaders: ['x-egress-snat-pool: bookinfo_snat'] }),
      '--include',
      '--insecure',
      targetUrl,
    ]);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 403 /m);
    expect(await decisionFor(requestId)).toMatchObject({ allow: false });
    expect(readText(tinyproxyLog)).toBe(before);
  });

  it('fails the TLS handshake without a client certificate, or with one from another CA', async () => {
    const count = decisions().length;
    const before = readText(tinyproxyLog);
    for (const [client, counter] of [
      [noCert, 'fail_verify_no_cert'],
      [stranger, 'fail_verify_error'],
    ] as const) {
      const failed = await listenerTlsCounter(counter);
      const r = await curl([...viaEgressProxy(client), '--include', '--insecure', targetUrl]);
      // With TLS 1.3 curl learns of the refusal only when it writes: 35 (handshake), 55/56 (send/recv).
      expect([35, 55, 56]).toContain(r.exitCode);
      expect(r.stdout).not.toMatch(/^HTTP\//m);
      expect(await listenerTlsCounter(counter)).toBe(failed + 1);
    }
    expect(decisions()).toHaveLength(count);
    expect(readText(tinyproxyLog)).toBe(before);
  });

  it('has a real firewall: tinyproxy refuses any source address but bookinfo_snat', async () => {
    const direct = (source: string) =>
      curl([
        '--interface',
        source,
        '--proxy',
        `http://127.0.0.1:${tinyproxyPort}`,
        '--include',
        '--insecure',
        targetUrl,
      ]);
    expect((await direct(BOOKINFO_SNAT)).stdout).toContain('legacy billing system');
    for (const source of [OTHER_SNAT, '127.0.0.1']) {
      const r = await direct(source);
      expect(r.stdout).toMatch(/^HTTP\/1\.[01] 403 /m);
      expect(r.stdout).not.toContain('legacy billing system');
    }
  });

  // Last: it stops egress-authz.
  it("answers Envoy's Checks on the fast paths: decoder (none handed to proto-loader's) and stream (none to grpc-js)", async () => {
    await curl([...viaEgressProxy(bookinfo, { requestId: randomUUID() }), '--insecure', targetUrl]);
    const text = await (await fetch(`${authzUrl}/metrics`)).text();
    const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
    expect(value('egress_authz_checks_total\\{caller="envoy",decision="allow"[^}]*\\}')).toBeGreaterThan(0);
    expect(value('egress_authz_request_decode_fallbacks_total')).toBe(0);
    expect(value('egress_authz_check_grpc_js_calls_total')).toBe(0);
  });

  it('fails closed: with egress-authz stopped, even bookinfo gets 403 and nothing reaches tinyproxy', async () => {
    await authz.stop();
    const requestId = randomUUID();
    const before = readText(tinyproxyLog);
    const r = await curl([...viaEgressProxy(bookinfo, { requestId }), '--include', '--insecure', targetUrl]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 403 /m);
    expect(await accessLogEntry(requestId)).toMatchObject({ response_code: 403, response_flags: 'UAEX' });
    expect(readText(tinyproxyLog)).toBe(before);
  });
});
