// `serve --policy http://…`: an OPA-style bundle server on loopback, polled with If-None-Match. A 304
// keeps the current policy without reloading; a new ETag brings the new bundle; a server error or a
// corrupt bundle is refused and the last good policy keeps answering.
import { createHash } from 'node:crypto';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { check, checkClient, checkRequest, type CheckClient } from '../support/service.js';
import {
  BOOKINFO,
  metricsText,
  nextReload,
  sample,
  snatPool,
  startStoreService,
  variantBundle,
  waitFor,
  type StoreService,
} from './support.js';

interface Served {
  status: number;
  bytes: Buffer;
  etag?: string;
}

describe('OPA bundle server source', () => {
  let root: string;
  let server: http.Server;
  let served: Served;
  const log: { ifNoneMatch: string | undefined; status: number }[] = [];
  let s: StoreService;
  let client: CheckClient;
  let bundles: { a: Buffer; b: Buffer };

  const etagOf = (b: Buffer) => `"${createHash('sha256').update(b).digest('hex').slice(0, 16)}"`;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'egress-authz-bundle-server-'));
    const [a, b] = await Promise.all([
      variantBundle(root, 'a', { pool: 'pool_a', revision: 'srv-a' }),
      variantBundle(root, 'b', { pool: 'pool_b', revision: 'srv-b' }),
    ]);
    bundles = { a, b };
    served = { status: 200, bytes: a, etag: etagOf(a) };
    server = http.createServer((req, res) => {
      const inm = req.headers['if-none-match'];
      if (served.status !== 200) {
        log.push({ ifNoneMatch: inm, status: served.status });
        res.writeHead(served.status).end('bundle server trouble\n');
      } else if (served.etag !== undefined && inm === served.etag) {
        log.push({ ifNoneMatch: inm, status: 304 });
        res.writeHead(304, { etag: served.etag }).end();
      } else {
        log.push({ ifNoneMatch: inm, status: 200 });
        res
          .writeHead(200, { 'content-type': 'application/gzip', ...(served.etag ? { etag: served.etag } : {}) })
          .end(served.bytes);
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/bundles/egress/bundle.tar.gz`;
    s = await startStoreService(url, { pollMs: 100 });
    client = checkClient(s.svc.grpcPort);
  });
  afterAll(async () => {
    client?.close();
    await s?.close();
    await new Promise((r) => server?.close(r));
    rmSync(root, { recursive: true, force: true });
  });

  const pool = async () => {
    const res = await check(client, checkRequest({ principal: BOOKINFO }));
    return res.status.code === 0 ? snatPool(res) : undefined;
  };
  const reloads = async (result: string) =>
    sample(await metricsText(s.svc.httpPort), 'egress_authz_policy_reloads_total', `policy="live",result="${result}"`);

  it('serves the bundle it downloaded; polls with If-None-Match and a 304 changes nothing', async () => {
    expect(s.store.current!.revision).toBe('srv-a');
    expect(await pool()).toBe('pool_a');
    const start = log.length;
    await waitFor(() => log.slice(start).filter((l) => l.status === 304).length >= 3, 3000, 'three 304 polls');
    expect(log.slice(start).every((l) => l.ifNoneMatch === etagOf(bundles.a))).toBe(true);
    expect(await reloads('success')).toBe(0);
    expect(await reloads('failure')).toBe(0);
  });

  it('a new ETag brings the new bundle', async () => {
    const reloaded = nextReload(s.store);
    served = { status: 200, bytes: bundles.b, etag: etagOf(bundles.b) };
    expect(await reloaded).toMatchObject({ result: 'success', revision: 'srv-b', trigger: 'poll' });
    expect(await pool()).toBe('pool_b');
  });

  it('a server error is a failed reload; the last good policy keeps answering', async () => {
    const reloaded = nextReload(s.store);
    served = { status: 503, bytes: Buffer.alloc(0) };
    expect(await reloaded).toMatchObject({ result: 'failure', revision: 'srv-b' });
    expect((await reloaded).error).toMatch(/HTTP 503/);
    expect(await pool()).toBe('pool_b');
    expect(await reloads('failure')).toBeGreaterThanOrEqual(1);
  });

  it('a corrupt bundle is refused once, and not downloaded again while its ETag stands', async () => {
    served = { status: 200, bytes: Buffer.from('corrupt'), etag: '"corrupt-1"' };
    // A poll answered 503 just before the switch may report after it: skip those.
    let outcome = await nextReload(s.store);
    while (/HTTP 503/.test(outcome.error ?? '')) outcome = await nextReload(s.store);
    expect(outcome.result).toBe('failure');
    expect(outcome.error).toMatch(/not a gzip/);
    const start = log.length;
    await waitFor(() => log.length >= start + 3, 3000, 'more polls');
    expect(log.slice(start).every((l) => l.status === 304)).toBe(true);
    expect(await pool()).toBe('pool_b');
  });

  it('a server without ETags: unchanged bytes are not reloaded', async () => {
    const reloaded = nextReload(s.store);
    served = { status: 200, bytes: bundles.a };
    expect(await reloaded).toMatchObject({ result: 'success', revision: 'srv-a' });
    const before = await reloads('success');
    const start = log.length;
    await waitFor(() => log.length >= start + 3, 3000, 'more polls');
    expect(await reloads('success')).toBe(before);
    expect(await pool()).toBe('pool_a');
  });
});
