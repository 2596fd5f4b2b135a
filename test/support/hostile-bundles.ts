// Bundles that attack the service that loads them (issue 14), made at test time: tiny hand-assembled
// Wasm modules, data documents that are small compressed and huge parsed, and Rego that is slow on
// purpose. Each is a complete bundle.tar.gz.
import { readFileSync, writeFileSync, mkdirSync, cpSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { readBundleFiles, writeBundleFiles } from '../../src/policy/bundle.js';
import { buildWasmBundle } from '../../src/policy/opa-cli.js';
import { POLICY_DIR } from './service.js';

const DEFAULT_BUNDLE = join(import.meta.dirname, '..', '..', 'dist', 'policy', 'bundle.tar.gz');

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

function section(id: number, body: number[]): number[] {
  return [id, ...uleb(body.length), ...body];
}

const HEADER = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
const TYPE_VOID = section(1, [1, 0x60, 0, 0]); // one type: () -> ()
const ONE_FUNC = section(3, [1, 0]);
const START_0 = section(8, [0]);
function code(body: number[]): number[] {
  const fn = [0 /* no locals */, ...body, 0x0b];
  return section(10, [1, ...uleb(fn.length), ...fn]);
}

/** 32 bytes: a start function that loops forever (`loop br 0 end`), run by instantiation itself. */
export function infiniteStartWasm(): Uint8Array {
  return Uint8Array.from([...HEADER, ...TYPE_VOID, ...ONE_FUNC, ...START_0, ...code([0x03, 0x40, 0x0c, 0x00, 0x0b])]);
}

/**
 * A module with its own memory of `pages` (64 KiB each, min = max) whose start function writes every
 * byte of it (memory.fill), so the pages are really resident: outside the SDK's capped memory.
 */
export function ownMemoryWasm(pages: number): Uint8Array {
  const memory = section(5, [1, 0x01, ...uleb(pages), ...uleb(pages)]);
  const bytes = pages * 65536;
  // i32.const 0; i32.const 1; i32.const bytes; memory.fill 0
  const fill = [0x41, 0x00, 0x41, 0x01, 0x41, ...sleb(bytes), 0xfc, 0x0b, 0x00];
  return Uint8Array.from([...HEADER, ...TYPE_VOID, ...ONE_FUNC, ...memory, ...START_0, ...code(fill)]);
}

function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) return [...out, b];
    out.push(b | 0x80);
  }
}

/** The default bundle with files replaced (e.g. policy.wasm or data.json). */
export async function defaultBundleWith(replace: Record<string, Uint8Array | string>): Promise<Buffer> {
  const files = await readBundleFiles(readFileSync(DEFAULT_BUNDLE));
  for (const [path, body] of Object.entries(replace))
    files.set(path, typeof body === 'string' ? Buffer.from(body) : body);
  return writeBundleFiles(files);
}

/** `{"pad":[0,0,…]}` of about `bytes` bytes: a few KB compressed. */
export function zerosData(bytes: number): Buffer {
  const n = Math.floor(bytes / 2);
  const body = Buffer.alloc(n * 2, '0,');
  body[body.length - 1] = 0x5d; // ']'
  return Buffer.concat([
    Buffer.from('{"egress":{"trust_domain":"cluster.local","tenants":{}},"pad":['),
    body,
    Buffer.from('}'),
  ]);
}

/** `{"pad":[[[[…` nested `depth` deep (never closed). */
export function nestedData(depth: number): Buffer {
  return Buffer.concat([Buffer.from('{"pad":'), Buffer.alloc(depth, '[')]);
}

/**
 * A copy of the default policy whose allow rule also runs a comprehension over every pair of
 * `data.egress.pad` (n entries): each allow costs n² steps (n = 1,500: about 2 s on a quiet core).
 */
export async function quadraticBundle(root: string, name: string, n: number, revision: string): Promise<Buffer> {
  const dir = join(root, `${name}-src`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  cpSync(join(POLICY_DIR, 'egress_authz.rego'), join(dir, 'egress_authz.rego'));
  const rego = readFileSync(join(dir, 'egress_authz.rego'), 'utf8');
  const slowed = rego.replace(
    '\tnot denial\n\tis_string(tenant.snat_pool)',
    '\tnot denial\n\tslow_ok\n\tis_string(tenant.snat_pool)',
  );
  if (slowed === rego) throw new Error('the default policy changed: the quadratic rule has no place to go');
  writeFileSync(
    join(dir, 'egress_authz.rego'),
    `${slowed}\nslow_ok if count([1 | some i, j; data.egress.pad[i] < data.egress.pad[j]]) >= 0\n`,
  );
  const data = JSON.parse(readFileSync(join(POLICY_DIR, 'data.json'), 'utf8'));
  data.egress.pad = Array.from({ length: n }, (_, i) => i);
  writeFileSync(join(dir, 'data.json'), JSON.stringify(data));
  const out = join(root, `${name}.tar.gz`);
  await buildWasmBundle(dir, out, undefined, { revision });
  return readFileSync(out);
}
