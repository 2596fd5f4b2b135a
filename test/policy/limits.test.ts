// The limits a bundle meets before anything parses or instantiates it (issue 14, findings 1 and 2),
// and the raw data path proven against the careful one: the same decisions whether the policy parses
// data.json's own bytes or the SDK serialises the parsed object.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { readBundle, readBundleFiles, writeBundleFiles } from '../../src/policy/bundle.js';
import { checkJsonLimits } from '../../src/policy/json-limits.js';
import { checkWasmLimits } from '../../src/policy/wasm-limits.js';
import { loadPolicyBundle } from '../../src/policy/policy.js';
import { checkInSandbox } from '../../src/lifecycle/policy-sandbox.js';
import { infiniteStartWasm, ownMemoryWasm } from '../support/hostile-bundles.js';

const DEFAULT_BUNDLE = join(import.meta.dirname, '..', '..', 'dist', 'policy', 'bundle.tar.gz');
const CAP = { maxMemoryPages: 4096, maxTableEntries: 100_000 };
const runs = Number(process.env['FUZZ_RUNS'] ?? 300);

function reference(v: unknown, depth = 1): { values: number; depth: number } {
  if (Array.isArray(v) || (typeof v === 'object' && v !== null)) {
    let values = 1;
    let deepest = depth;
    for (const child of Object.values(v)) {
      const r = reference(child, depth + 1);
      values += r.values;
      deepest = Math.max(deepest, r.depth);
    }
    return { values, depth: deepest };
  }
  return { values: 1, depth: depth - 1 };
}

describe('data.json limits, before JSON.parse', () => {
  it('counts exactly the values JSON.parse builds, whatever the spacing and strings', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.constantFrom(undefined, 1, '\t', ' \n '), (value, space) => {
        const text = JSON.stringify(value, null, space);
        const expected = reference(JSON.parse(text));
        const counted = checkJsonLimits(Buffer.from(text), { maxDepth: 1000, maxValues: 1e9 });
        expect(counted).toEqual({ ok: true, value: expected.values });
        const tooShallow = checkJsonLimits(Buffer.from(text), { maxDepth: expected.depth - 1, maxValues: 1e9 });
        if (expected.depth > 0) expect(tooShallow.ok).toBe(false);
        const justDeep = checkJsonLimits(Buffer.from(text), { maxDepth: expected.depth, maxValues: 1e9 });
        expect(justDeep.ok).toBe(true);
      }),
      { numRuns: runs },
    );
  });

  it('brackets, quotes and backslashes inside strings do not count', () => {
    const text = JSON.stringify({ a: '[[[{{{', b: 'say \\"[\\"', c: ['\\', '"]'] });
    expect(checkJsonLimits(Buffer.from(text), { maxDepth: 2, maxValues: 100 })).toEqual({ ok: true, value: 6 });
  });

  it('refuses 20 million nested brackets at the first one too deep, in a moment', () => {
    const started = performance.now();
    const r = checkJsonLimits(Buffer.alloc(20_000_000, '['), { maxDepth: 64, maxValues: 1e6 });
    expect(r).toEqual({ ok: false, reason: 'nested deeper than 64 levels', code: 'invalid' });
    expect(performance.now() - started).toBeLessThan(1000);
  });
});

describe('Wasm module limits, before instantiation', () => {
  it("the SDK's own modules pass; a start function alone is not a memory problem", async () => {
    const files = await readBundleFiles(readFileSync(DEFAULT_BUNDLE));
    expect(checkWasmLimits(files.get('policy.wasm')!, CAP)).toEqual({ ok: true, value: undefined });
    expect(checkWasmLimits(infiniteStartWasm(), CAP).ok).toBe(true);
  });

  it('a memory of its own: refused above the cap, accepted within it', () => {
    expect(checkWasmLimits(ownMemoryWasm(8192), CAP)).toEqual({
      ok: false,
      reason: 'policy.wasm declares a memory of its own of up to 512 MiB (the cap is 256 MiB)',
      code: 'invalid',
    });
    expect(checkWasmLimits(ownMemoryWasm(16), CAP).ok).toBe(true);
  });

  it('a memory of its own without a maximum, or 64-bit, or an imported memory above the cap: refused', () => {
    const header = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    const noMax = Uint8Array.from([...header, 5, 3, 1, 0x00, 1]);
    expect(checkWasmLimits(noMax, CAP)).toMatchObject({ ok: false, reason: /without a maximum/ });
    const mem64 = Uint8Array.from([...header, 5, 4, 1, 0x05, 1, 2]);
    expect(checkWasmLimits(mem64, CAP)).toMatchObject({ ok: false, reason: /64-bit/ });
    // import "env" "memory" (memory (limits min 5000))
    const imp = [1, 3, ...Buffer.from('env'), 6, ...Buffer.from('memory'), 0x02, 0x00, 0x88, 0x27];
    const bigImport = Uint8Array.from([...header, 2, imp.length, ...imp]);
    expect(checkWasmLimits(bigImport, CAP)).toMatchObject({ ok: false, reason: /asks for 5000 pages/ });
    expect(checkWasmLimits(Uint8Array.from([1, 2, 3]), CAP)).toMatchObject({ ok: false });
    expect(checkWasmLimits(Uint8Array.from([...header, 5, 9, 1]), CAP)).toMatchObject({ ok: false });
  });
});

