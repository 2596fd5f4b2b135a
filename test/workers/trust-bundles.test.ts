// Trust bundles with `serve --workers 2`: the primary reads the bundle files and fetches the bundle
// endpoints, once for the whole service, and hands every accepted bundle set to every worker. So an
// endpoint is fetched once per refresh (not once per worker), a bundle file change is reported only when
// every worker verifies against it, a replacement worker starts with the primary's current bundles (not
// a fetch of its own), and a refresh that fails keeps the previous bundle everywhere. With --spiffe-socket
// the Workload API's bundles take the same way (each worker's own stream gives it only its SVID).
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BIGIP_ID,
  httpsRequest,
  makeMtlsPki,
  SERVER_ID,
  childPids,
  spawnServe,
  type MtlsPki,
  type ServeProcess,
} from '../hardening/support.js';
import { FakeWorkloadApi, svidMessage } from '../spiffe/fake-workload-api.js';
import { waitFor } from '../lifecycle/support.js';
import { createCa, spiffeBundleJson, workloadSvid, type CertAuthority } from '../support/pki.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const PAYMENTS = 'spiffe://partner.example/ns/payments/sa/api';
const ENDPOINT_ID = 'spiffe://cluster.local/ns/spire/sa/bundle-endpoint';
/** requests per batch: on fresh connections, handed to the two workers in turn */
const SPREAD = 8;

interface Domain {
  root: CertAuthority;
  inter: CertAuthority;
}

async function domain(td: string): Promise<Domain> {
  const root = await createCa(`${td} root`, { uris: [`spiffe://${td}`] });
  return { root, inter: await createCa(`${td} intermediate`, { issuer: root, uris: [`spiffe://${td}`] }) };
}

async function chainOf(d: Domain, id: string): Promise<string> {
  return (await workloadSvid(d.inter, id)).certPem + d.inter.certPem;
}

