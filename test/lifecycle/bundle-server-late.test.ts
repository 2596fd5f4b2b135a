// A bundle server that is down when the service starts: the service serves anyway, not ready and
// denying every check, and picks the policy up at the first poll that gets one (as OPA does).
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { openBundleSource } from '../../src/lifecycle/bundle-source.js';
import { ServiceMetrics } from '../../src/service/metrics.js';
import { PolicyStore, reloadStatus } from '../../src/lifecycle/policy-store.js';
import { check, checkClient, checkRequest, startTestService, type TestService } from '../support/service.js';
import { BOOKINFO, snatPool, variantBundle, waitFor } from './support.js';

describe('bundle server down at start', () => {
  const root = mkdtempSync(join(tmpdir(), 'egress-authz-late-bundle-'));
  let server: http.Server | undefined;
  let store: PolicyStore | undefined;
  let svc: TestService | undefined;
  afterAll(async () => {
    store?.stop();
    await svc?.close(500);
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    rmSync(root, { recursive: true, force: true });
  });

  it('starts not ready and denying, then serves the first bundle it can fetch', async () => {
    // a port nobody listens on yet: bind, note it, close
    const probe = http.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as AddressInfo).port;
    await new Promise((r) => probe.close(r));
    const url = `http://127.0.0.1:${port}/bundle.tar.gz`;

    const log = pino({ level: 'silent' });
    const metrics = new ServiceMetrics();
    await expect(PolicyStore.open(await openBundleSource(url, { pollMs: 100 }), { log, metrics })).rejects.toThrow();
    store = await PolicyStore.open(await openBundleSource(url, { pollMs: 100 }), { log, metrics, waitForFirst: true });
    expect(store.current).toBeUndefined();
    svc = await startTestService({ policies: store, metrics, readyDetail: () => reloadStatus(store!) });
    store.start();

    const ready = await fetch(`http://127.0.0.1:${svc.httpPort}/readyz`);
    expect(ready.status).toBe(503);
    expect(JSON.stringify(await ready.json())).toMatch(/failure/);
    const client = checkClient(svc.grpcPort);
    try {
      const denied = await check(client, checkRequest({ principal: BOOKINFO }));
      expect(denied.status.code).toBe(7);
      expect(denied.deniedResponse.body).toMatch(/no policy loaded/);

      const bundle = await variantBundle(root, 'late', { pool: 'late_snat', revision: 'late-1' });
      server = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/gzip' }).end(bundle));
      await new Promise<void>((r) => server!.listen(port, '127.0.0.1', r));

      await waitFor(() => store!.current !== undefined, 10_000, 'the first bundle');
      expect((await fetch(`http://127.0.0.1:${svc.httpPort}/readyz`)).status).toBe(200);
      const allowed = await check(client, checkRequest({ principal: BOOKINFO }));
      expect(allowed.status.code).toBe(0);
      expect(snatPool(allowed)).toBe('late_snat');
    } finally {
      client.close();
    }
  });
});
