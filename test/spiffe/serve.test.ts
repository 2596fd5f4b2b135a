// `serve --spiffe-socket`: the flag and the variable, the start without an agent, and both listeners
// serving the SVID the Workload API pushes: rotated for new handshakes without dropping open
// connections, callers verified against the bundle of the same stream.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseServeConfig } from '../../src/service/config.js';
import { createCa, workloadSvid } from '../support/pki.js';
import { check, checkClient, checkRequest, type CheckClient } from '../support/service.js';
import {
  BIGIP_ID,
  GATEWAY_ID,
  grpcTls,
  httpsRequest,
  makeMtlsPki,
  ROOT,
  SERVER_ID,
  SERVER_NAME,
  spawnServe,
  type MtlsPki,
  type ServeProcess,
} from '../hardening/support.js';
import { FakeWorkloadApi, svidMessage } from './fake-workload-api.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
// the compiled bundle (npm run build / prepare) starts faster than compiling the folder on a busy machine
const BUNDLE = join(ROOT, 'dist', 'policy', 'bundle.tar.gz');
const POLICY = [
  ...(existsSync(BUNDLE) ? ['--policy', BUNDLE] : []),
  // the first decisions on a busy shared machine can take longer than the 200 ms default
  '--check-deadline',
  '5s',
];

describe('serve --spiffe-socket configuration', () => {
  const parse = (argv: string[], env: Record<string, string> = {}) => parseServeConfig(argv, env);

  it('takes the flag, or SPIFFE_ENDPOINT_SOCKET when no TLS file is given', () => {
    expect(parse(['--spiffe-socket', '/run/spire/agent.sock'])).toMatchObject({
      ok: true,
      value: { spiffe: { socket: '/run/spire/agent.sock', waitMs: 30_000 } },
    });
    const env = { SPIFFE_ENDPOINT_SOCKET: 'unix:///run/spire/agent.sock' };
    expect(parse(['--spiffe-wait', '2s'], env)).toMatchObject({
      value: { spiffe: { socket: 'unix:///run/spire/agent.sock', waitMs: 2000 } },
    });
    const files = parse(['--tls-cert=c', '--tls-key=k'], env);
    expect(files.ok && files.value.spiffe).toBeUndefined();
    expect(files.ok && files.value.tls).toEqual({ certFile: 'c', keyFile: 'k' });
    const empty = parse([], { SPIFFE_ENDPOINT_SOCKET: '' });
    expect(empty.ok && empty.value.spiffe).toBeUndefined();
    expect(parse(['--spiffe-socket=/s', `--allowed-caller=${GATEWAY_ID}`]).ok).toBe(true);
  });

  it.each([
    [['--spiffe-socket=/s', '--tls-cert=c', '--tls-key=k'], {}, /--spiffe-socket replaces --tls-cert, --tls-key/],
    [['--spiffe-socket=/s', '--tls-client-ca=ca'], {}, /--spiffe-socket replaces --tls-client-ca/],
    [['--spiffe-socket=agent.sock'], {}, /--spiffe-socket: .*expected an absolute socket path/],
    [[], { SPIFFE_ENDPOINT_SOCKET: 'tcp://127.0.0.1:1' }, /SPIFFE_ENDPOINT_SOCKET: .*only unix: sockets/],
    [['--spiffe-socket=/s', '--spiffe-wait=soon'], {}, /--spiffe-wait "soon"/],
  ])('refuses %j %j with a reason', (argv, env, why) => {
    const r = parse(argv, env);
    expect(r.ok).toBe(false);
    expect(r.ok ? '' : r.reason).toMatch(why);
  });
});

