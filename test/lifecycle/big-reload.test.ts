// A large legitimate bundle (40,000 tenants, 17 MiB of data.json, made at test time) reloaded into
// `serve` as shipped (a child, V8 heap bound 128 MiB) while Checks run: the event loop that answers
// them must not stall. It used to: after the sandbox accepted the candidate, the serving thread parsed
// the whole data.json again in OPA's Wasm JSON parser (4 s on an idle machine, 29 s on a loaded one),
// and metrics parsed it once more into a 60 MiB object. The serving thread now restores the memory
// image the sandbox thread captured (wasm-image.ts) in small steps.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnServe, type ServeProcess } from '../hardening/support.js';
import { buildWasmBundle } from '../../src/policy/opa-cli.js';
import { bigPolicyFolder, bigTenant } from '../support/big-data.js';
import { check, checkClient, checkRequest } from '../support/service.js';
import { checkLoop, metricsText, replaceFile, sample, snatPool, waitFor } from './support.js';

const DEFAULT_BUNDLE = join(import.meta.dirname, '..', '..', 'dist', 'policy', 'bundle.tar.gz');
const TENANTS = 40_000;
/**
 * The served process's longest event-loop delay while the big candidate is loaded and swapped in.
 * What is left on the serving thread is an asynchronous compile, an instantiation, 25 copies of 4 MiB
 * and a warm-up evaluation, and the full garbage collections V8 runs when ~200 MiB of memory outside
 * its heap (the new instance, the inflated chunks) arrive: 80-400 ms each under `--trace-gc` on this
 * 2-core machine shared by 3 agents. Measured under the test's Check load: 49-130 ms over 5 s with
 * nothing reloading, 131-638 ms during the reload (6 runs); before, 22,767-55,163 ms. Above the worst seen, and
 * still 20 times below the old stall at its best.
 */
const LOOP_STALL_BOUND_MS = 1000;

let root: string;
let path: string;
let big: Buffer;
let serve: ServeProcess;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'egress-authz-big-reload-'));
  const folder = bigPolicyFolder(join(root, 'big'), TENANTS);
  await buildWasmBundle(folder, join(root, 'big.tar.gz'), undefined, { revision: 'big-40k' });
  big = readFileSync(join(root, 'big.tar.gz'));
  path = join(root, 'bundle.tar.gz');
  replaceFile(path, readFileSync(DEFAULT_BUNDLE), 'small');
  serve = await spawnServe(
    [
      // One process: the loop measured is the one whose sandbox thread loads the candidate.
      '--workers',
      '1',
      '--policy',
      path,
      '--policy-poll-interval',
      '200ms',
      // The sandbox parses 17 MiB in OPA's Wasm parser: 12 s at a load average of 7, more when busier.
      '--policy-load-timeout',
      '180s',
      // Stalls are measured, not turned into late denies.
      '--check-deadline',
      '5s',
    ],
    { nodeArgs: ['--max-old-space-size=128'] },
  );
}, 60_000);

afterAll(async () => {
  await serve?.stop();
  rmSync(root, { recursive: true, force: true });
});

function peakRssMiB(): number {
  const status = readFileSync(`/proc/${serve.proc.pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

describe('reloading a 40,000-tenant bundle', () => {
  it('Checks keep being answered: the serving event loop never stalls past the bound', async () => {
    const loop = checkLoop(serve.grpcPort, 2);
    await waitFor(() => loop.results.length > 5, 10_000, 'checks before the reload');
    // A scrape resets the loop-delay histogram behind nodejs_eventloop_lag_max_seconds: the next one
    // reports the longest delay in between. First the floor: the same Checks, nothing reloading.
    await metricsText(serve.httpPort);
    await new Promise((r) => setTimeout(r, 5000));
    const floorMs = sample(await metricsText(serve.httpPort), 'nodejs_eventloop_lag_max_seconds')! * 1000;
    const seen = serve.lines.length;
    const t0 = performance.now();
    replaceFile(path, big, 'big');
    let reloaded: Record<string, any> | undefined;
    try {
      await waitFor(
        () =>
          (reloaded = serve.lines
            .slice(seen)
            .find((l) => l.msg === 'policy reloaded' || l.msg?.startsWith('policy refused'))) !== undefined,
        200_000,
        'the big bundle to be taken',
      );
    } finally {
      await loop.stop();
    }
    const text = await metricsText(serve.httpPort);
    const stallMs = sample(text, 'nodejs_eventloop_lag_max_seconds')! * 1000;
    const during = loop.results.filter((r) => r.sentAt >= t0);
    const slowestMs = Math.max(...during.map((r) => r.receivedAt - r.sentAt));
    console.log(
      `big reload: ${reloaded!.msg} in ${(performance.now() - t0).toFixed(0)} ms (reload_ms ${reloaded!.reload_ms}, ` +
        `sandbox_ms ${reloaded!.sandbox_ms}, instantiate_ms ${reloaded!.instantiate_ms}); ${during.length} checks ` +
        `meanwhile, slowest ${slowestMs.toFixed(0)} ms; serving loop's longest delay ${stallMs.toFixed(0)} ms ` +
        `(${floorMs.toFixed(0)} ms in 5 s of the same Checks before); ` +
        `peak RSS ${peakRssMiB().toFixed(0)} MiB`,
    );
    expect(reloaded).toMatchObject({ msg: 'policy reloaded', policy_revision: 'big-40k' });
    expect(loop.results.filter((r) => r.error !== undefined)).toEqual([]);
    expect(new Set(loop.results.map((r) => r.pool))).toEqual(new Set(['bookinfo_snat']));
    expect(during.length).toBeGreaterThan(10);
    expect(stallMs).toBeLessThanOrEqual(LOOP_STALL_BOUND_MS);

    // The big policy answers: a generated tenant reaches a listed destination through its pool.
    const client = checkClient(serve.grpcPort);
    try {
      const res = await check(
        client,
        checkRequest({
          principal: `spiffe://cluster.local/ns/${bigTenant(4242)}/sa/app`,
          host: `svc-5.${bigTenant(4242)}.partner-4.example:448`,
        }),
      );
      expect(res.status.code).toBe(0);
      expect(snatPool(res)).toBe(`pool_${4242 % 97}`);
    } finally {
      client.close();
    }
  }, 240_000);
});
