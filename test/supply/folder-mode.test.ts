// Finding 9 of issue 14: folder mode. Two self-symlinks made the folder walk exponential; a symlink
// out of the folder was read into data; manifest roots were not enforced; `opa test` on reload could
// `http.send`. Each is refused now, with a reason.
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { openBundleSource } from '../../src/lifecycle/bundle-source.js';
import { readBundle, writeBundleFiles } from '../../src/policy/bundle.js';
import { buildWasmBundle, runOpaTest } from '../../src/policy/opa-cli.js';
import { POLICY_DIR } from '../support/service.js';

const tmp = mkdtempSync(join(tmpdir(), 'folder-mode-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function folder(name: string): string {
  const dir = join(tmp, name);
  mkdirSync(dir);
  cpSync(join(POLICY_DIR, 'egress_authz.rego'), join(dir, 'egress_authz.rego'));
  cpSync(join(POLICY_DIR, 'data.json'), join(dir, 'data.json'));
  return dir;
}

describe('the folder walk', () => {
  test('two self-symlinks: refused at once (the walk was exponential)', async () => {
    const dir = folder('loops');
    symlinkSync('.', join(dir, 'a'));
    symlinkSync('.', join(dir, 'b'));
    const started = Date.now();
    await expect(buildWasmBundle(dir, join(tmp, 'loops.tar.gz'))).rejects.toThrow(/a second time/);
    const source = await openBundleSource(dir);
    await expect(source.fetch()).rejects.toThrow(/a second time/);
    expect(Date.now() - started).toBeLessThan(5_000);
  }, 20_000);

  test('a symlink out of the folder: refused, its content never becomes data', async () => {
    const outside = join(tmp, 'outside');
    mkdirSync(outside);
    writeFileSync(join(outside, 'data.json'), '{"attacker": {"snat_pool": "bookinfo_snat"}}');
    const dir = folder('escape');
    mkdirSync(join(dir, 'egress'));
    symlinkSync(outside, join(dir, 'egress', 'tenants2'));
    await expect(buildWasmBundle(dir, join(tmp, 'escape.tar.gz'))).rejects.toThrow(/points outside the folder/);
    const source = await openBundleSource(dir);
    await expect(source.fetch()).rejects.toThrow(/points outside the folder/);
  });

  test('symlinks inside the folder (a ConfigMap mount) still work', async () => {
    const dir = join(tmp, 'configmap');
    mkdirSync(join(dir, '..2026_12_01'), { recursive: true });
    cpSync(join(POLICY_DIR, 'egress_authz.rego'), join(dir, '..2026_12_01', 'egress_authz.rego'));
    cpSync(join(POLICY_DIR, 'data.json'), join(dir, '..2026_12_01', 'data.json'));
    symlinkSync('..2026_12_01', join(dir, '..data'));
    symlinkSync('..data/egress_authz.rego', join(dir, 'egress_authz.rego'));
    symlinkSync('..data/data.json', join(dir, 'data.json'));
    await buildWasmBundle(dir, join(tmp, 'configmap.tar.gz'));
    const v = await (await openBundleSource(dir)).fetch();
    expect(v?.version).toMatch(/^sha256:/);
  });
});

describe('manifest roots', () => {
  const wasm = new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]);
  const bundle = (roots: string[], data: unknown, extra: [string, unknown][] = []) =>
    writeBundleFiles(
      new Map<string, Uint8Array>([
        [
          '.manifest',
          Buffer.from(
            JSON.stringify({ roots, wasm: [{ entrypoint: 'egress/authz/decision', module: '/policy.wasm' }] }),
          ),
        ],
        ['data.json', Buffer.from(JSON.stringify(data))],
        ['policy.wasm', wasm],
        ...extra.map(([p, d]) => [p, Buffer.from(JSON.stringify(d))] as [string, Uint8Array]),
      ]),
    );

  test.each<[string, string[], unknown, [string, unknown][], RegExp | null]>([
    ['data under its root', ['egress'], { egress: { tenants: {} } }, [], null],
    ['the empty root allows all', [''], { anything: 1 }, [], null],
    [
      'data beside the roots',
      ['egress'],
      { egress: {}, other: { x: 1 } },
      [],
      /data at \/other is outside the manifest roots/,
    ],
    [
      'a nested data.json outside',
      ['egress/authz', 'egress/tenants'],
      { egress: {} },
      [['egress/x/data.json', { a: 1 }]],
      /\/egress\/x is outside/,
    ],
    ['a value where a root needs an object', ['egress/tenants'], { egress: 1 }, [], /\/egress is outside/],
    [
      'an entrypoint outside the roots',
      ['egress/tenants'],
      { egress: { tenants: {} } },
      [],
      /entrypoint egress\/authz\/decision is outside/,
    ],
  ])('%s', async (_name, roots, data, extra, refusal) => {
    const read = readBundle(bundle(roots, data, extra), { entrypoint: 'egress/authz/decision' });
    if (refusal) await expect(read).rejects.toThrow(refusal);
    else await expect(read).resolves.toBeDefined();
  });
});

describe('opa build and opa test run without network builtins', () => {
  let server: Server;
  let hits = 0;
  let url: string;
  beforeAll(async () => {
    server = createServer((_req, res) => {
      hits++;
      res.end('{}');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  });
  afterAll(() => new Promise((r) => server.close(r)));

  test('a Rego unit test calling http.send does not compile, and no request is made', async () => {
    const dir = folder('exfil');
    writeFileSync(
      join(dir, 'exfil_test.rego'),
      `package egress.authz_test\n\ntest_exfil if {\n\thttp.send({"method": "GET", "url": "${url}"})\n}\n`,
    );
    const report = await runOpaTest(dir);
    expect(report.ok).toBe(false);
    expect(report.text).toMatch(/http\.send/);
    expect(hits).toBe(0);
  });

  test('a rule calling net.lookup_ip_addr does not build', async () => {
    const dir = folder('lookup');
    writeFileSync(join(dir, 'lookup.rego'), 'package egress.lookup\n\nips := net.lookup_ip_addr("localhost")\n');
    await expect(buildWasmBundle(dir, join(tmp, 'lookup.tar.gz'))).rejects.toThrow(/net\.lookup_ip_addr/);
  });
});