describe('serve with its SVID from the Workload API', () => {
  let dir: string;
  let pki: MtlsPki;
  let agent: FakeWorkloadApi;
  let serve: ServeProcess | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egress-authz-spiffe-serve-'));
    pki = await makeMtlsPki();
    agent = new FakeWorkloadApi(join(dir, 'agent.sock'));
    await agent.start();
    agent.pushSvids({ svids: [svidMessage(SERVER_ID, pki.server, [pki.ca])] });
  });
  afterAll(async () => {
    await serve?.stop();
    agent.stop();
    pki.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  it(
    'does not start without an agent: exit 1 and the reason, within --spiffe-wait, no stack trace',
    { timeout: 60_000 },
    async () => {
      const t0 = Date.now();
      const failed = spawnServe([...POLICY, '--spiffe-socket', join(dir, 'nobody.sock'), '--spiffe-wait', '700ms']);
      await expect(failed).rejects.toThrow(/serve exited \(1\) before serving/);
      const message: unknown = await failed.catch((e: Error) => e.message);
      expect(message).toMatch(/no SVID from the Workload API; not serving/);
      expect(message).toMatch(/within 700 ms: FetchX509SVID UNAVAILABLE/);
      expect(message).not.toMatch(/\n\s+at /);
      // the wait is bounded: not the 30 s default (the rest is the policy load, slow on a busy machine)
      expect(Date.now() - t0).toBeLessThan(25_000);
    },
  );

  it(
    'serves the SVID on both listeners, rotates it for new handshakes, keeps open connections',
    { timeout: 90_000 },
    async () => {
      serve = await spawnServe([
        ...POLICY,
        '--spiffe-socket',
        `unix://${agent.socketPath}`,
        '--allowed-caller',
        GATEWAY_ID,
        '--allowed-caller',
        BIGIP_ID,
      ]);
      expect(serve.lines.find((l) => l.msg === 'egress-authz serving')).toMatchObject({ tls: 'mtls' });
      const seen: string[] = [];
      const { creds, options } = grpcTls(pki, pki.gateway, seen);
      const open: CheckClient = checkClient(serve.grpcPort, creds, options);
      const allow = await check(open, checkRequest({ principal: BOOKINFO }));
      expect(allow.status.code).toBe(0);
      const first = seen.at(-1)!;
      const sideband = await httpsRequest(serve.httpPort, pki, pki.bigip, {
        method: 'POST',
        path: '/v1/sideband',
        body: (await workloadSvid(pki.ca, BOOKINFO)).certPem,
      });
      expect(sideband.status, JSON.stringify(sideband.headers)).toBe(200);
      expect(sideband.serverFingerprint).toBe(first);
      // the Workload API's bundle also verifies the chains the sideband is asked about
      const foreign = await httpsRequest(serve.httpPort, pki, pki.bigip, {
        method: 'POST',
        path: '/v1/sideband',
        body: (await workloadSvid(pki.otherCa, BOOKINFO)).certPem,
      });
      expect(foreign.status).toBe(403);
      expect(String(foreign.headers['x-egress-reason'])).toMatch(/chain|bundle|issuer|verif/i);

      // callers: verified against the bundle, then the allowed list
      const bookinfoPem = (await workloadSvid(pki.ca, BOOKINFO)).certPem;
      const evil = await httpsRequest(serve.httpPort, pki, pki.evil, {
        method: 'POST',
        path: '/v1/sideband',
        body: bookinfoPem,
      });
      expect(evil.status).toBe(403);
      await expect(httpsRequest(serve.httpPort, pki, pki.stranger, { path: '/healthz' })).rejects.toThrow();

      const rotated = await workloadSvid(pki.ca, SERVER_ID, { dns: [SERVER_NAME] });
      agent.pushSvids({ svids: [svidMessage(SERVER_ID, rotated, [pki.ca])] });
      const deadline = Date.now() + 10_000;
      let fresh = first;
      while (fresh === first && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        fresh = (await httpsRequest(serve.httpPort, pki, pki.bigip, { path: '/healthz' })).serverFingerprint;
      }
      expect(fresh).not.toBe(first);
      // the open gRPC connection was not dropped: same handshake, still answering
      const handshakes = seen.length;
      expect((await check(open, checkRequest({ principal: BOOKINFO }))).status.code).toBe(0);
      expect(seen.length).toBe(handshakes);
      // a new gRPC connection gets the rotated SVID
      const seen2: string[] = [];
      const again = grpcTls(pki, pki.gateway, seen2);
      const fresh2 = checkClient(serve.grpcPort, again.creds, again.options);
      const answer = await check(fresh2, checkRequest({ principal: BOOKINFO }));
      expect(answer.status.code, JSON.stringify(answer)).toBe(0);
      expect(seen2.at(-1)).toBe(fresh);
      // Every serving process (one, or each worker of --workers N) has its own Workload API client.
      const svidLines = serve.lines.filter((l) => l.msg === 'own X.509-SVID from the Workload API');
      for (const process of new Set(svidLines.map((l) => l.worker)))
        expect(svidLines.filter((l) => l.worker === process).map((l) => l.rotated)).toEqual([false, true]);

      // a CA rotation in the bundle reaches the caller verification
      const nextCa = await createCa('Mesh CA 2');
      agent.pushSvids({ svids: [svidMessage(SERVER_ID, rotated, [pki.ca, nextCa])] });
      const newGateway = await workloadSvid(nextCa, BIGIP_ID);
      let status = 0;
      const until = Date.now() + 10_000;
      while (status !== 200 && Date.now() < until) {
        status = await httpsRequest(serve.httpPort, pki, newGateway, { path: '/healthz' }).then(
          (r) => r.status,
          () => 0,
        );
        if (status !== 200) await new Promise((r) => setTimeout(r, 100));
      }
      expect(status).toBe(200);
      open.close();
      fresh2.close();
    },
  );

  it(
    'keeps serving the last SVID while the agent is away, and takes the next one when it is back',
    { timeout: 60_000 },
    async () => {
      expect(serve).toBeDefined();
      agent.stop();
      await new Promise((r) => setTimeout(r, 1000));
      const during = await httpsRequest(serve!.httpPort, pki, pki.bigip, { path: '/healthz' });
      expect(during.status).toBe(200);
      expect(serve!.proc.exitCode).toBeNull();
      const next = await workloadSvid(pki.ca, SERVER_ID, { dns: [SERVER_NAME] });
      agent.svidResponse = { svids: [svidMessage(SERVER_ID, next, [pki.ca])] };
      await agent.start();
      const deadline = Date.now() + 15_000;
      let fp = during.serverFingerprint;
      while (fp === during.serverFingerprint && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 200));
        fp = (await httpsRequest(serve!.httpPort, pki, pki.bigip, { path: '/healthz' })).serverFingerprint;
      }
      expect(fp).not.toBe(during.serverFingerprint);
      expect(serve!.lines.some((l) => l.msg === 'Workload API' && /FetchX509SVID/.test(l.reason))).toBe(true);
    },
  );
});

