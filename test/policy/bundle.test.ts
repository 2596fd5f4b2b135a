import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { MAX_BUNDLE_BYTES, readBundle } from '../../src/policy/bundle.js';
import { buildWasmBundle } from '../../src/policy/opa-cli.js';

interface Entry {
  name: string;
  body?: string | Uint8Array;
  type?: string;
  /** header size field, when it should lie */
  size?: number;
  linkpath?: string;
}

// A minimal ustar writer, so tests can craft archives opa would never write.
function tar(entries: Entry[]): Uint8Array {
  const blocks: Uint8Array[] = [];
  for (const e of entries) {
    const body = typeof e.body === 'string' ? new TextEncoder().encode(e.body) : (e.body ?? new Uint8Array());
    const header = new Uint8Array(512);
    const put = (text: string, at: number) => header.set(new TextEncoder().encode(text), at);
    put(e.name, 0);
    put('0000644\0', 100);
    put('0000000\0', 108);
    put('0000000\0', 116);
    put((e.size ?? body.length).toString(8).padStart(11, '0') + '\0', 124);
    put('00000000000\0', 136);
    put('        ', 148);
    put(e.type ?? '0', 156);
    if (e.linkpath) put(e.linkpath, 157);
    put('ustar\u000000', 257);
    const sum = header.reduce((a, b) => a + b, 0);
    put(sum.toString(8).padStart(6, '0') + '\0 ', 148);
    blocks.push(header, body, new Uint8Array((512 - (body.length % 512)) % 512));
  }
  blocks.push(new Uint8Array(1024));
  return Buffer.concat(blocks);
}

const wasm = new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]);
const bundle = (entries: Entry[]) => gzipSync(tar(entries));

describe('readBundle', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'bundle-test-'));
  let built: Uint8Array;
  beforeAll(async () => {
    await buildWasmBundle('policies', join(tmp, 'b.tar.gz'), undefined, { revision: 'r1' });
    built = readFileSync(join(tmp, 'b.tar.gz'));
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  test('reads what opa build writes: wasm, data and manifest', async () => {
    const b = await readBundle(built);
    expect(b.manifest).toMatchObject({
      revision: 'r1',
      wasm: [{ entrypoint: 'egress/authz/decision', module: '/policy.wasm' }],
    });
    expect(b.data).toEqual(JSON.parse(readFileSync('policies/data.json', 'utf8')));
    expect(Buffer.from(b.wasm.subarray(0, 4)).toString('latin1')).toBe('\0asm');
  });

  test('data files at nested paths merge at that path', async () => {
    const b = await readBundle(
      bundle([
        { name: '/data.json', body: '{"egress":{"trust_domain":"cluster.local"}}' },
        { name: '/egress/tenants/data.json', body: '{"bookinfo":{"snat_pool":"p"}}' },
        { name: '/egress/tenants/extra/data.json', body: '[1,2]' },
        { name: '/other.json', body: '{"ignored":true}' },
        { name: '/policy.wasm', body: wasm },
      ]),
    );
    expect(b.data).toEqual({
      egress: { trust_domain: 'cluster.local', tenants: { bookinfo: { snat_pool: 'p' }, extra: [1, 2] } },
    });
    expect(b.manifest).toBeUndefined();
  });

  test('a __proto__ key is data, not a prototype change', async () => {
    const b = await readBundle(
      bundle([
        { name: 'data.json', body: '{"__proto__":{"polluted":true}}' },
        { name: 'policy.wasm', body: wasm },
      ]),
    );
    expect(Object.getPrototypeOf(b.data)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
    expect(Object.keys(b.data)).toEqual(['__proto__']);
  });

  test.each<[string, Uint8Array | Buffer, RegExp]>([
    ['not gzip', Buffer.from('hello'), /not a gzip-compressed tar file/],
    ['gzip of garbage', gzipSync(Buffer.alloc(2048, 7)), /checksum failure/],
    ['no policy.wasm', bundle([{ name: 'data.json', body: '{}' }]), /no policy\.wasm/],
    [
      'path traversal',
      bundle([
        { name: '../../etc/data.json', body: '{}' },
        { name: 'policy.wasm', body: wasm },
      ]),
      /unsafe path/,
    ],
    ['a symlink', bundle([{ name: 'policy.wasm', type: '2', linkpath: '/etc/passwd' }]), /not a regular file/],
    ['a hard link', bundle([{ name: 'policy.wasm', type: '1', linkpath: 'data.json' }]), /not a regular file/],
    ['a device', bundle([{ name: 'policy.wasm', type: '3' }]), /not a regular file/],
    ['a FIFO', bundle([{ name: 'policy.wasm', type: '6' }]), /not a regular file/],
    ['a vendor type GNU tar extracts as a file', bundle([{ name: 'policy.wasm', type: 'Z' }]), /cannot be read/],
    [
      'two names for one file',
      bundle([
        { name: '/data.json', body: '{}' },
        { name: './data.json', body: '{"egress":{}}' },
        { name: 'policy.wasm', body: wasm },
      ]),
      /two entries for data\.json/,
    ],
    [
      'an absolute path that climbs',
      bundle([
        { name: '/../data.json', body: '{}' },
        { name: 'policy.wasm', body: wasm },
      ]),
      /unsafe path/,
    ],
    [
      'a truncated entry',
      gzipSync(tar([{ name: 'policy.wasm', body: wasm, size: 4096 }]).subarray(0, 1024)),
      /truncated/i,
    ],
    [
      'conflicting data',
      bundle([
        { name: 'data.json', body: '{"a":1}' },
        { name: 'a/data.json', body: '{"b":1}' },
        { name: 'policy.wasm', body: wasm },
      ]),
      /conflicts/,
    ],
    [
      'data that is not JSON',
      bundle([
        { name: 'data.json', body: '{' },
        { name: 'policy.wasm', body: wasm },
      ]),
      /data\.json is not valid JSON/,
    ],
    [
      'root data that is not an object',
      bundle([
        { name: 'data.json', body: '[]' },
        { name: 'policy.wasm', body: wasm },
      ]),
      /root data must be a JSON object/,
    ],
    [
      'a bad manifest',
      bundle([
        { name: '.manifest', body: '"x"' },
        { name: 'policy.wasm', body: wasm },
      ]),
      /\.manifest is not a JSON object/,
    ],
  ])('refuses %s', async (_name, bytes, message) => {
    await expect(readBundle(bytes)).rejects.toThrow(message);
  });

  test(`refuses a bundle that unpacks to more than ${MAX_BUNDLE_BYTES} bytes`, async () => {
    const bomb = gzipSync(Buffer.alloc(MAX_BUNDLE_BYTES + 1024));
    expect(bomb.length).toBeLessThan(1024 * 1024);
    await expect(readBundle(bomb)).rejects.toThrow(/unpacks to more than/);
  });
});
