// Reads an OPA bundle (`bundle.tar.gz`, as `opa build -t wasm` writes it and bundle servers serve it)
// from memory. A bundle may come from a remote server, so it is treated as hostile: sizes are capped
// before and after decompression, and only plain files with safe relative paths are read.
import { promisify } from 'node:util';
import { gunzip, gzipSync } from 'node:zlib';
import { checkJsonLimits, DATA_JSON_LIMITS } from './json-limits.js';

const gunzipAsync = promisify(gunzip);

/** Refuse bundles larger than this, compressed or unpacked. */
export const MAX_BUNDLE_BYTES = 64 * 1024 * 1024;

export interface BundleManifest {
  revision?: string;
  roots?: string[];
  wasm?: { entrypoint: string; module: string }[];
  [key: string]: unknown;
}

export interface PolicyBundle {
  /** the compiled policy module */
  wasm: Uint8Array;
  /** every data.json of the bundle, merged at its folder's path (a/b/data.json → data.a.b) */
  data: Record<string, unknown>;
  manifest?: BundleManifest;
  /**
   * The bytes of the bundle's only data.json when it is at the root (what `opa build` writes): the
   * policy can parse them itself, without the JS object being serialised back to text (8x the CPU).
   */
  dataJson?: Uint8Array;
}

interface TarEntry {
  path: string;
  body: Uint8Array;
}

/** The bundle's files by path (leading "/" removed), after the size, path and duplicate checks. */
export async function readBundleFiles(bytes: Uint8Array): Promise<Map<string, Uint8Array>> {
  if (bytes.byteLength > MAX_BUNDLE_BYTES) throw new Error(`bundle is larger than ${MAX_BUNDLE_BYTES} bytes`);
  let tar: Uint8Array;
  try {
    tar = await gunzipAsync(bytes, { maxOutputLength: MAX_BUNDLE_BYTES });
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ERR_BUFFER_TOO_LARGE' || e instanceof RangeError)
      throw new Error(`bundle unpacks to more than ${MAX_BUNDLE_BYTES} bytes`);
    throw new Error(`bundle is not a gzip-compressed tar file: ${(e as Error).message}`);
  }
  const files = new Map<string, Uint8Array>();
  for (const entry of readTar(tar)) {
    if (files.has(entry.path)) throw new Error(`bundle has two entries for ${entry.path}`);
    files.set(entry.path, entry.body);
  }
  return files;
}

/**
 * A bundle from files: a ustar archive, gzip-compressed, entries in path order with fixed times and
 * owners, so the same files always give the same bytes (and the same content-hash revision).
 */