describe('serve --workers 2 with trust bundles', () => {
  let dir: string;
  let serve: ServeProcess;
  let local: Domain;
  let partner: Domain;
  let localFile: string;
  let endpoint: https.Server;
  let endpointBody: string;
  let fetches = 0;
  let batch = 0;

  /** One sideband request per fresh connection, tagged; resolves to the statuses and which workers answered. */
  async function spread(pem: string): Promise<{ statuses: number[]; workers: Set<number> }> {
    const tag = `batch-${++batch}`;
    const statuses = await Promise.all(Array.from({ length: SPREAD }, (_, i) => sideband(pem, `${tag}-${i}`)));
    const mine = () => serve.lines.filter((l) => l.msg === 'decision' && String(l.x_request_id).startsWith(`${tag}-`));
    await waitFor(() => mine().length === SPREAD, 10_000, 'every decision logged');
    return { statuses, workers: new Set(mine().map((l) => l.worker as number)) };
  }

  function sideband(pem: string, requestId: string): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: '127.0.0.1',
          port: serve.httpPort,
          method: 'POST',
          path: '/v1/sideband',
          agent: false,
          headers: { 'content-type': 'application/x-pem-file', 'x-request-id': requestId },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', reject);
      req.end(pem);
    });
  }

  const readyz = async (): Promise<Record<string, any> & { code: number }> => {
    const res = await fetch(`http://127.0.0.1:${serve.httpPort}/readyz`);
    return { ...((await res.json()) as Record<string, any>), code: res.status };
  };

  function replace(path: string, text: string): void {
    writeFileSync(`${path}.tmp`, text);
    renameSync(`${path}.tmp`, path);
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egress-authz-worker-bundles-'));
    local = await domain('cluster.local');
    partner = await domain('partner.example');
    localFile = join(dir, 'cluster.local.pem');
    writeFileSync(localFile, local.root.certPem);
    // partner.example's bundle comes from its SPIFFE bundle endpoint only (https_spiffe, authenticated
    // with cluster.local's bundle); an hour's refresh hint: no poll during the test, only the first fetch.
    const serverCert = await workloadSvid(local.root, ENDPOINT_ID);
    endpointBody = await spiffeBundleJson([partner.root], { refreshHint: 3600 });
    endpoint = https.createServer({ cert: serverCert.certPem, key: serverCert.keyPem }, (_req, res) => {
      fetches++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(endpointBody);
    });
    await new Promise<void>((r) => endpoint.listen(0, '127.0.0.1', r));
    const url = `https://127.0.0.1:${(endpoint.address() as AddressInfo).port}/bundle.json`;
    serve = await spawnServe([
      '--workers',
      '2',
      '--trust-bundle',
      `cluster.local=${localFile}`,
      '--trust-bundle-url',
      `partner.example=${url},spiffe=${ENDPOINT_ID}`,
      '--policy-poll-interval',
      '200ms',
      '--shutdown-grace',
      '2s',
    ]);
    await waitFor(async () => (await readyz()).code === 200, 20_000, 'both workers ready');
    await waitFor(
      () => serve.lines.some((l) => l.msg === 'trust bundle updated' && l.trust_domain === 'partner.example'),
      10_000,
      'the first fetch of the bundle endpoint',
    );
  }, 60_000);

  afterAll(async () => {
    if (serve && serve.proc.exitCode === null) {
      serve.proc.kill('SIGTERM');
      await serve.exited;
    }
    endpoint?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('fetches the bundle endpoint once for the whole service, and every worker verifies against it', async () => {
    // Time enough for a second process's first fetch to arrive, if there were one.
    await new Promise((r) => setTimeout(r, 1500));
    expect(fetches).toBe(1);
    const updated = serve.lines.filter((l) => l.msg === 'trust bundle updated');
    // One line per trust domain, from the primary (a worker's line carries `worker`).
    expect(updated.map((l) => l.trust_domain).sort()).toEqual(['cluster.local', 'partner.example']);
    expect(updated.every((l) => l.worker === undefined)).toBe(true);
    const partnerAnswers = await spread(await chainOf(partner, PAYMENTS));
    expect(partnerAnswers.statuses).toEqual(Array(SPREAD).fill(200));
    expect(partnerAnswers.workers.size).toBe(2);
    const localAnswers = await spread(await chainOf(local, BOOKINFO));
    expect(localAnswers.statuses).toEqual(Array(SPREAD).fill(200));
    expect(localAnswers.workers.size).toBe(2);
    const ready = await readyz();
    expect(ready).toMatchObject({ status: 'ready', workers: { configured: 2, running: 2, ready: 2 } });
    expect(ready.trust_bundles).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ trust_domain: 'cluster.local', ok: true }),
        expect.objectContaining({ trust_domain: 'partner.example', ok: true }),
      ]),
    );
  });

  it("a replacement worker starts with the primary's current bundles, not a fetch of its own", async () => {
    // The endpoint now publishes another root; the service holds the first one until its next poll (an hour).
    const next = await domain('partner.example');
    endpointBody = await spiffeBundleJson([next.root], { refreshHint: 3600 });
    const pids = () => childPids(serve.proc.pid!);
    const before = pids();
    expect(before).toHaveLength(2);
    process.kill(before[0]!, 'SIGKILL');
    await waitFor(
      () => serve.lines.some((l) => l.msg === 'worker died; not ready until its replacement serves'),
      10_000,
      'the death to be seen',
    );
    await waitFor(
      async () => {
        const r = await readyz().catch(() => undefined);
        return r?.code === 200 && r.workers?.running === 2;
      },
      30_000,
      'ready again with the replacement',
    );
    expect(pids()).toHaveLength(2);
    expect(fetches).toBe(1);
    const held = await spread(await chainOf(partner, PAYMENTS));
    expect(held.statuses).toEqual(Array(SPREAD).fill(200));
    expect(held.workers.size).toBe(2);
    expect((await spread(await chainOf(next, PAYMENTS))).statuses).toEqual(Array(SPREAD).fill(403));
  });

  it('a bundle file change is reported once every worker verifies against it: no worker is behind', async () => {
    const oldChain = await chainOf(local, BOOKINFO);
    const next = await domain('cluster.local');
    const newChain = await chainOf(next, BOOKINFO);
    local = next;
    const served = () => serve.lines.filter((l) => l.msg === 'trust bundles served by every worker');
    const reported = served().length;
    replace(localFile, next.root.certPem);
    await waitFor(() => served().length > reported, 15_000, 'the new bundle served by every worker');
    // Reported means verified against everywhere: no polling from here on.
    const after = await spread(newChain);
    expect(after.statuses).toEqual(Array(SPREAD).fill(200));
    expect(after.workers.size).toBe(2);
    expect((await spread(oldChain)).statuses).toEqual(Array(SPREAD).fill(403));
    const updates = serve.lines.filter((l) => l.msg === 'trust bundle updated' && l.trust_domain === 'cluster.local');
    expect(updates).toHaveLength(2); // at start, and now: read by the primary alone
    expect(updates.every((l) => l.worker === undefined)).toBe(true);
    expect(served().at(-1)).toMatchObject({ workers: 2 });
    expect(await readyz()).toMatchObject({ status: 'ready', workers: { ready: 2 } });
  });

  it('a refresh that fails keeps the previous bundle in every worker; /readyz shows the failure', async () => {
    const current = await readyz();
    const localStatus = current.trust_bundles.find((s: { trust_domain: string }) => s.trust_domain === 'cluster.local');
    expect(localStatus).toMatchObject({ ok: true });
    const failed = () =>
      serve.lines.filter((l) => l.msg === 'trust bundle refresh failed; keeping the previous bundle');
    replace(localFile, 'garbage');
    await waitFor(() => failed().length > 0, 15_000, 'the refresh failure');
    // Logged once, by the primary: the workers read no file.
    await new Promise((r) => setTimeout(r, 500));
    expect(failed()).toHaveLength(1);
    expect(failed()[0]!.worker).toBeUndefined();
    await waitFor(
      async () =>
        (await readyz()).trust_bundles?.some(
          (s: { trust_domain: string; ok: boolean }) => s.trust_domain === 'cluster.local' && !s.ok,
        ),
      5_000,
      '/readyz to show the failure',
    );
    const r = await readyz();
    expect(r).toMatchObject({ status: 'ready', workers: { ready: 2 } });
    expect(r.trust_bundles).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          trust_domain: 'cluster.local',
          ok: false,
          error: expect.stringContaining('no CERTIFICATE'),
        }),
      ]),
    );
    // The bundle of the last good file still verifies, in both workers.
    const kept = await spread(await chainOf(local, BOOKINFO));
    expect(kept.statuses).toEqual(Array(SPREAD).fill(200));
    expect(kept.workers.size).toBe(2);
  });
});