describe("the policy parses data.json's own bytes: same decisions as the serialised object", () => {
  it('for generated tenants, pools, destinations and requests', async () => {
    const files = await readBundleFiles(readFileSync(DEFAULT_BUNDLE));
    const tenant = fc.record({
      snat_pool: fc.oneof(fc.constantFrom('', 'pool_a', 'b.c/d'), fc.string()),
      destinations: fc.option(fc.array(fc.constantFrom('a.example', 'a.example:443', 'B.EXAMPLE', '[::1]:80')), {
        nil: undefined,
      }),
    });
    const namespaces = fc.constantFrom('bookinfo', 'a', 'b-c', 'ü', '__proto__', 'constructor');
    await fc.assert(
      fc.asyncProperty(
        fc.dictionary(namespaces, tenant),
        fc.array(
          fc.tuple(namespaces, fc.constantFrom('a.example', 'b.example', '::1'), fc.integer({ min: 1, max: 65535 })),
          {
            minLength: 1,
            maxLength: 5,
          },
        ),
        async (tenants, requests) => {
          const data = { egress: { trust_domain: 'cluster.local', tenants } };
          const raw = new Map(files);
          raw.set('data.json', Buffer.from(JSON.stringify(data)));
          // data at egress/data.json: merged as an object, so the SDK serialises it (the careful path)
          const nested = new Map(files);
          nested.delete('data.json');
          nested.set('egress/data.json', Buffer.from(JSON.stringify(data.egress)));
          const rawBytes = writeBundleFiles(raw);
          const nestedBytes = writeBundleFiles(nested);
          expect((await readBundle(rawBytes)).dataJson).toBeDefined();
          expect((await readBundle(nestedBytes)).dataJson).toBeUndefined();
          const opts = { memoize: false, evalBudgetMs: 10_000 };
          const fast = await loadPolicyBundle(rawBytes, { ...opts, source: 'raw' });
          const careful = await loadPolicyBundle(nestedBytes, { ...opts, source: 'nested' });
          for (const [ns, host, port] of requests) {
            const input = {
              caller: 'cli',
              identity: {
                spiffe_id: `spiffe://cluster.local/ns/${ns}/sa/x`,
                trust_domain: 'cluster.local',
                namespace: ns,
              },
              destination: { host, port },
            };
            expect(fast.evaluate(input)).toEqual(careful.evaluate(input));
          }
        },
      ),
      { numRuns: Math.min(runs, 60) },
    );
  }, 120_000);
});

describe('the sandbox memory budget', () => {
  it('data that passes the limits but not the heap budget: refused, naming the budget', async () => {
    const tenants: Record<string, unknown> = {};
    for (let i = 0; i < 200_000; i++) tenants[`tenant-${i}`] = { snat_pool: `pool_${i}`.padEnd(40, 'x') };
    const files = await readBundleFiles(readFileSync(DEFAULT_BUNDLE));
    files.set('data.json', Buffer.from(JSON.stringify({ egress: { trust_domain: 'cluster.local', tenants } })));
    const started = performance.now();
    const refused = await checkInSandbox(
      { bytes: writeBundleFiles(files), source: 'big', load: {} },
      { timeoutMs: 60_000, heapMb: 16 },
    ).catch((e: Error) => e.message);
    console.log(
      `heap budget 16 MiB: refused in ${(performance.now() - started).toFixed(0)} ms: ${JSON.stringify(refused)}`,
    );
    expect(refused).toMatch(/exceeded the memory budget of 16 MiB/);
  }, 90_000);
});
