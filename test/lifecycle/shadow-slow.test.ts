// Issue 14, finding 5: the shadow policy must never touch a live answer. A shadow costing 100 ms or more
// per evaluation (a rule quadratic in its data) beside a fast live policy, under the shipped heap
// bound and the default 200 ms check deadline: live Checks stay fast and allowed, the shadow is still
// compared off the serving thread. A shadow file that cannot be loaded does not stop `serve`.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnServe, type ServeProcess } from '../hardening/support.js';
import { quadraticBundle } from '../support/hostile-bundles.js';
import { check, checkClient, checkRequest } from '../support/service.js';
import { BOOKINFO, metricsText, sample, snatPool } from './support.js';

const DEFAULT_BUNDLE = join(import.meta.dirname, '..', '..', 'dist', 'policy', 'bundle.tar.gz');
const HEAP = { nodeArgs: ['--max-old-space-size=128'] };

let root: string;
const children: ServeProcess[] = [];

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'egress-authz-shadow-slow-'));
});
afterAll(async () => {
  await Promise.all(children.map((c) => c.stop()));
  rmSync(root, { recursive: true, force: true });
});

describe('shadow policy off the serving thread', () => {
  it('a shadow far slower than the live policy: every live Check is answered in time, and still compared', async () => {
    const slow = join(root, 'slow.tar.gz');
    writeFileSync(slow, await quadraticBundle(root, 'slow', 1200, 'slow-shadow'));
    // A deadline of 2 s: what is measured is latency; under the old code every answer waited for the shadow.
    const serve = await spawnServe(
      ['--policy', DEFAULT_BUNDLE, '--shadow-policy', slow, '--check-deadline', '2s'],
      HEAP,
    );
    children.push(serve);
    const client = checkClient(serve.grpcPort);
    const latencies: number[] = [];
    try {
      for (let i = 0; i < 30; i++) {
        // distinct destinations: the shadow's remembered answers cannot hide its cost
        const t0 = performance.now();
        const res = await check(client, checkRequest({ principal: BOOKINFO, host: `h${i}.example.com:443` }));
        latencies.push(performance.now() - t0);
        expect(res.status.code).toBe(0);
        expect(snatPool(res)).toBe('bookinfo_snat');
      }
    } finally {
      client.close();
    }
    const sorted = [...latencies].sort((a, b) => a - b);
    const p50 = sorted[15]!;
    const decisions = serve.lines.filter((l) => l.msg === 'decision');
    console.log(`slow shadow: 30 sequential checks, p50 ${p50.toFixed(0)} ms, max ${sorted.at(-1)!.toFixed(0)} ms`);
    // The old code evaluated the shadow before the answer was written: every answer came after it
    // (p50 1,063 ms with this shadow). The bound leaves room for a busy 2-core machine.
    expect(p50).toBeLessThan(500);
    expect(decisions.filter((d) => d.allow !== true)).toEqual([]);
    // The comparisons are asynchronous: the first ones arrive a few hundred ms each.
    let compared = 0;
    const started = performance.now();
    while (compared < 1 && performance.now() - started < 60_000) {
      compared =
        sample(await metricsText(serve.httpPort), 'egress_authz_shadow_evaluations_total', 'result="compared"') ?? 0;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(compared).toBeGreaterThan(0);
    // …and the shadow really was far slower than the live answers (else this test proves nothing). Not a
    // fixed bound: on a quiet machine this shadow takes ~100 ms, under load several times that; what
    // matters is that answers waiting for it would have been that much slower.
    const text = await metricsText(serve.httpPort);
    const sum = sample(text, 'egress_authz_policy_eval_seconds_sum', 'policy="shadow"')!;
    const count = sample(text, 'egress_authz_policy_eval_seconds_count', 'policy="shadow"')!;
    console.log(`slow shadow: ${count} shadow evaluations compared, mean ${((sum / count) * 1000).toFixed(0)} ms`);
    expect(sum / count).toBeGreaterThan(0.05);
    expect(sum / count).toBeGreaterThan((10 * p50) / 1000);
  }, 90_000);

  it('a shadow file that cannot be loaded: serve starts, ready, answering; /readyz names the shadow failure', async () => {
    const garbage = join(root, 'garbage.tar.gz');
    writeFileSync(garbage, 'not a bundle');
    const serve = await spawnServe(['--policy', DEFAULT_BUNDLE, '--shadow-policy', garbage], HEAP);
    children.push(serve);
    const readyz = await fetch(`http://127.0.0.1:${serve.httpPort}/readyz`);
    expect(readyz.status).toBe(200);
    expect(await readyz.json()).toMatchObject({
      shadow_policy_revision: '',
      shadow_policy_last_reload: { result: 'failure', error: expect.stringMatching(/not a gzip/) },
    });
    const client = checkClient(serve.grpcPort);
    try {
      expect((await check(client, checkRequest({ principal: BOOKINFO }))).status.code).toBe(0);
    } finally {
      client.close();
    }
    expect(serve.lines.some((l) => l.msg?.startsWith('no shadow policy yet'))).toBe(true);
  });
});