describe('serve whose own SVID expires while the agent is away', () => {
  let dir: string;
  let pki: MtlsPki;
  let agent: FakeWorkloadApi;
  let serve: ServeProcess | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egress-authz-spiffe-expiry-'));
    pki = await makeMtlsPki();
    agent = new FakeWorkloadApi(join(dir, 'agent.sock'));
    await agent.start();
  });
  afterAll(async () => {
    await serve?.stop();
    agent.stop();
    pki.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  const readyz = async () => {
    const port = serve!.lines.find((l) => l.msg === 'egress-authz serving')!.health_port as number;
    const res = await fetch(`http://127.0.0.1:${port}/readyz`);
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };

  it(
    'is not ready from the moment the SVID expires, and ready again when the agent brings a new one',
    {
      timeout: 90_000,
    },
    async () => {
      // Valid for a few seconds: long enough to start (the policy load is slow on a busy machine).
      const shortLived = await workloadSvid(pki.ca, SERVER_ID, {
        dns: [SERVER_NAME],
        notAfter: new Date(Date.now() + 10_000),
      });
      agent.pushSvids({ svids: [svidMessage(SERVER_ID, shortLived, [pki.ca])] });
      serve = await spawnServe([
        ...POLICY,
        '--spiffe-socket',
        `unix://${agent.socketPath}`,
        '--health-addr',
        '127.0.0.1:0',
        '--workers',
        '1',
      ]);
      const before = await readyz();
      expect(before.status).toBe(200);
      expect(before.body.own_svid).toMatchObject({ spiffe_id: SERVER_ID, expired: false });
      agent.stop();
      const expiresAt = new Date(before.body.own_svid.not_after as string).getTime();
      await new Promise((r) => setTimeout(r, Math.max(0, expiresAt - Date.now()) + 1500));
      const after = await readyz();
      expect(after.status).toBe(503);
      expect(after.body.own_svid).toMatchObject({ expired: true });
      expect(serve.lines.some((l) => /own X.509-SVID expired/.test(String(l.msg)))).toBe(true);
      // Still alive, and back to ready with the next SVID once the agent returns.
      expect(serve.proc.exitCode).toBeNull();
      const next = await workloadSvid(pki.ca, SERVER_ID, { dns: [SERVER_NAME] });
      agent.svidResponse = { svids: [svidMessage(SERVER_ID, next, [pki.ca])] };
      await agent.start();
      const until = Date.now() + 20_000;
      let again = await readyz();
      while (again.status !== 200 && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 200));
        again = await readyz();
      }
      expect(again.status).toBe(200);
      expect(again.body.own_svid).toMatchObject({ expired: false });
    },
  );
});
