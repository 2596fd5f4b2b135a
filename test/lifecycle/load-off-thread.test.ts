// How a serving process gets its policy without parsing a bundle on its event loop: from the memory
// image of a thread that loaded it (the sandbox's, or a `--workers` worker's loader thread), with the
// sandbox's budgets, for the live and the shadow policy alike.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { openBundleSource } from '../../src/lifecycle/bundle-source.js';
import { PolicyStore } from '../../src/lifecycle/policy-store.js';
import { loadOffThread } from '../../src/lifecycle/validated-bundle.js';
import { BOOKINFO } from './support.js';

const DEFAULT_BUNDLE = join(import.meta.dirname, '..', '..', 'dist', 'policy', 'bundle.tar.gz');
const bookinfo = {
  caller: 'envoy',
  identity: { spiffe_id: BOOKINFO, trust_domain: 'cluster.local', namespace: 'bookinfo' },
  destination: { host: 'httpbin.org', port: 443 },
};

describe('loadOffThread (a --workers worker handed the bytes)', () => {
  it('gives the policy restored from the loader thread’s image', async () => {
    const policy = await loadOffThread(readFileSync(DEFAULT_BUNDLE), 'bytes', { evalBudgetMs: 10_000 });
    expect(policy.image).toBeDefined();
    expect(policy.summary?.tenants).toEqual(['bookinfo']);
    expect(policy.evaluate(bookinfo)).toMatchObject({ ok: true, value: { allow: true, snat_pool: 'bookinfo_snat' } });
  });

  it('a loader that blows its budget, or bytes that are no bundle, reject as a refused candidate', async () => {
    await expect(
      loadOffThread(readFileSync(DEFAULT_BUNDLE), 'slow', {}, { timeoutMs: 1, heapMb: 128 }),
    ).rejects.toThrow(/^policy slow: candidate did not finish loading and its checks within the budget of 1ms/);
    await expect(loadOffThread(Buffer.from('not a bundle'), 'junk', {})).rejects.toThrow(/^policy junk: /);
  });
});

describe('a PolicyStore serves what the sandbox captured', () => {
  for (const role of ['live', 'shadow'] as const) {
    it(`${role}: the serving policy and the hand-off carry the image`, async () => {
      const store = await PolicyStore.open(await openBundleSource(DEFAULT_BUNDLE), {
        role,
        log: pino({ level: 'silent' }),
        load: { evalBudgetMs: 10_000 },
      });
      expect(store.accepted?.image).toBeDefined();
      expect(store.current?.image).toBe(store.accepted?.image);
      expect(store.current?.evaluate(bookinfo)).toMatchObject({ ok: true, value: { allow: true } });
    });
  }
});
