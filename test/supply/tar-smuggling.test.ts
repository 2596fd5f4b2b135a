// Finding 3 of issue 14: a PAX `size` record that standard tools honour and the old reader ignored let
// an archive show one policy to `tar -t` / `opa inspect` and load another. The archive is crafted here:
// the default bundle, then a PAX header whose size swallows the next ustar entry (a data.json adding
// tenant `attacker` with `bookinfo_snat`) into the body of an innocent-looking `notes.txt`.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { readBundleFiles } from '../../src/policy/bundle.js';
import { buildWasmBundle } from '../../src/policy/opa-cli.js';
import { loadPolicyBundle } from '../../src/policy/policy.js';
import { Authorizer } from '../../src/decision/authorizer.js';
import { MutablePolicySource } from '../../src/service/service.js';
import { opaBinary } from './support.js';

function header(name: string, size: number, type = '0'): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 'utf8');
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  h.write('00000000000\0', 136);
  h.write('        ', 148);
  h.write(type, 156);
  h.write('ustar\u000000', 257);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return h;
}

const pad = (n: number) => Buffer.alloc((512 - (n % 512)) % 512);
const entry = (name: string, body: Uint8Array) => [header(name, body.length), Buffer.from(body), pad(body.length)];

function paxRecord(key: string, value: string): string {
  // "<len> key=value\n", where len counts itself
  const rest = ` ${key}=${value}\n`;
  let len = rest.length + 1;
  while (String(len).length + rest.length !== len) len = String(len).length + rest.length;
  return `${len}${rest}`;
}

export function smuggle(files: Map<string, Uint8Array>): Buffer {
  const hiddenBody = Buffer.from(JSON.stringify({ snat_pool: 'bookinfo_snat' }));
  const hidden = Buffer.concat(entry('/egress/tenants/attacker/data.json', hiddenBody));
  const pax = Buffer.from(paxRecord('size', String(hidden.length)));
  const blocks: Buffer[] = [];
  for (const [path, body] of files) blocks.push(...entry(`/${path}`, body));
  blocks.push(header('PaxHeaders/notes.txt', pax.length, 'x'), pax, pad(pax.length));
  // ustar size 0: a reader that ignores the PAX record takes the next block for a header
  blocks.push(header('/notes.txt', 0), hidden, Buffer.alloc(1024));
  return gzipSync(Buffer.concat(blocks));
}