describe('serve --workers 2 with --spiffe-socket: the Workload API bundles go through the primary too', () => {
  let dir: string;
  let pki: MtlsPki;
  let agent: FakeWorkloadApi;
  let serve: ServeProcess;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egress-authz-worker-spiffe-'));
    pki = await makeMtlsPki();
    agent = new FakeWorkloadApi(join(dir, 'agent.sock'));
    await agent.start();
    agent.pushSvids({ svids: [svidMessage(SERVER_ID, pki.server, [pki.ca])] });
    serve = await spawnServe([
      '--workers',
      '2',
      '--spiffe-socket',
      `unix://${agent.socketPath}`,
      '--allowed-caller',
      BIGIP_ID,
      '--check-deadline',
      '5s',
    ]);
  }, 60_000);

  afterAll(async () => {
    await serve?.stop();
    agent.stop();
    pki.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a bundle the agent pushes is reported once every worker verifies sideband chains against it', async () => {
    const nextCa = await createCa('Mesh CA 2');
    const chain = (await workloadSvid(nextCa, BOOKINFO)).certPem;
    const ask = async () => {
      const from = serve.lines.length;
      const statuses = [];
      // one connection each: the primary hands them to the workers in turn
      for (let i = 0; i < SPREAD; i++)
        statuses.push(
          (await httpsRequest(serve.httpPort, pki, pki.bigip, { method: 'POST', path: '/v1/sideband', body: chain }))
            .status,
        );
      const mine = () => serve.lines.slice(from).filter((l) => l.msg === 'decision');
      await waitFor(() => mine().length === SPREAD, 10_000, 'every decision logged');
      return { statuses, workers: new Set(mine().map((l) => l.worker as number)) };
    };
    const before = await ask();
    expect(before.statuses).toEqual(Array(SPREAD).fill(403));
    const served = () => serve.lines.filter((l) => l.msg === 'trust bundles served by every worker');
    const reported = served().length;
    agent.pushSvids({ svids: [svidMessage(SERVER_ID, pki.server, [pki.ca, nextCa])] });
    await waitFor(() => served().length > reported, 15_000, 'the new bundle served by every worker');
    const after = await ask();
    expect(after.statuses).toEqual(Array(SPREAD).fill(200));
    expect(after.workers.size).toBe(2);
  });
});
