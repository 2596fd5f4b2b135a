// `serve --workers 2` as operators run it (the built bin, a child process, real gRPC and HTTP clients):
// both workers answer on the shared ports and decide alike; a reload reaches both before it is reported;
// a refused bundle is refused once, for all; /metrics is one view adding up to the Checks answered; a
// killed worker is replaced and the service is not ready meanwhile; log lines stay whole JSON lines.
// (Draining on SIGTERM with workers: test/hardening/shutdown.test.ts runs with 1 and 2 workers.)
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { childPids, spawnServe, type ServeProcess } from '../hardening/support.js';
import { replaceFile, snatPool, variantBundle, waitFor } from '../lifecycle/support.js';
import { check, checkClient, checkRequest, type CheckClient } from '../support/service.js';
import { createCa, workloadSvid } from '../support/pki.js';
import { DEFAULT_CHAIN_CACHE_BYTES } from '../../src/identity/chain-verify.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const NETTOOLS = 'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools';

/** GET on a fresh connection each time: the primary hands each connection to the next worker. */
function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false, timeout: 2000 }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => void (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('timeout', function (this: http.ClientRequest) {
        this.destroy(new Error('timeout'));
      })
      .on('error', reject);
  });
}

/** POST /v1/sideband on a fresh connection each time, so the primary spreads them over the workers. */
function sideband(port: number, pem: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        path: '/v1/sideband',
        method: 'POST',
        agent: false,
        timeout: 2000,
        headers: { 'content-type': 'application/x-pem-file' },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout'))).on('error', reject);
    req.end(pem);
  });
}

/** Sum of every sample of a metric (all label sets). */
function total(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n'))
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.split(' ').pop());
  return sum;
}

function series(text: string, name: string): string[] {
  return text.split('\n').filter((l) => l.startsWith(`${name}{`));
}

