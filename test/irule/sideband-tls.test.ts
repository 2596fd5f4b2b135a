// Issue 11, finding 4: the iRule's sideband over mTLS. An iRule's `connect` has no TLS of its own; on a
// BIG-IP it connects to vs_egress_authz_sideband, whose server-ssl profile presents the BIG-IP's
// certificate and verifies egress-authz's (deploy/bigip/egress-authz.conf). Here a small TLS relay
// plays that virtual server: plain TCP from the iRule in, TLS with the BIG-IP's certificate out.
// egress-authz runs with --tls-client-ca and --allowed-caller <the BIG-IP's SPIFFE ID>.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateFiles, parseAllowedCaller } from '../../src/transport/tls.js';
import { createCa, workloadSvid, writeCert } from '../support/pki.js';
import { startTestService, type TestService } from '../support/service.js';
import { md5Fingerprint } from '../sideband/sideband-service.js';
import { runHarness } from './harness.js';

const BIGIP = 'spiffe://cluster.local/ns/bookinfo/sa/bigip-proxy-svc';
const SERVICE = 'spiffe://cluster.local/ns/egress-authz/sa/egress-authz';
const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';

interface Relay {
  port: number;
  close(): Promise<void>;
}

/** server-ssl in a few lines: each plain connection becomes one mTLS connection to the service. */
function serverSslRelay(servicePort: number, client: { cert: string; key: string }, ca: string): Promise<Relay> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((plain) => {
    sockets.add(plain);
    const secure = tlsConnect({
      host: '127.0.0.1',
      port: servicePort,
      cert: client.cert,
      key: client.key,
      ca,
      // BIG-IP's peer-cert-mode require checks the chain against ca-file, not a host name.
      checkServerIdentity: () => undefined,
    });
    sockets.add(secure);
    plain.pipe(secure).pipe(plain);
    const end = () => {
      plain.destroy();
      secure.destroy();
    };
    plain.on('error', end).on('close', end);
    secure.on('error', end).on('close', end);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: (server.address() as { port: number }).port,
        close: () => {
          for (const s of sockets) s.destroy();
          return new Promise<void>((done) => server.close(() => done()));
        },
      }),
    ),
  );
}

let dir = '';
let service: TestService;
let files: CertificateFiles;
let relay: Relay;
let strangerRelay: Relay;
let workload: { path: string; md5: string };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'egress-sideband-tls-'));
  const ca = await createCa('Example Org Mesh CA');
  const caFile = join(dir, 'ca.crt');
  writeFileSync(caFile, ca.certPem);
  const own = writeCert(dir, 'egress-authz', await workloadSvid(ca, SERVICE));
  const bigip = await workloadSvid(ca, BIGIP);
  // Chains to the same CA, but is not the BIG-IP: refused by --allowed-caller.
  const stranger = await workloadSvid(ca, 'spiffe://cluster.local/ns/sm-apigw-a/sa/default');
  const pod = await workloadSvid(ca, BOOKINFO);
  workload = { path: join(dir, 'pod.pem'), md5: md5Fingerprint(pod.der) };
  writeFileSync(workload.path, pod.certPem);
  files = new CertificateFiles({ certFile: own.cert, keyFile: own.key, clientCaFile: caFile });
  const allowed = parseAllowedCaller(BIGIP);
  if (!allowed.ok) throw new Error(allowed.reason);
  service = await startTestService({ tls: { files, allowedCallers: [allowed.value] } });
  [relay, strangerRelay] = await Promise.all([
    serverSslRelay(service.httpPort, { cert: bigip.certPem, key: bigip.keyPem }, ca.certPem),
    serverSslRelay(service.httpPort, { cert: stranger.certPem, key: stranger.keyPem }, ca.certPem),
  ]);
});

