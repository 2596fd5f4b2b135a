// Where a policy comes from, and how we learn it changed: a bundle file, a policy folder, or an OPA
// bundle server URL. fetch() returns the content only when it differs from what it returned last time
// (content hash, or the server's ETag / 304 Not Modified, as OPA's bundle API does), so watchers and
// pollers may call it as often as they like. Files and folders are watched with fs.watch on their
// folder (a Kubernetes ConfigMap update is a `..data` symlink swap there, which a watch on the file
// itself would miss) plus a slow stat poll, because watches can be lost.
import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { DEFAULT_ENTRYPOINT, MAX_BUNDLE_BYTES } from '../policy/bundle.js';
import { buildWasmBundle } from '../policy/opa-cli.js';
import { loadPolicyBundle, type LoadedPolicy, type LoadPolicyOptions } from '../policy/policy.js';
import { listPolicyFolder } from '../policy/policy-folder.js';
import { getBundle, type BundleServerAuth } from './bundle-http.js';
import { isDirectory } from '../common/files.js';
import { sha256Hex } from '../common/hash.js';
import { errorMessage } from '../common/errors.js';

export type BundleSourceKind = 'file' | 'folder' | 'url';

/** One version of the policy, not yet loaded. */
export interface BundleVersion {
  /** content hash, or the bundle server's ETag */
  version: string;
  /** the bundle (`bundle.tar.gz`); a folder is compiled into one. Loading it is the sandbox's job. */
  bytes(): Promise<Uint8Array>;
}

export interface BundleSource {
  readonly location: string;
  readonly kind: BundleSourceKind;
  /** the policy folder's own `cases/` folder, when it has one */
  readonly casesPath: string | undefined;
  /** the current version, or undefined when it is the one returned last time (force: return it anyway) */
  fetch(opts?: { force?: boolean }): Promise<BundleVersion | undefined>;
  /** calls onChange(trigger) when the content may have changed; returns a function that stops watching */
  watch(onChange: (trigger: string) => void): () => void;
}

export interface BundleSourceOptions {
  /** URL poll interval; for files and folders, the interval of the stat poll behind fs.watch */
  pollMs?: number;
  /** fs.watch events closer together than this are one change (editors and `cp` write in steps) */
  debounceMs?: number;
  /** HTTP timeout for one bundle download */
  fetchTimeoutMs?: number;
  /** the entrypoint a policy folder is compiled for */
  entrypoint?: string;
  /** bundle server credentials, trust and redirect policy (bundle-http.ts) */
  auth?: BundleServerAuth;
}

const DEFAULT_URL_POLL_MS = 30_000;
const DEFAULT_FILE_POLL_MS = 10_000;
const DEFAULT_DEBOUNCE_MS = 250;
const DEFAULT_FETCH_TIMEOUT_MS = 30_000;

export function isBundleUrl(location: string): boolean {
  return /^https?:\/\//i.test(location);
}

/**
 * Loads a policy from a bundle file (`.tar.gz`, as `opa build -t wasm` writes) or from a folder of Rego
 * and data.json files, which is compiled with the opa CLI into a temporary bundle (removed afterwards).
 * Rejects with a message naming the location when the policy cannot be read, compiled or instantiated,
 * or lacks the entrypoint.
 */
export async function loadPolicy(location: string, opts: LoadPolicyOptions = {}): Promise<LoadedPolicy> {
  const bytes = await readPolicyBytes(location, opts.entrypoint ?? DEFAULT_ENTRYPOINT);
  return loadPolicyBundle(bytes, { ...opts, source: location });
}

/** A bundle file's bytes, or a policy folder compiled into a bundle (what loadPolicy loads). */
async function readPolicyBytes(location: string, entrypoint: string = DEFAULT_ENTRYPOINT): Promise<Uint8Array> {
  let info;
  try {
    info = await stat(location);
  } catch (e) {
    throw new Error(`policy ${location}: ${errorMessage(e)}`);
  }
  let bytes: Uint8Array;
  if (info.isDirectory()) {
    bytes = await compileFolder(location, entrypoint);
  } else {
    if (info.size > MAX_BUNDLE_BYTES)
      throw new Error(`policy ${location}: bundle is larger than ${MAX_BUNDLE_BYTES} bytes`);
    bytes = await readFile(location);
  }
  return bytes;
}

