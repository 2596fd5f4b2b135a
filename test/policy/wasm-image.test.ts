// The memory-image fast path (wasm-image.ts) against the careful one: a policy restored from the image
// a loader captured decides exactly like the same bundle loaded directly (data.json parsed again), for
// generated and odd inputs, on the default policy and on one with a large data set; and it keeps doing
// so after an aborted evaluation (re-instantiated from the image) and under a data overlay.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBundle } from '../../src/policy/bundle.js';
import { buildWasmBundle } from '../../src/policy/opa-cli.js';
import { loadPolicyBundle, loadPolicyImage, type LoadedPolicy } from '../../src/policy/policy.js';
import { captureWasmImage } from '../../src/policy/wasm-image.js';
import { mutableGlobalCount } from '../../src/policy/wasm-limits.js';
import { bigPolicyFolder, bigTenant } from '../support/big-data.js';

const DEFAULT_BUNDLE = join(import.meta.dirname, '..', '..', 'dist', 'policy', 'bundle.tar.gz');
const runs = Number(process.env['FUZZ_RUNS'] ?? 300);
// Budgets out of the way: a comparison is about answers, not a shared machine's timing.
const LOAD = { evalBudgetMs: 60_000, memoize: false } as const;
const BIG_TENANTS = 5_000; // 1.9 MiB of data.json, a 12 MiB image: several chunks

interface Pair {
  careful: LoadedPolicy;
  fast: LoadedPolicy;
}

async function pair(bytes: Uint8Array): Promise<Pair> {
  const careful = await loadPolicyBundle(bytes, { ...LOAD, source: 'careful' });
  const loader = await loadPolicyBundle(bytes, { ...LOAD, source: 'loader', captureImage: true });
  expect(loader.image, 'an image was captured').toBeDefined();
  // What crosses to the serving thread: a structured clone, as postMessage makes it.
  const fast = await loadPolicyImage(structuredClone(loader.image!), { ...LOAD, source: 'fast' });
  return { careful, fast };
}

const namespaces = [
  'bookinfo',
  'payments',
  'bookinfo-evil',
  '',
  'BOOKINFO',
  bigTenant(0),
  bigTenant(4_999),
  bigTenant(77),
];
const hosts = [
  'httpbin.org',
  'svc-3.tenant-00077.partner-12.example',
  'SVC-0.TENANT-00000.PARTNER-0.EXAMPLE',
  '',
  '[::1]',
];
const identity = fc.record(
  {
    spiffe_id: fc.oneof(fc.string(), fc.constantFrom('spiffe://cluster.local/ns/bookinfo/sa/productpage')),
    trust_domain: fc.oneof(fc.constantFrom('cluster.local', 'partner.example', 'evil.example'), fc.string()),
    namespace: fc.oneof(fc.constantFrom(...namespaces), fc.string()),
  },
  { requiredKeys: [] },
);
const input = fc.record(
  {
    caller: fc.constantFrom('envoy', 'sideband', 'cli', 'x'),
    identity: fc.oneof(identity, fc.constant(null), fc.jsonValue()),
    identity_error: fc.oneof(fc.string(), fc.jsonValue()),
    destination: fc.oneof(
      fc.record(
        {
          host: fc.oneof(fc.constantFrom(...hosts), fc.string()),
          port: fc.oneof(fc.integer({ min: -1, max: 70_000 }), fc.jsonValue()),
        },
        { requiredKeys: [] },
      ),
      fc.jsonValue(),
    ),
  },
  { requiredKeys: [] },
);

const odd: unknown[] = [
  undefined,
  null,
  0,
  '',
  'input',
  [],
  [1, [2, [3]]],
  {},
  {
    identity: {
      namespace: 'bookinfo',
      trust_domain: 'cluster.local',
      spiffe_id: 'spiffe://cluster.local/ns/bookinfo/sa/x',
    },
    destination: { host: 'httpbin.org', port: 443 },
  },
  { identity: { namespace: '\u0000', trust_domain: 'cluster.local' }, destination: { host: '\ud83d\ude00' } },
  { identity: { namespace: 'x'.repeat(300_000), trust_domain: 'cluster.local' } }, // grows the memory
  { deep: JSON.parse('['.repeat(500) + ']'.repeat(500)) },
  { x: 1n }, // not JSON: the evaluation fails before the module runs, and the instance is renewed
  {
    identity: { namespace: bigTenant(42), trust_domain: 'cluster.local' },
    destination: { host: `svc-8.${bigTenant(42)}.partner-3.example`, port: 451 },
  },
];