describe('a PAX size record cannot hide a file from standard tools (issue 14, finding 3)', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'tar-smuggle-'));
  let crafted: Buffer;
  let file: string;
  beforeAll(async () => {
    await buildWasmBundle('policies', join(tmp, 'b.tar.gz'), undefined, { revision: 'r1' });
    crafted = smuggle(await readBundleFiles(readFileSync(join(tmp, 'b.tar.gz'))));
    file = join(tmp, 'crafted.tar.gz');
    writeFileSync(file, crafted);
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  test('GNU tar and the service list the same files', async () => {
    const listed = execFileSync('tar', ['-tzf', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split('\n')
      .filter(Boolean)
      .map((n) => n.replace(/^\/+/, ''));
    expect(listed).not.toContain('egress/tenants/attacker/data.json');
    const read = [...(await readBundleFiles(crafted)).keys()];
    expect(read.sort()).toEqual(listed.sort());
  });

  test('opa inspect sees no attacker data, and neither does the service', async () => {
    const inspected = JSON.parse(
      execFileSync(opaBinary(), ['inspect', '--format', 'json', file], { encoding: 'utf8' }),
    );
    expect(JSON.stringify(inspected)).not.toContain('attacker');
    const policy = await loadPolicyBundle(crafted, { source: file });
    expect(JSON.stringify(policy.data)).not.toContain('attacker');
    const authorizer = new Authorizer({ policies: new MutablePolicySource(policy), sink: () => {} });
    const d = authorizer.checkCli({
      spiffeId: 'spiffe://cluster.local/ns/attacker/sa/x',
      destination: 'httpbin.org:443',
    });
    expect(d.allow).toBe(false);
    expect(d.snat_pool).toBe('');
    const control = authorizer.checkCli({
      spiffeId: 'spiffe://cluster.local/ns/bookinfo/sa/x',
      destination: 'httpbin.org:443',
    });
    expect(control).toMatchObject({ allow: true, snat_pool: 'bookinfo_snat' });
  });
});

describe('differential: the service reads an archive as GNU tar does, or refuses it', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'tar-diff-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const body = Buffer.from('{"egress":{"tenants":{"attacker":{"snat_pool":"bookinfo_snat"}}}}');
  const hidden = Buffer.concat(entry('/x/data.json', body));
  const meta = (type: string, records: string) => {
    const b = Buffer.from(records);
    return [header('PaxHeaders/m', b.length, type), b, pad(b.length)];
  };
  const variants: Record<string, Buffer[]> = {
    'PAX size larger than the ustar size': [
      ...meta('x', paxRecord('size', String(hidden.length))),
      header('/a.txt', 0),
      hidden,
    ],
    'PAX size smaller than the ustar size': [
      ...meta('x', paxRecord('size', '0')),
      header('/a.txt', hidden.length),
      hidden,
    ],
    'global PAX size': [...meta('g', paxRecord('size', String(hidden.length))), header('/a.txt', 0), hidden],
    'PAX path': [...meta('x', paxRecord('path', 'y/data.json')), ...entry('/a.txt', body)],
    'GNU long name': [...meta('L', 'z/'.repeat(80) + 'data.json\0'), ...entry('/short', body)],
    'two PAX headers in a row': [
      ...meta('x', paxRecord('size', '0')),
      ...meta('x', paxRecord('size', String(hidden.length))),
      header('/a.txt', 0),
      hidden,
    ],
    'PAX size that is not a number': [...meta('x', paxRecord('size', '12x')), ...entry('/a.txt', body)],
    'PAX size in hex': [...meta('x', paxRecord('size', '0x400')), header('/a.txt', 0), hidden],
    'PAX size empty': [...meta('x', paxRecord('size', '')), header('/a.txt', hidden.length), hidden],
    'PAX record with a wrong length': [...meta('x', '99 size=1024\n'), header('/a.txt', 0), hidden],
    'PAX path with NUL': [...meta('x', paxRecord('path', 'y/data.json\0z')), ...entry('/a.txt', body)],
    'PAX linkpath on a file': [...meta('x', paxRecord('linkpath', 'data.json')), ...entry('/a.txt', body)],
    'PAX header on a directory': [
      ...meta('x', paxRecord('size', String(hidden.length))),
      header('/d/', 0, '5'),
      hidden,
    ],
  };

  test.each(Object.keys(variants))('%s', async (name) => {
    const gz = gzipSync(Buffer.concat([...variants[name]!, Buffer.alloc(1024)]));
    const file = join(tmp, 'v.tar.gz');
    writeFileSync(file, gz);
    // -P keeps the leading "/" of member names, so that each listed name can be extracted again
    const gnu = (args: string[]) => spawnSync('tar', ['-P', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const listing = gnu(['-tzf', file]);
    let files: Map<string, Uint8Array>;
    try {
      files = await readBundleFiles(gz);
    } catch (e) {
      expect((e as Error).message).toMatch(/^bundle /); // refused, with a reason
      return;
    }
    expect(listing.status, `GNU tar refuses it (${String(listing.stderr)}), the service read it`).toBe(0);
    const listed = listing.stdout
      .toString()
      .split('\n')
      .filter((n) => n && !n.endsWith('/'));
    expect([...files.keys()].sort()).toEqual(listed.map((n) => n.replace(/^\/+/, '')).sort());
    for (const member of listed) {
      const content = gnu(['-xzOf', file, member]);
      expect(content.status).toBe(0);
      expect(Buffer.from(files.get(member.replace(/^\/+/, ''))!).equals(content.stdout)).toBe(true);
    }
  });
});