// A policy folder is development input; the evaluator (policy.ts) only ever sees the bundle built from it.
async function compileFolder(dir: string, entrypoint: string): Promise<Uint8Array> {
  const tmp = await mkdtemp(join(tmpdir(), 'egress-authz-policy-'));
  try {
    const out = join(tmp, 'bundle.tar.gz');
    await buildWasmBundle(dir, out, entrypoint);
    return await readFile(out);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** The source for a `--policy` value: a URL, or a path that must exist (a bundle file or a folder). */
export async function openBundleSource(location: string, opts: BundleSourceOptions = {}): Promise<BundleSource> {
  if (isBundleUrl(location)) return new UrlBundleSource(location, opts);
  let info;
  try {
    info = await stat(location);
  } catch (e) {
    throw new Error(`policy ${location}: ${errorMessage(e)}`);
  }
  if (info.isDirectory()) {
    const cases = join(location, 'cases');
    return new FolderSource(location, (await isDirectory(cases)) ? cases : undefined, opts);
  }
  return new FileSource(location, opts);
}

abstract class LocalSource implements BundleSource {
  abstract readonly kind: BundleSourceKind;
  protected lastVersion: string | undefined;

  constructor(
    readonly location: string,
    readonly casesPath: string | undefined,
    protected readonly opts: BundleSourceOptions,
  ) {}

  abstract fetch(opts?: { force?: boolean }): Promise<BundleVersion | undefined>;
  /** cheap fingerprint (stat data) that changes when the content may have */
  protected abstract signature(): Promise<string>;
  /** the folder to watch and whether an event names something of ours */
  protected abstract watched(): { dir: string; relevant: (name: string) => boolean };

  protected unchanged(version: string, force: boolean | undefined): boolean {
    const same = version === this.lastVersion;
    this.lastVersion = version;
    return same && !force;
  }

  watch(onChange: (trigger: string) => void): () => void {
    return watchLocalPath({ ...this.watched(), signature: () => this.signature(), ...this.opts }, onChange);
  }
}

export interface WatchedPath {
  /** the folder to watch */
  dir: string;
  /** whether an event's file name is something of ours */
  relevant: (name: string) => boolean;
  /** cheap fingerprint (stat data) that changes when the content may have */
  signature: () => Promise<string>;
  pollMs?: number;
  debounceMs?: number;
}

/**
 * fs.watch on the folder plus a slow stat poll (watches can be lost; a poll re-creates a lost one);
 * events closer than debounceMs are one change. Returns the function that stops watching.
 */
function watchLocalPath(w: WatchedPath, onChange: (trigger: string) => void): () => void {
  const { dir, relevant } = w;
  const debounceMs = w.debounceMs ?? DEFAULT_DEBOUNCE_MS;
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  let stopped = false;
  const changed = (trigger: string) => {
    clearTimeout(timer);
    timer = setTimeout(() => onChange(trigger), debounceMs);
    timer.unref();
  };
  const startWatch = () => {
    try {
      watcher = watch(dir, { persistent: false }, (_event, name) => {
        if (name === null || relevant(name.toString())) changed('watch');
      });
      watcher.on('error', () => {
        watcher?.close();
        watcher = undefined; // the stat poll re-creates it
      });
    } catch {
      watcher = undefined;
    }
  };
  startWatch();
  let last: Promise<string> = w.signature().catch(() => '');
  const poll = setInterval(() => {
    if (!watcher) startWatch();
    last = last.then(async (previous) => {
      const now = await w.signature().catch(() => '');
      if (!stopped && now !== previous) changed('poll');
      return now;
    });
  }, w.pollMs ?? DEFAULT_FILE_POLL_MS);
  poll.unref();
  return () => {
    stopped = true;
    clearInterval(poll);
    clearTimeout(timer);
    watcher?.close();
  };
}

/** A bundle file (`bundle.tar.gz`, as `egress-authz build` / `opa build -t wasm` write it). */
class FileSource extends LocalSource {
  readonly kind = 'file';

  constructor(location: string, opts: BundleSourceOptions) {
    super(location, undefined, opts);
  }

  async fetch(opts: { force?: boolean } = {}): Promise<BundleVersion | undefined> {
    const info = await stat(this.location);
    if (info.size > MAX_BUNDLE_BYTES)
      throw new Error(`policy ${this.location}: bundle is larger than ${MAX_BUNDLE_BYTES} bytes`);
    const bytes = await readFile(this.location);
    const version = `sha256:${sha256Hex(bytes)}`;
    if (this.unchanged(version, opts.force)) return undefined;
    return { version, bytes: () => Promise.resolve(bytes) };
  }

  protected signature(): Promise<string> {
    return fileSignature(this.location);
  }

  protected watched() {
    return fileWatched(this.location);
  }
}

/** stat data that changes with the file's content; follows symlinks, so a ConfigMap swap changes it */
async function fileSignature(location: string): Promise<string> {
  const s = await stat(location);
  return `${s.ino}:${s.size}:${s.mtimeMs}`;
}

function fileWatched(location: string): { dir: string; relevant: (name: string) => boolean } {
  const name = basename(location);
  // "..data" and friends: the ConfigMap symlink swap happens next to the file
  return { dir: dirname(resolve(location)), relevant: (n: string) => n === name || n.startsWith('..') };
}

/** Watches one file (and a ConfigMap swap next to it) for changes; returns the function that stops. */
export function watchLocalFile(
  location: string,
  opts: Pick<WatchedPath, 'pollMs' | 'debounceMs'>,
  onChange: (trigger: string) => void,
): () => void {
  return watchLocalPath({ ...fileWatched(location), signature: () => fileSignature(location), ...opts }, onChange);
}

/** A folder of Rego and data.json, compiled with the opa CLI on each load. */
class FolderSource extends LocalSource {
  readonly kind = 'folder';

  async fetch(opts: { force?: boolean } = {}): Promise<BundleVersion | undefined> {
    const hash = createHash('sha256');
    for (const file of listPolicyFolder(this.location)) {
      hash
        .update(`${file}\0`)
        .update(await readFile(join(this.location, file)))
        .update('\0');
    }
    const version = `sha256:${hash.digest('hex')}`;
    if (this.unchanged(version, opts.force)) return undefined;
    return { version, bytes: () => readPolicyBytes(this.location, this.opts.entrypoint) };
  }

  protected async signature(): Promise<string> {
    const parts: string[] = [];
    for (const file of listPolicyFolder(this.location)) {
      const s = await stat(join(this.location, file));
      parts.push(`${file}:${s.ino}:${s.size}:${s.mtimeMs}`);
    }
    return parts.join('\n');
  }

  protected watched() {
    return { dir: resolve(this.location), relevant: () => true };
  }
}

/** An OPA bundle server: GET with If-None-Match; 304 keeps the current policy. */
class UrlBundleSource implements BundleSource {
  readonly kind = 'url';
  readonly casesPath = undefined;
  private etag: string | undefined;
  private lastVersion: string | undefined;

  constructor(
    readonly location: string,
    private readonly opts: BundleSourceOptions,
  ) {}

  async fetch(opts: { force?: boolean } = {}): Promise<BundleVersion | undefined> {
    const headers: Record<string, string> = { accept: 'application/gzip, application/octet-stream;q=0.9, */*;q=0.1' };
    if (this.etag !== undefined && !opts.force) headers['if-none-match'] = this.etag;
    const res = await getBundle(this.location, {
      headers,
      timeoutMs: this.opts.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS,
      maxBytes: MAX_BUNDLE_BYTES,
      ...(this.opts.auth ? { auth: this.opts.auth } : {}),
    });
    if (res.status === 304) return undefined;
    if (res.status !== 200 || !res.body)
      throw new Error(`bundle server answered HTTP ${res.status} for ${this.location}`);
    const bytes = res.body;
    const etag = res.etag;
    // Remembered even if the bundle is then refused: the server is not asked for it again until it changes.
    this.etag = etag;
    const version = etag !== undefined ? `etag:${etag}` : `sha256:${sha256Hex(bytes)}`;
    const same = version === this.lastVersion;
    this.lastVersion = version;
    if (same && !opts.force) return undefined;
    return { version, bytes: () => Promise.resolve(bytes) };
  }

  watch(onChange: (trigger: string) => void): () => void {
    const timer = setInterval(() => onChange('poll'), this.opts.pollMs ?? DEFAULT_URL_POLL_MS);
    timer.unref();
    return () => clearInterval(timer);
  }
}
