// A bad policy must never become an outage or an open door: a corrupt bundle, Rego that does not
// compile, or data that fails the policy's own cases is refused, the last good policy keeps answering,
// the refusal is logged and counted, and /readyz stays ready with the serving revision.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { check, checkClient, checkRequest, type CheckClient } from '../support/service.js';
import {
  BOOKINFO,
  metricsText,
  nextReload,
  policyVariant,
  replaceFile,
  sample,
  snatPool,
  startStoreService,
  variantBundle,
  writeData,
  type StoreService,
} from './support.js';

let root: string;
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'egress-authz-refuse-'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

async function poolOf(client: CheckClient, principal = BOOKINFO): Promise<string | undefined> {
  const res = await check(client, checkRequest({ principal }));
  return res.status.code === 0 ? snatPool(res) : undefined;
}

async function readyz(port: number): Promise<{ status: number; body: Record<string, any> }> {
  const res = await fetch(`http://127.0.0.1:${port}/readyz`);
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function failures(s: StoreService): Promise<number | undefined> {
  return sample(
    await metricsText(s.svc.httpPort),
    'egress_authz_policy_reloads_total',
    'policy="live",result="failure"',
  );
}

describe('a refused bundle file', () => {
  let s: StoreService;
  let client: CheckClient;
  let path: string;
  let good: Buffer;

  beforeAll(async () => {
    good = await variantBundle(root, 'good', { pool: 'pool_good', revision: 'good-1' });
    mkdirSync(join(root, 'file'));
    path = join(root, 'file', 'bundle.tar.gz');
    writeFileSync(path, good);
    s = await startStoreService(path);
    client = checkClient(s.svc.grpcPort);
  });
  afterAll(async () => {
    client?.close();
    await s?.close();
  });

  it.each([
    ['random bytes', () => Buffer.from('this is not a gzip file at all'), /not a gzip/],
    ['a truncated bundle', () => good.subarray(0, Math.floor(good.length / 2)), /gzip|truncated|end-of-archive/],
    ['a gzip of garbage', () => gzipSync(Buffer.alloc(2048, 7)), /tar|checksum/],
  ])(
    '%s: refused, old decision keeps coming back, failure counted, /readyz still ready',
    async (_name, bytes, message) => {
      const before = (await failures(s)) ?? 0;
      const reloaded = nextReload(s.store);
      replaceFile(path, bytes(), 'bad');
      const outcome = await reloaded;
      expect(outcome.result).toBe('failure');
      expect(outcome.error).toMatch(message);
      expect(await poolOf(client)).toBe('pool_good');
      expect(await failures(s)).toBe(before + 1);
      const ready = await readyz(s.svc.httpPort);
      expect(ready.status).toBe(200);
      expect(ready.body).toMatchObject({
        status: 'ready',
        policy_revision: 'good-1',
        policy_last_reload: { result: 'failure' },
      });
      expect(
        s.storeLog.some(
          (l) => l['msg'] === 'policy refused; the last good policy keeps serving' && l['policy_revision'] === 'good-1',
        ),
      ).toBe(true);
    },
  );

  it('a good bundle after refused ones is taken', async () => {
    const next = await variantBundle(root, 'good2', { pool: 'pool_good_2', revision: 'good-2' });
    const reloaded = nextReload(s.store);
    replaceFile(path, next, 'good2');
    expect((await reloaded).result).toBe('success');
    expect(await poolOf(client)).toBe('pool_good_2');
    expect((await readyz(s.svc.httpPort)).body.policy_revision).toBe('good-2');
  });
});

describe('a refused policy folder (compiled on load, checked with its cases and Rego tests)', () => {
  let s: StoreService;
  let client: CheckClient;
  let dir: string;

  beforeAll(async () => {
    dir = policyVariant(root, 'folder', { withTests: true });
    s = await startStoreService(dir);
    client = checkClient(s.svc.grpcPort);
  });
  afterAll(async () => {
    client?.close();
    await s?.close();
  });

  it('Rego that does not compile is refused', async () => {
    const reloaded = nextReload(s.store);
    writeFileSync(join(dir, 'broken.rego'), 'package egress.authz\n\ndecision := {"allow": true if {\n');
    const outcome = await reloaded;
    expect(outcome.result).toBe('failure');
    expect(outcome.error).toMatch(/opa build failed/);
    expect(await poolOf(client)).toBe('bookinfo_snat');
    rmSync(join(dir, 'broken.rego'));
    await nextReload(s.store); // the folder is back to the serving version: reloaded, same decisions
    expect(await poolOf(client)).toBe('bookinfo_snat');
  });

  it('data that fails the cases is refused, naming the failing case', async () => {
    const reloaded = nextReload(s.store);
    writeData(dir, { pool: 'bookinfo_wrong_pool' });
    const outcome = await reloaded;
    expect(outcome.result).toBe('failure');
    expect(outcome.error).toMatch(/policy cases failed .*bookinfo workload is allowed through bookinfo_snat/);
    expect(await poolOf(client)).toBe('bookinfo_snat');
    expect(await failures(s)).toBeGreaterThanOrEqual(2);
  });

  it('a policy whose own Rego unit tests fail is refused', async () => {
    let reloaded = nextReload(s.store);
    writeData(dir, {});
    expect((await reloaded).result).toBe('success');
    reloaded = nextReload(s.store);
    writeFileSync(join(dir, 'new_rule_test.rego'), 'package egress.authz_test\n\ntest_the_new_rule if {\n\tfalse\n}\n');
    const outcome = await reloaded;
    expect(outcome.result).toBe('failure');
    expect(outcome.error).toMatch(/Rego unit tests failed.*test_the_new_rule/);
    expect(await poolOf(client)).toBe('bookinfo_snat');
  });
});