function sameAnswers(p: Pair, inputs: Iterable<unknown>): void {
  for (const x of inputs)
    expect(
      p.fast.evaluate(x),
      JSON.stringify(x, (_, v) => (typeof v === 'bigint' ? `${v}n` : v))?.slice(0, 200),
    ).toEqual(p.careful.evaluate(x));
}

describe('a policy restored from its memory image decides as the careful load', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'wasm-image-test-'));
  let defaults: Pair;
  let big: Pair;
  let bigBytes: Buffer;
  beforeAll(async () => {
    const folder = bigPolicyFolder(join(tmp, 'big'), BIG_TENANTS);
    await buildWasmBundle(folder, join(tmp, 'big.tar.gz'));
    bigBytes = readFileSync(join(tmp, 'big.tar.gz'));
    [defaults, big] = await Promise.all([pair(readFileSync(DEFAULT_BUNDLE)), pair(bigBytes)]);
  }, 120_000);
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('the image of the large data set spans several chunks, and the summary needs no parse', () => {
    expect(big.fast.image!.memory.chunks.length).toBeGreaterThan(1);
    expect(big.fast.summary).toEqual(big.careful.summary);
    expect(big.fast.summary!.tenants).toHaveLength(BIG_TENANTS + 1);
    expect(big.fast.revision).toBe(big.careful.revision);
  });

  for (const name of ['default', 'large data'] as const) {
    it(`${name}: generated inputs`, () => {
      const p = name === 'default' ? defaults : big;
      fc.assert(
        fc.property(input, (x) => {
          expect(p.fast.evaluate(x)).toEqual(p.careful.evaluate(x));
        }),
        { numRuns: runs },
      );
    });

    it(`${name}: odd inputs, twice over (the second round on instances renewed after a failure)`, () => {
      const p = name === 'default' ? defaults : big;
      sameAnswers(p, odd);
      sameAnswers(p, odd);
    });
  }

  it('the data it holds and a data overlay over it are those of the careful load', async () => {
    expect(big.fast.data).toEqual(big.careful.data);
    const overlay = { egress: { tenants: { [bigTenant(1)]: { snat_pool: 'overlaid_snat' } } } };
    const fastOverlaid = await big.fast.withDataOverlay!(overlay);
    const carefulOverlaid = await big.careful.withDataOverlay!(overlay);
    expect(fastOverlaid.revision).toBe(carefulOverlaid.revision);
    const ask = {
      identity: { namespace: bigTenant(1), trust_domain: 'cluster.local' },
      destination: { host: `svc-0.${bigTenant(1)}.partner-1.example`, port: 443 },
    };
    expect(fastOverlaid.evaluate(ask)).toEqual(carefulOverlaid.evaluate(ask));
    expect(fastOverlaid.evaluate(ask)).toMatchObject({ ok: true, value: { allow: true, snat_pool: 'overlaid_snat' } });
  });

  it('an image restored twice (two serving processes) gives two independent policies', async () => {
    const again = await loadPolicyImage(structuredClone(big.fast.image!), { ...LOAD, source: 'again' });
    sameAnswers({ careful: big.careful, fast: again }, odd);
  });
});

describe('no image when the engine is not what the image code was written for', () => {
  it('an SDK object without the fields, or of an ABI before 1.2', async () => {
    const { wasm } = await readBundle(readFileSync(DEFAULT_BUNDLE));
    expect(captureWasmImage({} as never, wasm)).toBeUndefined();
    const policy = await loadPolicyBundle(readFileSync(DEFAULT_BUNDLE), { source: 'x', captureImage: true });
    expect(policy.image).toBeDefined();
    const sdk = (policy as unknown as { instance: Record<string, unknown> }).instance;
    expect(captureWasmImage({ ...sdk, minorVersion: 1 } as never, wasm)).toBeUndefined();
    expect(captureWasmImage({ ...sdk, dataHeapPtr: undefined } as never, wasm)).toBeUndefined();
  });

  it('a module with state in more mutable globals than its stack pointer', () => {
    // (module (global (mut i32) (i32.const 11)) (global (mut i64) (i64.const -1)) (global i32 (i32.const 0)))
    const globals = [0x03, 0x7f, 0x01, 0x41, 0x0b, 0x0b, 0x7e, 0x01, 0x42, 0x7f, 0x0b, 0x7f, 0x00, 0x41, 0x00, 0x0b];
    const wasm = Uint8Array.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 0x06, globals.length, ...globals]);
    expect(mutableGlobalCount(wasm)).toBe(2);
    expect(mutableGlobalCount(wasm.subarray(0, wasm.length - 2))).toBeUndefined();
  });
});