describe('serve --workers 2', () => {
  let root: string;
  let serve: ServeProcess;
  let bundleFile: string;
  let v2: Buffer;
  let clients: CheckClient[] = [];
  let answered = 0;
  let allowed = 0;
  let chain: string;

  /** One Check on each of many connections (so both workers get some); returns the answers. */
  async function spread(principal: string, opts: { host?: string; tag?: string } = {}) {
    const answers = await Promise.all(
      clients.map((c, i) =>
        check(
          c,
          checkRequest({
            principal,
            ...(opts.host ? { host: opts.host } : {}),
            headers: { 'x-request-id': `${opts.tag ?? 'req'}-${i}` },
          }),
        ),
      ),
    );
    answered += answers.length;
    allowed += answers.filter((a) => a.status.code === 0).length;
    return answers;
  }
  const decisions = () => serve.lines.filter((l) => l.msg === 'decision');
  const readyz = async (): Promise<Record<string, any> & { code: number }> => {
    const r = await get(serve.httpPort, '/readyz');
    return { ...(JSON.parse(r.body) as Record<string, any>), code: r.status };
  };

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'egress-authz-workers-'));
    const v1 = await variantBundle(root, 'v1', { pool: 'pool_v1', revision: 'w-v1' });
    v2 = await variantBundle(root, 'v2', { pool: 'pool_v2', revision: 'w-v2' });
    bundleFile = join(root, 'bundle.tar.gz');
    writeFileSync(bundleFile, v1);
    // Trust bundles: each worker verifies sideband chains, through its own chain-verification cache.
    const ca = await createCa('workers root', { uris: ['spiffe://cluster.local'] });
    const inter = await createCa('workers intermediate', { issuer: ca, uris: ['spiffe://cluster.local'] });
    writeFileSync(join(root, 'cluster-local.pem'), ca.certPem);
    chain = (await workloadSvid(inter, BOOKINFO)).certPem + inter.certPem;
    serve = await spawnServe([
      '--trust-bundle',
      `cluster.local=${join(root, 'cluster-local.pem')}`,
      '--policy',
      bundleFile,
      '--workers',
      '2',
      '--policy-poll-interval',
      '200ms',
      '--shutdown-grace',
      '2s',
    ]);
    await waitFor(async () => (await readyz()).code === 200, 20_000, 'both workers ready');
    clients = Array.from({ length: 8 }, (_, i) =>
      checkClient(serve.grpcPort, grpc.credentials.createInsecure(), { 'test.channel': i }),
    );
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    if (serve && serve.proc.exitCode === null) {
      serve.proc.kill('SIGTERM');
      await serve.exited;
    }
    rmSync(root, { recursive: true, force: true });
  });

  it('answers on the shared ports from both workers, each deciding as one process does', async () => {
    const startup = serve.lines.find((l) => l.msg === 'egress-authz serving')!;
    expect(startup).toMatchObject({ workers: 2, policy_revision: 'w-v1' });
    // Each worker's own line arrives through its pipe, maybe after the primary's.
    await waitFor(() => serve.lines.filter((l) => l.msg === 'worker serving').length === 2, 5_000, 'both workers');
    expect(serve.lines.filter((l) => l.msg === 'worker serving').map((l) => l.grpc_port)).toEqual([
      serve.grpcPort,
      serve.grpcPort,
    ]);
    // Warm-up: a worker's first evaluations run cold code, and on a busy machine may overrun the
    // evaluation budget (a deny, as it must be); what is asserted comes after.
    for (let round = 0; round < 3; round++) await spread(BOOKINFO);
    for (let round = 0; round < 3; round++) {
      for (const res of await spread(BOOKINFO)) {
        expect(res.status.code).toBe(0);
        expect(snatPool(res)).toBe('pool_v1');
      }
      for (const res of await spread(NETTOOLS)) expect(res.status.code).toBe(grpc.status.PERMISSION_DENIED);
    }
    await waitFor(() => decisions().length === answered, 10_000, 'every decision logged');
    expect(new Set(decisions().map((d) => d.worker))).toEqual(new Set([1, 2]));
    expect(new Set(decisions().map((d) => d.policy_revision))).toEqual(new Set(['w-v1']));
    const ready = await readyz();
    expect(ready).toMatchObject({
      status: 'ready',
      policy_revision: 'w-v1',
      workers: { configured: 2, running: 2, ready: 2 },
    });
  });

  it('/metrics is one view: whichever worker answers, the counters add up to the Checks answered', async () => {
    for (let i = 0; i < 4; i++) {
      const { status, body } = await get(serve.httpPort, '/metrics');
      expect(status).toBe(200);
      expect(total(body, 'egress_authz_checks_total')).toBe(answered);
      expect(total(body, 'grpc_server_handling_seconds_count')).toBe(answered);
      expect(total(body, 'egress_authz_checks_total{caller="envoy",decision="allow",reason_class="allowed"}')).toBe(
        allowed,
      );
      expect(series(body, 'egress_authz_policy_revision_info')).toEqual([
        'egress_authz_policy_revision_info{policy="live",revision="w-v1"} 1',
      ]);
      expect(series(body, 'egress_authz_workers')).toEqual(
        expect.arrayContaining(['egress_authz_workers{state="ready"} 2', 'egress_authz_workers{state="configured"} 2']),
      );
      // every worker's chain-verification cache, added up (the primary verifies nothing: no cache)
      expect(total(body, 'egress_authz_cache_max_bytes{cache="chain"}')).toBe(2 * DEFAULT_CHAIN_CACHE_BYTES);
      // process metrics are the sum over the three processes (primary and two workers)
      expect(total(body, 'process_resident_memory_bytes')).toBeGreaterThan(3 * 20 * 1024 * 1024);
    }
  });

  it('/metrics adds up the chain-verification caches of every worker', async () => {
    const sent = 8;
    for (let i = 0; i < sent; i++) expect(await sideband(serve.httpPort, chain)).toBe(200);
    answered += sent; // each is a logged decision too
    const { body } = await get(serve.httpPort, '/metrics');
    const hits = total(body, 'egress_authz_cache_hits_total{cache="chain"}');
    const misses = total(body, 'egress_authz_cache_misses_total{cache="chain"}');
    expect(hits + misses).toBe(sent);
    // one verification per worker that answered, every other one a hit
    expect(misses).toBeGreaterThanOrEqual(1);
    expect(misses).toBeLessThanOrEqual(2);
    expect(total(body, 'egress_authz_cache_bytes{cache="chain"}')).toBeGreaterThan(0);
  });

  it('a reload is validated once and reported only when every worker serves it', async () => {
    replaceFile(bundleFile, v2, 'v2');
    await waitFor(
      () => serve.lines.some((l) => l.msg === 'policy reloaded' && l.policy_revision === 'w-v2'),
      15_000,
      'the new bundle to be picked up',
    );
    // Reported means served everywhere: no wait from here on.
    for (const res of await spread(BOOKINFO, { tag: 'after-reload' })) expect(snatPool(res)).toBe('pool_v2');
    const ready = await readyz();
    expect(ready).toMatchObject({ status: 'ready', policy_revision: 'w-v2', workers: { ready: 2 } });
    const { body } = await get(serve.httpPort, '/metrics');
    expect(series(body, 'egress_authz_policy_revision_info')).toEqual([
      'egress_authz_policy_revision_info{policy="live",revision="w-v2"} 1',
    ]);
    expect(total(body, 'egress_authz_policy_reloads_total{policy="live",result="success"}')).toBe(1);
    await waitFor(() => decisions().length === answered, 10_000, 'every decision logged');
    const after = decisions().filter((d) => String(d.x_request_id).startsWith('after-reload'));
    expect(new Set(after.map((d) => d.policy_revision))).toEqual(new Set(['w-v2']));
    expect(new Set(after.map((d) => d.worker)).size).toBe(2);
  });

  it('a refused bundle is refused once, for every worker: all keep serving the last good one', async () => {
    replaceFile(bundleFile, Buffer.from('not a bundle'), 'bad');
    await waitFor(
      () => serve.lines.some((l) => l.msg === 'policy refused; the last good policy keeps serving'),
      15_000,
      'the refusal',
    );
    const { body } = await get(serve.httpPort, '/metrics');
    expect(total(body, 'egress_authz_policy_reloads_total{policy="live",result="failure"}')).toBe(1);
    expect(series(body, 'egress_authz_policy_revision_info')).toEqual([
      'egress_authz_policy_revision_info{policy="live",revision="w-v2"} 1',
    ]);
    await waitFor(async () => (await readyz()).policy_last_reload?.result === 'failure', 5_000, 'readyz to show it');
    expect(await readyz()).toMatchObject({ status: 'ready', policy_revision: 'w-v2' });
    for (const res of await spread(BOOKINFO)) expect(snatPool(res)).toBe('pool_v2');
  });

  it('a killed worker is replaced; the service says not ready until the replacement serves', async () => {
    const pids = () => childPids(serve.proc.pid!);
    const before = pids();
    expect(before).toHaveLength(2);
    // Poll readiness across the kill: a surviving worker answers, and must say 503 while one is missing.
    // The probes overlap (one starts every 20 ms, each on its own connection): a connection the primary
    // accepts in the few ms between the worker's death and its 'exit' event is handed by node:cluster to
    // the dead worker and never answered. A poller waiting for that probe (2 s timeout) would be blind
    // longer than the whole not-ready window (~1.5 s: the restart delay and the replacement's start).
    const killedAt = { t: 0 };
    const seen: { ms: number; code: number; running?: number }[] = [];
    let unanswered = 0;
    let polling = true;
    const inFlight = new Set<Promise<void>>();
    const poller = (async () => {
      while (polling) {
        if (inFlight.size < 10) {
          const probe: Promise<void> = readyz()
            .then(
              (r) => void seen.push({ ms: Date.now() - killedAt.t, code: r.code, running: r.workers?.running }),
              () => void unanswered++,
            )
            .finally(() => inFlight.delete(probe));
          inFlight.add(probe);
        }
        await new Promise((res) => setTimeout(res, 20));
      }
      await Promise.all(inFlight);
    })();
    await new Promise((res) => setTimeout(res, 100));
    killedAt.t = Date.now();
    process.kill(before[0]!, 'SIGKILL');
    await waitFor(() => seen.some((s) => s.code === 503), 10_000, 'not ready while a worker is missing').catch(
      (err: Error) => {
        const lines = serve.lines.slice(-4).map((l) => `${l.time} ${l.msg}`);
        throw new Error(
          `${err.message} (killed at ${new Date(killedAt.t).toISOString()}; ${unanswered} probes unanswered; ` +
            `answers, ms after the kill: ${JSON.stringify(seen.filter((s) => s.ms > -100).slice(0, 20))}; ` +
            `last lines: ${JSON.stringify(lines)})`,
        );
      },
    );
    await waitFor(() => seen.at(-1)?.code === 200, 30_000, 'ready again with the replacement');
    polling = false;
    await poller;
    // Not ready while only one runs, and also while the replacement runs but does not serve yet.
    expect(seen.filter((s) => s.code === 503).some((s) => s.running === 1)).toBe(true);
    expect(seen.filter((s) => s.running === 1).every((s) => s.code === 503)).toBe(true);
    const died = serve.lines.find((l) => l.msg === 'worker died; not ready until its replacement serves')!;
    expect(died).toMatchObject({ pid: before[0], signal: 'SIGKILL' });
    const after = pids();
    expect(after).toHaveLength(2);
    expect(after).toContain(before[1]);
    expect(after).not.toContain(before[0]);
    // The replacement serves the current policy, from the primary (the file on disk is the refused one).
    const fresh = clients.map((_, i) =>
      checkClient(serve.grpcPort, grpc.credentials.createInsecure(), { 'test.channel': 100 + i }),
    );
    const answers = await Promise.all(fresh.map((c) => check(c, checkRequest({ principal: BOOKINFO }))));
    for (const c of fresh) c.close();
    for (const res of answers) expect(snatPool(res)).toBe('pool_v2');
    expect(await readyz()).toMatchObject({
      status: 'ready',
      policy_revision: 'w-v2',
      workers: { running: 2, ready: 2 },
    });
  });

  it('log lines stay whole JSON lines, even decision lines longer than a pipe write is atomic (4 KiB)', async () => {
    const host = `${'a'.repeat(60)}.`.repeat(100) + 'example.com:443';
    for (let i = 0; i < 5; i++) await spread(BOOKINFO, { host, tag: 'long' });
    await waitFor(
      () => decisions().filter((d) => String(d.x_request_id).startsWith('long')).length === 5 * clients.length,
      10_000,
      'the long lines',
    );
    serve.proc.kill('SIGTERM');
    expect((await serve.exited).code).toBe(0);
    expect(serve.unparsed).toEqual([]);
    const long = decisions().filter((d) => String(d.x_request_id).startsWith('long'));
    expect(JSON.stringify(long[0]).length).toBeGreaterThan(4096);
    expect(serve.lines.filter((l) => l.msg === 'worker stopped')).toHaveLength(2);
    expect(serve.lines.at(-1)).toMatchObject({ msg: 'stopped', worker_exit_codes: [0, 0] });
  });
});
