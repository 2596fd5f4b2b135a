// Hot reload under load: Checks keep flowing over real gRPC while the bundle on disk is swapped between
// two versions with different SNAT pools. No check may fail, every answer must come from one of the two
// versions, the new one must win within a bound, and after it has won the old one never answers again.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkLoop,
  ConfigMapDir,
  replaceFile,
  startStoreService,
  variantBundle,
  waitFor,
  type LoopResult,
} from './support.js';

const POOL = { a: 'tenant_pool_a', b: 'tenant_pool_b' } as const;
/** generous for a loaded 2-core CI machine; the measured figure is printed */
const SWAP_BOUND_MS = 3000;

let root: string;
let bundles: { a: Buffer; b: Buffer };

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'egress-authz-swap-'));
  const [a, b] = await Promise.all([
    variantBundle(root, 'a', { pool: POOL.a, revision: 'rev-a' }),
    variantBundle(root, 'b', { pool: POOL.b, revision: 'rev-b' }),
  ]);
  bundles = { a, b };
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

interface Swap {
  pool: string;
  /** when the new version was put on disk */
  startedAt: number;
  /** when the first answer from the new version arrived */
  wonAt: number;
}

interface SwapReport {
  latencies: number[];
  swaps: Swap[];
  results: LoopResult[];
}

/** Runs the load loop while `swap(version)` is called `count` times, alternating b, a, b, … */
async function swapUnderLoad(
  port: number,
  count: number,
  swap: (v: 'a' | 'b', i: number) => void,
): Promise<SwapReport> {
  const loop = checkLoop(port);
  const swaps: Swap[] = [];
  try {
    await waitFor(() => loop.results.some((r) => r.pool === POOL.a), 5000, 'the first answer from version a');
    let current: 'a' | 'b' = 'a';
    for (let i = 0; i < count; i++) {
      const next: 'a' | 'b' = current === 'a' ? 'b' : 'a';
      const t0 = performance.now();
      swap(next, i);
      await waitFor(
        () => loop.results.some((r) => r.receivedAt >= t0 && r.pool === POOL[next]),
        SWAP_BOUND_MS,
        `swap ${i + 1} to ${next}`,
      );
      const wonAt = Math.min(
        ...loop.results.filter((r) => r.receivedAt >= t0 && r.pool === POOL[next]).map((r) => r.receivedAt),
      );
      swaps.push({ pool: POOL[next], startedAt: t0, wonAt });
      // Let some checks run on the new version before the next swap.
      const seen = loop.results.length;
      await waitFor(() => loop.results.length >= seen + 20, 2000, 'checks after the swap');
      current = next;
    }
  } finally {
    await loop.stop();
  }
  return { latencies: swaps.map((s) => s.wonAt - s.startedAt), swaps, results: loop.results };
}

/** The swap is atomic: a check sent after the new version first answered never gets the old one back. */
function assertNoFlapping({ swaps, results }: SwapReport): void {
  swaps.forEach((swap, i) => {
    const until = swaps[i + 1]?.startedAt ?? Infinity;
    const stale = results.filter((r) => r.sentAt > swap.wonAt && r.sentAt < until && r.pool !== swap.pool);
    expect(stale, `checks answered by the old version after ${swap.pool} had won (swap ${i + 1})`).toEqual([]);
  });
}

function summary(name: string, latencies: number[], checks: number): string {
  const sorted = [...latencies].sort((x, y) => x - y);
  const p50 = sorted[Math.floor(sorted.length / 2)]!;
  return `${name}: ${latencies.length} swaps, ${checks} checks, swap-to-first-new-answer p50 ${p50.toFixed(0)} ms, max ${sorted.at(-1)!.toFixed(0)} ms`;
}

describe('hot reload under load', () => {
  it('bundle file replaced by rename 22 times: no failed check, only the two pools, the new one wins fast', async () => {
    const path = join(root, 'live', 'bundle.tar.gz');
    mkdirSync(join(root, 'live'));
    writeFileSync(path, bundles.a);
    const s = await startStoreService(path);
    try {
      const report = await swapUnderLoad(s.svc.grpcPort, 22, (v, i) => replaceFile(path, bundles[v], String(i)));
      const { latencies, results } = report;
      console.log(summary('file rename', latencies, results.length));
      expect(results.filter((r) => r.error !== undefined)).toEqual([]);
      expect(new Set(results.map((r) => r.pool))).toEqual(new Set([POOL.a, POOL.b]));
      assertNoFlapping(report);
      expect(Math.max(...latencies)).toBeLessThan(SWAP_BOUND_MS);
      // The revision in each decision log line is the revision of the policy that decided it.
      for (const d of s.svc.decisions) expect(d.snat_pool).toBe(d.policy_revision === 'rev-a' ? POOL.a : POOL.b);
      expect(s.store.current!.revision).toBe('rev-a'); // 22 swaps from a: back to a
      const reloads = (await s.metrics.registry.getSingleMetricAsString('egress_authz_policy_reloads_total')).split(
        '\n',
      );
      expect(reloads).toContain('egress_authz_policy_reloads_total{policy="live",result="success"} 22');
      expect(reloads).toContain('egress_authz_policy_reloads_total{policy="live",result="failure"} 0');
    } finally {
      await s.close();
    }
  }, 90_000); // 22 candidates, each tried in a fresh sandbox thread first: about 1 s each on a busy machine

  it('Kubernetes ConfigMap update (..data symlink swap) 6 times: the watcher on the folder sees each one', async () => {
    const cm = new ConfigMapDir(join(root, 'configmap'));
    cm.update(bundles.a);
    const s = await startStoreService(cm.path, { pollMs: 60_000 }); // the watch alone, no stat poll
    try {
      const report = await swapUnderLoad(s.svc.grpcPort, 6, (v) => cm.update(bundles[v]));
      const { latencies, results } = report;
      console.log(summary('configmap swap', latencies, results.length));
      expect(results.filter((r) => r.error !== undefined)).toEqual([]);
      expect(new Set(results.map((r) => r.pool))).toEqual(new Set([POOL.a, POOL.b]));
      assertNoFlapping(report);
      expect(s.store.lastReload?.trigger).toBe('watch');
    } finally {
      await s.close();
    }
  });

  it('the stat poll catches a change the watch did not report', async () => {
    const dir = join(root, 'polled');
    mkdirSync(dir);
    const path = join(dir, 'bundle.tar.gz');
    writeFileSync(path, bundles.a);
    const s = await startStoreService(path, { pollMs: 100 });
    try {
      // Only the poll's triggers reload: as if the watch had been lost.
      s.store.stop();
      const stop = s.store.source.watch((trigger) => void (trigger === 'poll' && s.store.reload(trigger)));
      // The watch's first signature is an asynchronous stat: a file replaced before it settles is what
      // the poll compares against, so it would see no change (this test's flake under load). Let it
      // settle first; a real change that early is the fs.watch's to report.
      await new Promise((resolve) => setTimeout(resolve, 500));
      replaceFile(path, bundles.b, 'p');
      // What is tested is who triggers the reload, not how fast: a candidate's thread start, load and
      // memory image take seconds on a busy 2-core machine (3 s flaked there).
      await waitFor(() => s.store.current?.revision === 'rev-b', 20_000, 'the poll to reload');
      stop();
      expect(s.store.lastReload?.trigger).toBe('poll');
    } finally {
      await s.close();
    }
  });
});