afterAll(async () => {
  await Promise.all([relay?.close(), strangerRelay?.close()]);
  await service?.close(100);
  files?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the iRule sideband over mTLS (server-ssl virtual server)', () => {
  it('through the server-ssl relay with the BIG-IP certificate: bookinfo → snatpool bookinfo_snat', async () => {
    const run = await runHarness({ pem: workload.path, hash: workload.md5, target: `127.0.0.1:${relay.port}` });
    expect(run.errors).toEqual([]);
    expect(run.actions).toContain('snatpool bookinfo_snat');
    expect(run.connections[0]).toMatchObject({ verdict: 'allow', pool: 'bookinfo_snat' });
    expect(run.logs[0]).toMatch(/decision=allow .*status=200 /);
    expect(service.decisions.at(-1)).toMatchObject({ caller: 'sideband', allow: true, spiffe_id: BOOKINFO });
  });

  it('without it (plain TCP to the TLS listener) the service refuses and the iRule rejects', async () => {
    const before = service.decisions.length;
    const run = await runHarness({ pem: workload.path, hash: workload.md5, target: `127.0.0.1:${service.httpPort}` });
    expect(run.errors).toEqual([]);
    expect(run.actions).toContain('reject');
    expect(run.actions.some((a) => a.startsWith('snatpool'))).toBe(false);
    expect(run.logs[0]).toContain('egress-authz unavailable');
    expect(service.decisions.length).toBe(before);
  });

  it('a relay presenting another workload certificate is refused by --allowed-caller: the iRule rejects', async () => {
    const before = service.decisions.length;
    const run = await runHarness({
      pem: workload.path,
      hash: workload.md5,
      target: `127.0.0.1:${strangerRelay.port}`,
    });
    expect(run.errors).toEqual([]);
    expect(run.actions).toContain('reject');
    expect(run.connections[0]?.verdict).toBe('reject');
    expect(run.logs[0]).toMatch(/decision=deny .*status=403 /);
    expect(service.decisions.length).toBe(before);
  });
});

/** The body of one top-level tmsh object (`<kind> <name> { … }`), braces balanced. */
function tmshObject(config: string, header: string): string {
  const start = config.indexOf(`${header} {`);
  if (start < 0) return '';
  let depth = 0;
  for (let i = config.indexOf('{', start); i < config.length; i++) {
    if (config[i] === '{') depth++;
    if (config[i] === '}' && --depth === 0) return config.slice(start, i + 1);
  }
  return '';
}

describe('the shipped BIG-IP configuration puts the sideband on mTLS', () => {
  const conf = readFileSync(join(import.meta.dirname, '..', '..', 'deploy', 'bigip', 'egress-authz.conf'), 'utf8');
  const irule = readFileSync(
    join(import.meta.dirname, '..', '..', 'deploy', 'bigip', 'egress-authz.irule.tcl'),
    'utf8',
  );

  it('vs_egress_authz_sideband has a server-ssl profile on its server side', () => {
    const vs = tmshObject(conf, 'ltm virtual /Common/vs_egress_authz_sideband');
    expect(vs).toMatch(/\/Common\/serverssl_egress_authz_sideband \{\s*context serverside\s*\}/);
  });

  it('the profile presents the BIG-IP certificate and requires a server certificate from the CA', () => {
    const profile = tmshObject(conf, 'ltm profile server-ssl /Common/serverssl_egress_authz_sideband');
    expect(profile).toMatch(/\n\s+cert \/Common\/bigip-proxy-svc\.crt\n/);
    expect(profile).toMatch(/\n\s+key \/Common\/bigip-proxy-svc\.key\n/);
    expect(profile).toMatch(/\n\s+ca-file \/Common\/org-ca\.crt\n/);
    expect(profile).toMatch(/\n\s+peer-cert-mode require\n/);
  });

  it('the readiness monitor speaks TLS with the BIG-IP certificate (the listener requires one)', () => {
    const monitor = tmshObject(conf, 'ltm monitor https /Common/egress_authz_readyz');
    expect(monitor).toMatch(/\n\s+cert \/Common\/bigip-proxy-svc\.crt\n/);
  });

  it('the iRule connects to that virtual server by default, not to an address', () => {
    expect(irule).toMatch(/set static::egress_authz_target "\/Common\/vs_egress_authz_sideband"/);
  });
});