export function writeBundleFiles(files: ReadonlyMap<string, Uint8Array>): Buffer {
  const blocks: Uint8Array[] = [];
  for (const path of [...files.keys()].sort()) {
    const body = files.get(path)!;
    // Rooted names, as `opa build` writes them: OPA matches the manifest's "/policy.wasm" against them.
    const name = path.startsWith('/') ? path : `/${path}`;
    if (Buffer.byteLength(name) > 100) throw new Error(`bundle path ${name} is longer than 100 bytes`);
    const header = Buffer.alloc(512);
    header.write(name, 0, 'utf8');
    header.write('0000644\0', 100, 'ascii');
    header.write('0000000\0', 108, 'ascii');
    header.write('0000000\0', 116, 'ascii');
    header.write(`${body.byteLength.toString(8).padStart(11, '0')}\0`, 124, 'ascii');
    header.write('00000000000\0', 136, 'ascii');
    header.write('        ', 148, 'ascii');
    header.write('0', 156, 'ascii');
    header.write('ustar\0', 257, 'ascii');
    header.write('00', 263, 'ascii');
    let sum = 0;
    for (const b of header) sum += b;
    header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii');
    blocks.push(header, body, Buffer.alloc((512 - (body.byteLength % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return gzipSync(Buffer.concat(blocks));
}

/**
 * Unpacks and checks a bundle. `entrypoint` picks the Wasm module when the manifest lists several.
 * Rejects with a message saying what is wrong (not gzip, too large, unsafe path, no policy.wasm, …).
 */
export async function readBundle(bytes: Uint8Array, opts: { entrypoint?: string } = {}): Promise<PolicyBundle> {
  const files = await readBundleFiles(bytes);

  let manifest: BundleManifest | undefined;
  const manifestBytes = files.get('.manifest');
  if (manifestBytes) {
    const parsed = parseJson(manifestBytes, '.manifest');
    if (!isObject(parsed)) throw new Error('bundle .manifest is not a JSON object');
    manifest = parsed as BundleManifest;
  }

  const data: Record<string, unknown> = {};
  let dataFiles = 0;
  let values = 0;
  for (const [path, body] of [...files].sort(([a], [b]) => a.localeCompare(b))) {
    const segments = path.split('/');
    const name = segments.pop();
    if (name === 'data.yaml' || name === 'data.yml')
      throw new Error(`bundle file ${path}: YAML data is not supported, use data.json`);
    if (name !== 'data.json') continue;
    // Before JSON.parse: what cannot fit is refused in one pass, not discovered by running out of heap.
    const counted = checkJsonLimits(body, { ...DATA_JSON_LIMITS, maxValues: DATA_JSON_LIMITS.maxValues - values });
    if (!counted.ok) throw new Error(`bundle file ${path} ${counted.reason}`);
    values += counted.value;
    dataFiles++;
    mergeAt(data, segments, parseJson(body, path), path);
  }

  const modulePath = wasmModulePath(manifest, opts.entrypoint);
  const wasm = files.get(modulePath);
  if (!wasm) throw new Error(`bundle has no ${modulePath} (build it with: opa build -t wasm)`);
  const dataJson = dataFiles === 1 ? files.get('data.json') : undefined;
  return { wasm, data, ...(manifest ? { manifest } : {}), ...(dataJson ? { dataJson } : {}) };
}

function wasmModulePath(manifest: BundleManifest | undefined, entrypoint: string | undefined): string {
  const modules = Array.isArray(manifest?.wasm) ? manifest.wasm : [];
  const chosen =
    modules.find((m) => isObject(m) && m.entrypoint === entrypoint) ?? (modules.length === 1 ? modules[0] : undefined);
  if (chosen && typeof chosen.module === 'string') return safePath(chosen.module);
  return 'policy.wasm';
}

function parseJson(bytes: Uint8Array, path: string): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new Error(`bundle file ${path} is not valid JSON: ${(e as Error).message}`);
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** OPA's merge: objects merge key by key; two non-object values at one path are a conflict. */
function mergeAt(root: Record<string, unknown>, segments: string[], value: unknown, path: string): void {
  const last = segments.pop();
  if (last === undefined) {
    if (!isObject(value)) throw new Error(`bundle file ${path}: root data must be a JSON object`);
    mergeObjects(root, value, path);
    return;
  }
  let node = root;
  for (const segment of segments) {
    const next = own(node, segment);
    if (next === undefined) {
      const created: Record<string, unknown> = {};
      defineKey(node, segment, created);
      node = created;
    } else if (isObject(next)) {
      node = next;
    } else {
      throw new Error(`bundle file ${path} conflicts with data already at /${segments.join('/')}`);
    }
  }
  mergeObjects(node, { [last]: value }, path);
}

function mergeObjects(into: Record<string, unknown>, from: Record<string, unknown>, path: string): void {
  for (const [key, value] of Object.entries(from)) {
    const existing = own(into, key);
    if (existing === undefined) defineKey(into, key, value);
    else if (isObject(existing) && isObject(value)) mergeObjects(existing, value, path);
    else throw new Error(`bundle file ${path} conflicts with existing data at key ${JSON.stringify(key)}`);
  }
}

function own(obj: Record<string, unknown>, key: string): unknown {
  return Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined;
}

// Plain assignment of "__proto__" would change the prototype instead of adding data.
function defineKey(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/** A bundle path made relative ("/data.json" → "data.json"); "..", backslashes and NUL are refused. */
function safePath(raw: string): string {
  const segments = raw.split('/').filter((s) => s !== '' && s !== '.');
  if (raw.includes('\\') || raw.includes('\0') || segments.some((s) => s === '..') || segments.length === 0) {
    throw new Error(`bundle entry has an unsafe path: ${JSON.stringify(raw)}`);
  }
  return segments.join('/');
}

// Minimal ustar reader: regular files and directories, GNU long names ('L') and PAX path records
// ('x'), which Go's archive/tar (used by opa) writes for long paths. Links and devices are refused.
function* readTar(tar: Uint8Array): Generator<TarEntry> {
  let offset = 0;
  let longName: string | undefined;
  while (offset + 512 <= tar.byteLength) {
    const header = tar.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) return;
    if (!checksumMatches(header)) throw new Error(`bundle tar header at offset ${offset} has a bad checksum`);
    const size = octal(header.subarray(124, 136), offset);
    const type = String.fromCharCode(header[156] ?? 0);
    const start = offset + 512;
    const end = start + size;
    if (end > tar.byteLength) throw new Error(`bundle tar entry at offset ${offset} is truncated`);
    const body = tar.subarray(start, end);
    offset = start + Math.ceil(size / 512) * 512;

    if (type === 'L') {
      longName = cString(body);
      continue;
    }
    if (type === 'x') {
      longName = paxPath(body) ?? longName;
      continue;
    }
    if (type === 'g') continue;
    const prefix = cString(header.subarray(345, 500));
    const name =
      longName ?? (prefix ? `${prefix}/${cString(header.subarray(0, 100))}` : cString(header.subarray(0, 100)));
    longName = undefined;
    if (type === '5') continue;
    if (type !== '0' && type !== '\0' && type !== '7') {
      throw new Error(`bundle entry ${JSON.stringify(name)} is not a regular file (tar type ${JSON.stringify(type)})`);
    }
    yield { path: safePath(name), body };
  }
  throw new Error('bundle tar archive ends without its end-of-archive marker');
}

function checksumMatches(header: Uint8Array): boolean {
  const stored = parseInt(cString(header.subarray(148, 156)).trim() || 'x', 8);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : (header[i] ?? 0);
  return stored === sum;
}

function octal(field: Uint8Array, offset: number): number {
  const text = cString(field).trim();
  if (!/^[0-7]+$/.test(text)) throw new Error(`bundle tar header at offset ${offset} has an invalid size`);
  const n = parseInt(text, 8);
  if (n > MAX_BUNDLE_BYTES) throw new Error(`bundle tar entry at offset ${offset} is too large`);
  return n;
}

function cString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return new TextDecoder().decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

function paxPath(body: Uint8Array): string | undefined {
  // records are "<len> <key>=<value>\n"
  let path: string | undefined;
  for (const record of new TextDecoder().decode(body).split('\n')) {
    const m = /^\d+ path=(.*)$/s.exec(record);
    if (m) path = m[1];
  }
  return path;
}
