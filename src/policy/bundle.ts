// Reads an OPA bundle (`bundle.tar.gz`, as `opa build -t wasm` writes it and bundle servers serve it)
// from memory. A bundle may come from a remote server, so it is treated as hostile: sizes are capped
// before and after decompression, and only plain files with safe relative paths are read.
import { promisify } from 'node:util';
import { gunzip, gzipSync } from 'node:zlib';
import { checkJsonLimits, DATA_JSON_LIMITS } from './json-limits.js';
import { Parser, type ReadEntry } from 'tar';
import { verifyBundleFiles, type BundleVerification } from './bundle-signing.js';
import { isObject } from '../common/json.js';
import { errorMessage } from '../common/errors.js';

const gunzipAsync = promisify(gunzip);

/** The policy rule that decides, unless told otherwise (the bundle's manifest names the entrypoints it was built for). */
export const DEFAULT_ENTRYPOINT = 'egress/authz/decision';

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
    throw new Error(`bundle is not a gzip-compressed tar file: ${errorMessage(e)}`);
  }
  const files = new Map<string, Uint8Array>();
  for (const entry of await readTar(tar)) {
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
export async function readBundle(
  bytes: Uint8Array,
  opts: { entrypoint?: string; verification?: BundleVerification } = {},
): Promise<PolicyBundle> {
  const files = await readBundleFiles(bytes);
  // Before anything of the bundle is parsed: an unsigned or tampered bundle is refused as a whole.
  if (opts.verification) await verifyBundleFiles(files, opts.verification);

  let manifest: BundleManifest | undefined;
  const manifestBytes = files.get('.manifest');
  if (manifestBytes && manifestBytes.byteLength > MAX_MANIFEST_BYTES)
    throw new Error(`bundle .manifest is larger than ${MAX_MANIFEST_BYTES} bytes`);
  if (manifestBytes) {
    const parsed = parseJson(manifestBytes, '.manifest');
    if (!isObject(parsed)) throw new Error('bundle .manifest is not a JSON object');
    manifest = checkManifest(parsed);
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
  if (manifest?.roots !== undefined) checkRoots(manifest.roots, data, opts.entrypoint);

  const modulePath = bundleModulePath(manifest, opts.entrypoint);
  const wasm = files.get(modulePath);
  if (!wasm) throw new Error(`bundle has no ${modulePath} (build it with: opa build -t wasm)`);
  const dataJson = dataFiles === 1 ? files.get('data.json') : undefined;
  return { wasm, data, ...(manifest ? { manifest } : {}), ...(dataJson ? { dataJson } : {}) };
}

/** Longest revision accepted: it goes into every CheckResponse, decision log line and metric label. */
const MAX_REVISION_CHARS = 256;
/** Longest manifest string that can reach an error message or a log line (roots, Wasm paths). */
const MAX_MANIFEST_STRING_CHARS = 256;
const MAX_MANIFEST_LIST = 256;
const MAX_MANIFEST_BYTES = 1024 * 1024;

/**
 * A string safe to copy into responses, headers, metrics and logs: bounded, and printable (no control,
 * format or line-separator characters that would split a log line or a header). Returns why not.
 */
function unprintable(value: string, max: number): string | undefined {
  if (value.length > max) return `is ${value.length} characters long (at most ${max})`;
  if (/[\p{C}\p{Zl}\p{Zp}]/u.test(value)) return 'has control or unprintable characters';
  return undefined;
}

/**
 * The manifest fields that travel further than this file (revision, roots, Wasm entrypoints and paths)
 * must be strings of bounded, printable text: a 70 kB revision in every CheckResponse's metadata made
 * every Check fail while the reload said success.
 */
function checkManifest(manifest: Record<string, unknown>): BundleManifest {
  const bad = (field: string, why: string) => new Error(`bundle .manifest ${field} ${why}`);
  const text = (field: string, v: unknown, max = MAX_MANIFEST_STRING_CHARS) => {
    if (typeof v !== 'string') throw bad(field, `must be a string, got ${v === null ? 'null' : typeof v}`);
    const why = unprintable(v, max);
    if (why) throw bad(field, why);
  };
  const list = (field: string, v: unknown): unknown[] => {
    if (!Array.isArray(v)) throw bad(field, 'must be a list');
    if (v.length > MAX_MANIFEST_LIST) throw bad(field, `has ${v.length} entries (at most ${MAX_MANIFEST_LIST})`);
    return v;
  };
  if (manifest.revision !== undefined) text('revision', manifest.revision, MAX_REVISION_CHARS);
  if (manifest.roots !== undefined) list('roots', manifest.roots).forEach((r, i) => text(`roots[${i}]`, r));
  if (manifest.wasm !== undefined) {
    list('wasm', manifest.wasm).forEach((w, i) => {
      if (!isObject(w)) throw bad(`wasm[${i}]`, 'must be an object');
      text(`wasm[${i}].entrypoint`, w.entrypoint);
      text(`wasm[${i}].module`, w.module);
    });
  }
  return manifest;
}

/**
 * A bundle owns only the parts of `data` its manifest's roots name (OPA refuses to activate one that
 * writes outside them): every data path must lie under a root, and so must the entrypoint. The root
 * "" owns everything.
 */
function checkRoots(roots: string[], data: Record<string, unknown>, entrypoint: string | undefined): void {
  const owned = roots.map((r) => r.split('/').filter((s) => s !== ''));
  if (owned.some((r) => r.length === 0)) return;
  const under = (path: string[]) => owned.some((r) => r.length <= path.length && r.every((s, i) => s === path[i]));
  const above = (path: string[]) => owned.some((r) => r.length > path.length && path.every((s, i) => s === r[i]));
  const walk = (node: unknown, path: string[]): void => {
    if (path.length > 0 && under(path)) return;
    if (path.length === 0 || (above(path) && isObject(node))) {
      for (const [key, value] of Object.entries(node as Record<string, unknown>)) walk(value, [...path, key]);
      return;
    }
    throw new Error(`bundle data at /${path.join('/')} is outside the manifest roots (${JSON.stringify(roots)})`);
  };
  walk(data, []);
  if (entrypoint !== undefined && !under(entrypoint.split('/').filter((s) => s !== '')))
    throw new Error(`bundle entrypoint ${entrypoint} is outside the manifest roots (${JSON.stringify(roots)})`);
}

/** Which file of the bundle is the Wasm module for `entrypoint` (the manifest's choice, else policy.wasm). */
export function bundleModulePath(manifest: BundleManifest | undefined, entrypoint: string | undefined): string {
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
    throw new Error(`bundle file ${path} is not valid JSON: ${errorMessage(e)}`);
  }
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

// The archive is read by node-tar's parser, the implementation npm itself relies on, so PAX records
// (size, path, linkpath and the rest), GNU long names and every other extension mean here what they
// mean to GNU tar and to `opa inspect`: a reviewer who lists a bundle with standard tools sees the
// files the service reads. Whatever the parser only warns about (bad checksum, truncation, an
// oversized extended header it would skip) is a refusal here, and so is every entry that is not a
// plain file or a folder: links, devices, FIFOs, and the vendor types node-tar skips but GNU tar
// would extract as files.
const FILE_TYPES = new Set(['File', 'OldFile', 'ContiguousFile']);
/** PAX and GNU long-name records larger than this are refused (node-tar would skip them). */
const MAX_META_ENTRY_BYTES = 64 * 1024;

function readTar(tar: Uint8Array): Promise<TarEntry[]> {
  return new Promise((resolve, reject) => {
    const entries: TarEntry[] = [];
    let failure: string | undefined;
    let sawEnd = false;
    const refuse = (reason: string) => {
      failure ??= reason;
    };
    const parser = new Parser({
      strict: false,
      maxMetaEntrySize: MAX_META_ENTRY_BYTES,
      onwarn: (code: string, message: string) => refuse(`bundle tar archive is damaged (${code}): ${message}`),
    });
    parser.on('ignoredEntry', (entry: ReadEntry) =>
      refuse(`bundle entry ${JSON.stringify(entry.path)} cannot be read (tar type ${entry.type})`),
    );
    parser.on('eof', () => void (sawEnd = true));
    parser.on('meta', (text: string) => {
      const problem = paxProblem(text);
      if (problem) refuse(`bundle tar archive has a malformed extended header: ${problem}`);
    });
    parser.on('entry', (entry: ReadEntry) => {
      const chunks: Buffer[] = [];
      entry.on('data', (chunk: Buffer) => void chunks.push(chunk));
      entry.on('end', () => {
        if (entry.type === 'Directory') return;
        if (!FILE_TYPES.has(entry.type)) {
          refuse(`bundle entry ${JSON.stringify(entry.path)} is not a regular file (tar type ${entry.type})`);
          return;
        }
        try {
          entries.push({ path: safePath(entry.path), body: Buffer.concat(chunks) });
        } catch (e) {
          refuse(errorMessage(e));
        }
      });
    });
    parser.on('error', (e: Error) => refuse(`bundle tar archive is damaged: ${e.message}`));
    parser.on('end', () => {
      if (failure === undefined && !sawEnd) failure = 'bundle tar archive ends without its end-of-archive marker';
      if (failure !== undefined) reject(new Error(failure));
      else resolve(entries);
    });
    parser.end(Buffer.from(tar.buffer, tar.byteOffset, tar.byteLength));
  });
}

const PAX_INTEGER_KEYS = new Set(['size', 'uid', 'gid', 'mode', 'dev', 'ino', 'nlink']);
const PAX_TIME_KEYS = new Set(['mtime', 'atime', 'ctime']);

/**
 * Why a PAX record set would be read differently by node-tar (lenient: `+"0x10"` is a size) and GNU
 * tar (strict), or undefined when it is well-formed. A GNU long name (not record-shaped) passes.
 */
function paxProblem(text: string): string | undefined {
  if (!/^\d+ [^=\n]*=/.test(text)) return undefined;
  let rest = Buffer.from(text, 'utf8');
  while (rest.length > 0) {
    const m = /^([1-9]\d{0,8}) /.exec(rest.subarray(0, 12).toString('latin1'));
    if (!m) return 'a record does not start with its length';
    const len = Number(m[1]);
    if (len > rest.length || rest[len - 1] !== 0x0a) return 'a record length does not match its text';
    const record = rest.subarray(m[0].length, len - 1).toString('utf8');
    rest = rest.subarray(len);
    const eq = record.indexOf('=');
    if (eq <= 0) return 'a record has no key';
    const key = record.slice(0, eq);
    const value = record.slice(eq + 1);
    if (value.includes('\0')) return `record ${key} contains NUL`;
    if (PAX_INTEGER_KEYS.has(key) && !(/^\d{1,15}$/.test(value) && Number.isSafeInteger(Number(value))))
      return `invalid ${key}=${JSON.stringify(value.slice(0, 40))}`;
    if (PAX_TIME_KEYS.has(key) && !/^-?\d{1,15}(\.\d{1,9})?$/.test(value))
      return `invalid ${key}=${JSON.stringify(value.slice(0, 40))}`;
  }
  return undefined;
}
