// A candidate's loader thread lives as long as its check, and no thread is started ahead for the next
// one: an idle one held ~13 MB of the serving process's RSS for a version that comes rarely.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { openBundleSource } from '../../src/lifecycle/bundle-source.js';
import { PolicyStore } from '../../src/lifecycle/policy-store.js';

const DEFAULT_BUNDLE = join(import.meta.dirname, '..', '..', 'dist', 'policy', 'bundle.tar.gz');
const threads = () => readdirSync('/proc/self/task').length;

async function settledThreads(atMost: number, ms = 5000): Promise<number> {
  const until = Date.now() + ms;
  while (threads() > atMost && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  return threads();
}

describe('policy loader threads', () => {
  it('none is left once the policy is in, and none after a reload', async () => {
    const before = threads();
    const store = await PolicyStore.open(await openBundleSource(DEFAULT_BUNDLE), {
      role: 'live',
      log: pino({ level: 'silent' }),
      load: { evalBudgetMs: 10_000 },
    });
    expect(store.current).toBeDefined();
    expect(await settledThreads(before)).toBeLessThanOrEqual(before);
    await store.reload('test', { force: true });
    expect(await settledThreads(before)).toBeLessThanOrEqual(before);
    store.stop();
  });
});
