// Finding 7 of issue 14: a 70 kB manifest revision went into every CheckResponse's metadata, over the
// 64 KiB send limit: every Check failed with RESOURCE_EXHAUSTED while the reload said success and
// /readyz said 200. Now such a bundle is refused with a reason and the last good policy keeps serving.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { readBundle, writeBundleFiles } from '../../src/policy/bundle.js';
import { check, checkClient, checkRequest, type CheckClient } from '../support/service.js';
import {
  BOOKINFO,
  nextReload,
  replaceFile,
  snatPool,
  startStoreService,
  variantBundle,
  type StoreService,
} from '../lifecycle/support.js';

describe('manifest strings that reach responses and logs are bounded (issue 14, finding 7)', () => {
  const root = mkdtempSync(join(tmpdir(), 'manifest-strings-'));
  let s: StoreService;
  let client: CheckClient;
  const path = join(root, 'bundle.tar.gz');
  beforeAll(async () => {
    writeFileSync(path, await variantBundle(root, 'good', { pool: 'pool_good', revision: 'good-1' }));
    s = await startStoreService(path);
    client = checkClient(s.svc.grpcPort);
  });
  afterAll(async () => {
    client?.close();
    await s?.close();
    rmSync(root, { recursive: true, force: true });
  });

  test('a 70 kB revision is refused; Checks keep answering on the last good policy', async () => {
    const long = await variantBundle(root, 'long', { pool: 'pool_long', revision: 'r'.repeat(70_000) });
    const reloaded = nextReload(s.store);
    replaceFile(path, long, 'long');
    const outcome = await reloaded;
    expect(outcome.result).toBe('failure');
    expect(outcome.error).toMatch(/revision is 70000 characters long \(at most 256\)/);
    const res = await check(client, checkRequest({ principal: BOOKINFO }));
    expect(res.status.code).toBe(0);
    expect(snatPool(res)).toBe('pool_good');
    const ready = await fetch(`http://127.0.0.1:${s.svc.httpPort}/readyz`);
    expect(ready.status).toBe(200);
    expect(((await ready.json()) as { policy_revision: string }).policy_revision).toBe('good-1');
  });

  const wasm = new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]);
  const withManifest = (manifest: unknown) =>
    writeBundleFiles(
      new Map([
        ['.manifest', Buffer.from(JSON.stringify(manifest))],
        ['policy.wasm', wasm],
      ]),
    );
  test.each<[string, unknown, RegExp]>([
    ['a revision with a newline', { revision: 'a\nlevel=fatal' }, /revision has control/],
    ['a revision with an escape sequence', { revision: '\u001b[2J' }, /revision has control/],
    ['a revision with a line separator', { revision: 'a\u2028b' }, /revision has control/],
    ['a revision that is not a string', { revision: 7 }, /revision must be a string/],
    ['a 257-character revision', { revision: 'x'.repeat(257) }, /at most 256/],
    ['a long root', { roots: ['egress', 'y'.repeat(300)] }, /roots\[1\] is 300 characters/],
    ['roots that are not a list', { roots: 'egress' }, /roots must be a list/],
    ['a module path with NUL', { wasm: [{ entrypoint: 'e', module: '/policy.wasm\u0000' }] }, /wasm\[0\]\.module/],
    ['an entrypoint that is not a string', { wasm: [{ entrypoint: 1, module: '/policy.wasm' }] }, /entrypoint/],
  ])('refuses %s', async (_name, manifest, message) => {
    await expect(readBundle(withManifest(manifest))).rejects.toThrow(message);
  });

  test('accepts a 256-character printable revision, Unicode included', async () => {
    const revision = `é${'x'.repeat(255)}`;
    expect((await readBundle(withManifest({ revision }))).manifest?.revision).toBe(revision);
  });

  test('refuses a manifest over 1 MiB', async () => {
    await expect(readBundle(withManifest({ metadata: { pad: 'p'.repeat(1024 * 1024) } }))).rejects.toThrow(
      /\.manifest is larger than/,
    );
  });
});
