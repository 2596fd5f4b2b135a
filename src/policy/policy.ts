// The policy engine: a Rego policy compiled to Wasm, evaluated in-process with the OPA Wasm SDK.
// Whatever the policy does — errors, returns nothing, returns garbage, runs too long — evaluate() gives
// a Result, never an exception, so the decision step can deny with a reason.
import { createRequire } from 'node:module';
import type { LoadedPolicy as OpaWasmPolicy } from '@open-policy-agent/opa-wasm';
import { DEFAULT_ENTRYPOINT, readBundle, type PolicyBundle } from './bundle.js';
import type { BundleVerification } from './bundle-signing.js';
import { footprintFromManifest, type InputFootprint } from './input-footprint.js';
import { memoKey } from './memo-key.js';
import { checkWasmLimits } from './wasm-limits.js';
import {
  captureWasmImage,
  dumpWasmData,
  restoreWasmImage,
  restoreWasmImageSync,
  type WasmImage,
} from './wasm-image.js';
import { summarisePolicyData, type PolicySummary } from './policy-summary.js';
import { sha256Hex } from '../common/hash.js';
import { isObject } from '../common/json.js';
import { ByteLru, stringBytes } from '../common/lru.js';
import { errorMessage } from '../common/errors.js';
import { fail, ok, type Result } from '../common/result.js';

// The SDK's ESM entry exports only loadPolicy; its CommonJS entry also has loadPolicySync.
const opaWasm = createRequire(import.meta.url)(
  '@open-policy-agent/opa-wasm',
) as typeof import('@open-policy-agent/opa-wasm');

// Node has the WebAssembly global, but the project's `lib` (ES2023, no DOM) does not declare it.
type CompiledWasm = object;
declare const WebAssembly: { compile(bytes: Uint8Array): Promise<CompiledWasm> };

const DEFAULT_EVAL_BUDGET_MS = 50;

/** The policy's answer, normalised from any accepted result shape. */
export interface PolicyResult {
  allow: boolean;
  /** "" on every deny, and on an allow whose policy named no pool */
  snat_pool: string;
  reason: string;
  http_status?: number;
  headers?: Record<string, string>;
  body?: string;
}

export interface LoadedPolicy {
  /** the bundle manifest's revision, else `sha256:<12 hex>` of the bundle bytes */
  readonly revision: string;
  /** where it was loaded from (path as given) */
  readonly source: string;
  readonly entrypoint: string;
  /** synchronous, never throws */
  evaluate(input: unknown): Result<PolicyResult>;
  /** the input fields the policy reads and whether its answers are remembered; undefined: whole input */
  readonly inputFootprint?: InputFootprint;
  // Optional so that stand-ins (test fakes) need only the members above.
  /** the data document the policy evaluates against (do not mutate) */
  readonly data?: Readonly<Record<string, unknown>>;
  /**
   * The same compiled policy with `overlay` deep-merged over its data (objects merge, other values
   * replace); used by case files that carry their own data. Revision gets a `+data:<hash>` suffix.
   */
  withDataOverlay?(overlay: Record<string, unknown>): Promise<LoadedPolicy>;
  /** the bundle bytes it was loaded from, when loaded with `keepBundle` (to hand to other processes) */
  readonly bundle?: Uint8Array;
  /** what metrics read of the data, made when the data was parsed */
  readonly summary?: PolicySummary;
  /** its memory image: when loaded with `captureImage`, or restored from one (loadPolicyImage) */
  readonly image?: PolicyImage;
}

/**
 * A policy as the thread that loaded it hands it to the thread that serves it: the module and its
 * memory right after the data was set (wasm-image.ts), so the serving thread parses nothing. Plain data
 * (transfer `wasm.buffer` and the chunks' buffers when posting it).
 */
export interface PolicyImage {
  wasm: Uint8Array;
  memory: WasmImage;
  revision: string;
  entrypoint: string;
  footprint: InputFootprint | undefined;
  summary: PolicySummary;
}

export interface LoadPolicyOptions {
  entrypoint?: string;
  /** an evaluation taking longer than this is a failure (fail closed) */
  evalBudgetMs?: number;
  /** false: always hand the policy the whole input and never remember answers (input-footprint.ts) */
  memoize?: boolean;
  /** keep the bundle bytes on the policy (`bundle`): the primary of `serve --workers` sends them on */
  keepBundle?: boolean;
  /** the byte bound of the remembered answers (default DEFAULT_MEMO_BYTES) */
  memoBytes?: number;
  /** set: only a bundle signed by this key is loaded (bundle-signing.ts) */
  verification?: BundleVerification;
  /**
   * Capture the memory image (`image`) once the data is set, before any evaluation: what a loader
   * thread hands the serving thread. No image when the engine is not shaped as expected (wasm-image.ts).
   */
  captureImage?: boolean;
}

/** Loads a bundle already in memory (e.g. fetched from a bundle server). */
export async function loadPolicyBundle(
  bytes: Uint8Array,
  opts: LoadPolicyOptions & { source: string },
): Promise<LoadedPolicy> {
  const entrypoint = opts.entrypoint ?? DEFAULT_ENTRYPOINT;
  const where = `policy ${opts.source}`;
  let bundle: PolicyBundle | undefined;
  try {
    bundle = await readBundle(bytes, { entrypoint, ...(opts.verification ? { verification: opts.verification } : {}) });
  } catch (e) {
    throw new Error(`${where}: ${errorMessage(e)}`);
  }
  const { wasm, manifest, dataJson } = bundle;
  const summary = summarisePolicyData(bundle.data);
  // Nothing may hold the parsed data while the policy parses the bytes: each growth of the Wasm memory
  // makes V8 collect garbage, and a live 60 MiB object turned 4 s of CPU into 37 s (18 MiB data.json).
  const data = dataJson ? undefined : bundle.data;
  // eslint-disable-next-line no-useless-assignment -- dropping the reference is the point (see above)
  bundle = undefined;
  const limits = checkWasmLimits(wasm, {
    maxMemoryPages: WASM_MEMORY.maximum,
    maxTableEntries: MAX_TABLE_ENTRIES,
  });
  if (!limits.ok) throw new Error(`${where}: ${limits.reason}`);
  let module: CompiledWasm;
  try {
    module = await WebAssembly.compile(wasm);
  } catch (e) {
    throw new Error(`${where}: policy.wasm is not a valid WebAssembly module: ${errorMessage(e)}`);
  }
  const manifestRevision = manifest?.revision;
  const revision =
    typeof manifestRevision === 'string' && manifestRevision !== ''
      ? manifestRevision
      : `sha256:${sha256Hex(bytes).slice(0, 12)}`;
  return WasmPolicy.create(
    module,
    { data, dataJson },
    {
      revision,
      source: opts.source,
      entrypoint,
      evalBudgetMs: opts.evalBudgetMs ?? DEFAULT_EVAL_BUDGET_MS,
      footprint: opts.memoize === false ? undefined : footprintFromManifest(manifest, wasm),
      ...(opts.keepBundle ? { bundle: bytes } : {}),
      memoBytes: opts.memoBytes,
      summary,
      ...(opts.captureImage ? { captureFrom: wasm } : {}),
    },
  );
}

/**
 * The policy a memory image gives (see PolicyImage): compiled asynchronously, its memory restored in
 * steps; decides exactly as the policy the image was captured from (test/policy/wasm-image.test.ts).
 * `bundle`: the bytes to keep for other processes (`keepBundle`).
 */
export async function loadPolicyImage(
  image: PolicyImage,
  opts: LoadPolicyOptions & { source: string; bundle?: Uint8Array },
): Promise<LoadedPolicy> {
  const where = `policy ${opts.source}`;
  const limits = checkWasmLimits(image.wasm, {
    maxMemoryPages: WASM_MEMORY.maximum,
    maxTableEntries: MAX_TABLE_ENTRIES,
  });
  if (!limits.ok) throw new Error(`${where}: ${limits.reason}`);
  let module: CompiledWasm;
  try {
    module = await WebAssembly.compile(image.wasm);
  } catch (e) {
    throw new Error(`${where}: policy.wasm is not a valid WebAssembly module: ${errorMessage(e)}`);
  }
  return WasmPolicy.create(
    module,
    { image },
    {
      revision: image.revision,
      source: opts.source,
      entrypoint: image.entrypoint,
      evalBudgetMs: opts.evalBudgetMs ?? DEFAULT_EVAL_BUDGET_MS,
      footprint: image.footprint,
      ...(opts.bundle ? { bundle: opts.bundle } : {}),
      memoBytes: opts.memoBytes,
      summary: image.summary,
    },
  );
}

interface WasmPolicyMeta {
  revision: string;
  source: string;
  entrypoint: string;
  evalBudgetMs: number;
  footprint: InputFootprint | undefined;
  bundle?: Uint8Array;
  memoBytes?: number;
  summary: PolicySummary;
  /** the module's bytes: capture the memory image once the data is set */
  captureFrom?: Uint8Array;
}

/** Where an instance's data comes from: the parsed document or its bytes, or a memory image. */
type DataOrigin =
  | { data: Record<string, unknown> | undefined; dataJson: Uint8Array | undefined; image?: undefined }
  | { image: PolicyImage };

// Remembered answers, per policy instance (a new revision or data overlay starts empty), keyed by the
// SHA-256 of the projected input (memo-key.ts): a fixed 32-character key however long the input. A cluster's
// answers are few distinct values (allow + pool, deny + reason), so equal answers are stored once
// (interned, up to MEMO_INTERNED of them, counted in the bytes once) and an entry costs its key and
// its Map slot. Bounded in bytes; LRU beyond. The default holds 100,000 answers (with the certificate
// cache's 24 MiB, 100,000 workloads measured 29 MiB of heap together: docs/performance.md).
const DEFAULT_MEMO_BYTES = 11 * 1024 * 1024;
const MEMO_INTERNED = 1024;
/** the interned answers' share: a quarter of the bound, at most this (1,024 answers need far less) */
const MEMO_INTERN_MAX_BYTES = 512 * 1024;
// The Map slot with the table's worst-case growth slack (see x509-svid.ts; measured 85-94 bytes per
// entry with the key, bench/cache-bytes.mjs).
const MEMO_ENTRY_BYTES = 56;
const INTERNED_ENTRY_BYTES = 200;

/** Hits, misses and bytes of every policy instance's memo since start (for /metrics). */
export const memoTotals = { hits: 0, misses: 0, evictions: 0 };
let liveMemo: DecisionMemo | undefined;

/** Bytes held by the memo of the policy that answered last (the current one; older ones are released). */
export function policyMemoBytes(): number {
  return liveMemo?.bytes ?? 0;
}

/** The byte bound of that memo. */
export function policyMemoMaxBytes(): number {
  return liveMemo?.maxBytes ?? DEFAULT_MEMO_BYTES;
}

class DecisionMemo {
  private readonly lru: ByteLru<Result<PolicyResult>>;
  private readonly interned = new Map<string, Result<PolicyResult>>();
  private internedBytes = 0;
  private readonly ownBytes = new WeakSet<Result<PolicyResult>>();
  /** a quarter of the bound for the interned answers, the rest for the entries */
  private readonly internBudget: number;

  constructor(readonly maxBytes: number) {
    this.internBudget = Math.min(Math.floor(maxBytes / 4), MEMO_INTERN_MAX_BYTES);
    this.lru = new ByteLru({
      maxBytes: maxBytes - this.internBudget,
      sizeOf: (key, value) => MEMO_ENTRY_BYTES + stringBytes(key) + (this.ownBytes.has(value) ? resultBytes(value) : 0),
    });
  }

  get(key: string): Result<PolicyResult> | undefined {
    const hit = this.lru.get(key);
    if (hit) memoTotals.hits++;
    else memoTotals.misses++;
    return hit;
  }

  set(key: string, result: Result<PolicyResult>): void {
    const text = JSON.stringify(result);
    let value = this.interned.get(text);
    if (value === undefined) {
      value = Object.freeze(result);
      if (
        this.interned.size < MEMO_INTERNED &&
        this.internedBytes + INTERNED_ENTRY_BYTES + 2 * text.length <= this.internBudget
      ) {
        this.interned.set(text, value);
        this.internedBytes += INTERNED_ENTRY_BYTES + 2 * text.length;
      } else {
        this.ownBytes.add(value);
      }
    }
    const before = this.lru.stats().evictions;
    this.lru.set(key, value);
    memoTotals.evictions += this.lru.stats().evictions - before;
  }

  get bytes(): number {
    return this.lru.bytes + this.internedBytes;
  }
}

function resultBytes(result: Result<PolicyResult>): number {
  return INTERNED_ENTRY_BYTES + 2 * JSON.stringify(result).length;
}

// Bounds what one evaluation can take from the heap; growth past it aborts the evaluation (a deny).
const WASM_MEMORY = { initial: 5, maximum: 4096 } as const; // 64 KiB pages: 320 KiB .. 256 MiB
/** OPA modules have one table of a few hundred functions; a huge one is memory outside every cap. */
const MAX_TABLE_ENTRIES = 100_000;

class WasmPolicy implements LoadedPolicy {
  readonly revision: string;
  readonly source: string;
  readonly entrypoint: string;
  private instance: OpaWasmPolicy;
  private entrypointId: number;
  private poisoned = false;
  readonly inputFootprint: InputFootprint | undefined;
  readonly bundle: Uint8Array | undefined;
  readonly summary: PolicySummary;
  readonly image: PolicyImage | undefined;
  private readonly memo: DecisionMemo | undefined;

  private constructor(
    private readonly module: CompiledWasm,
    private readonly origin: DataOrigin,
    private readonly meta: WasmPolicyMeta,
    instance: OpaWasmPolicy,
    entrypointId: number,
    image: PolicyImage | undefined,
  ) {
    this.summary = meta.summary;
    this.image = image;
    this.revision = meta.revision;
    this.source = meta.source;
    this.entrypoint = meta.entrypoint;
    this.instance = instance;
    this.entrypointId = entrypointId;
    this.inputFootprint = meta.footprint;
    this.bundle = meta.bundle;
    this.memo =
      meta.footprint?.keys && meta.footprint.deterministic
        ? new DecisionMemo(meta.memoBytes ?? DEFAULT_MEMO_BYTES)
        : undefined;
  }

  static async create(module: CompiledWasm, origin: DataOrigin, meta: WasmPolicyMeta): Promise<WasmPolicy> {
    const where = `policy ${meta.source}`;
    let instance: OpaWasmPolicy;
    try {
      instance = await opaWasm.loadPolicy(module, memoryFor(origin));
      if (origin.image) await restoreWasmImage(instance, origin.image.memory);
      else setPolicyData(instance, origin.data ?? {}, origin.dataJson);
    } catch (e) {
      throw new Error(`${where}: cannot instantiate the Wasm policy: ${describe(e)}`);
    }
    const entrypoints = instance.entrypoints as Record<string, number>;
    const id = entrypoints[meta.entrypoint];
    if (typeof id !== 'number' || !Object.prototype.hasOwnProperty.call(entrypoints, meta.entrypoint)) {
      throw new Error(
        `${where}: entrypoint ${meta.entrypoint} not found (the bundle has: ${Object.keys(entrypoints).join(', ') || 'none'})`,
      );
    }
    // Before the warm-up: the image is the state right after the data was set, nothing evaluated yet.
    const memory = meta.captureFrom && !origin.image ? captureWasmImage(instance, meta.captureFrom) : undefined;
    const image: PolicyImage | undefined =
      origin.image ??
      (memory && meta.captureFrom
        ? {
            wasm: meta.captureFrom,
            memory,
            revision: meta.revision,
            entrypoint: meta.entrypoint,
            footprint: meta.footprint,
            summary: meta.summary,
          }
        : undefined);
    // With the bytes at hand the parsed object is not kept: 18 MiB of data.json is ~60 MiB of JS heap,
    // and during a swap the old and the new policy are both alive under the 128 MiB bound.
    const { captureFrom: _, ...kept } = meta;
    const policy = new WasmPolicy(module, origin, kept, instance, id, image);
    policy.warmUp();
    return policy;
  }

  /**
   * V8 compiles a Wasm function when it is first called: the first evaluation of a fresh instance took
   * 60-80 ms on a busy machine, over the evaluation budget, so the first case or Check after a load was
   * a deny. One throwaway evaluation here pays for that; its answer is not used.
   */
  private warmUp(): void {
    this.evaluateWasm({
      caller: 'cli',
      identity: { spiffe_id: 'spiffe://warm.up/ns/warm-up/sa/warm-up', trust_domain: 'warm.up', namespace: 'warm-up' },
      destination: { host: 'warm.up', port: 443 },
    });
  }

  /**
   * Parsed again at each use when only the bytes are kept, dumped from the Wasm memory when restored
   * from an image (data overlays; metrics read the summary instead).
   */
  get data(): Readonly<Record<string, unknown>> {
    const origin = this.origin;
    if (!origin.image) {
      if (origin.data) return origin.data;
      return JSON.parse(new TextDecoder().decode(origin.dataJson)) as Record<string, unknown>;
    }
    if (this.poisoned) this.reinstantiate();
    try {
      return dumpWasmData(this.instance) as Record<string, unknown>;
    } catch (e) {
      this.poisoned = true;
      throw new Error(`policy ${this.source}: cannot read its data: ${describe(e)}`);
    }
  }

  /**
   * The policy sees only the input fields its source reads (no other field can change its answer),
   * and a deterministic policy's successful answers are remembered per projected input: the Check path
   * repeats the same few identities and destinations thousands of times a second.
   */
  evaluate(input: unknown): Result<PolicyResult> {
    const keys = this.inputFootprint?.keys;
    if (!keys || !isObject(input)) return this.evaluateWasm(input);
    if (!this.memo) return this.evaluateWasm(project(input, keys));
    const memo = this.memo;
    liveMemo = memo;
    // A hit builds neither the projection nor its JSON (memo-key.ts).
    const key = memoKey(input, keys, project);
    const hit = memo.get(key);
    if (hit) return hit;
    const result = this.evaluateWasm(project(input, keys));
    // Failures are not remembered: an over-budget or aborted evaluation may succeed next time.
    if (result.ok) memo.set(key, result);
    return result;
  }

  private evaluateWasm(input: unknown): Result<PolicyResult> {
    // Wasm runs synchronously on this thread and cannot be interrupted; the budget is measured and an
    // evaluation that overran is answered with a failure (deny) rather than a late allow.
    const started = performance.now();
    let resultSet: unknown;
    try {
      if (this.poisoned) this.reinstantiate();
      resultSet = this.instance.evaluate(input, this.entrypointId);
    } catch (e) {
      // An aborted evaluation may leave the instance's heap half-written: start the next one afresh.
      this.poisoned = true;
      return fail(`policy evaluation failed: ${describe(e)}`, 'policy');
    }
    const elapsed = performance.now() - started;
    if (elapsed > this.meta.evalBudgetMs)
      return fail(`policy evaluation exceeded ${this.meta.evalBudgetMs}ms (took ${elapsed.toFixed(1)}ms)`, 'policy');
    if (!Array.isArray(resultSet) || resultSet.length === 0) return fail('policy result undefined', 'policy');
    if (resultSet.length > 1) return fail(`policy returned ${resultSet.length} results, expected one`, 'policy');
    const first: unknown = resultSet[0];
    if (!isObject(first) || !('result' in first)) return fail('policy result undefined', 'policy');
    return normalisePolicyResult(first.result);
  }

  private reinstantiate(): void {
    // loadPolicy() is async only for compilation; instantiating an already compiled module is not.
    const origin = this.origin;
    const fresh = opaWasm.loadPolicySync(this.module, memoryFor(origin));
    if (origin.image) restoreWasmImageSync(fresh, origin.image.memory);
    else setPolicyData(fresh, origin.data ?? {}, origin.dataJson);
    this.instance = fresh;
    this.poisoned = false;
  }

  async withDataOverlay(overlay: Record<string, unknown>): Promise<LoadedPolicy> {
    const data = deepMerge(this.data, overlay);
    return WasmPolicy.create(
      this.module,
      { data, dataJson: undefined },
      {
        ...this.meta,
        revision: `${this.revision}+data:${sha256Hex(JSON.stringify(overlay)).slice(0, 12)}`,
        summary: summarisePolicyData(data),
      },
    );
  }
}

/**
 * The SDK serialises a data object back to JSON text before its Wasm parser reads it; for an 18 MiB
 * data.json under the 128 MiB heap bound that took 31 s of CPU against 3.8 s for handing it the
 * bundle's own bytes (already checked as JSON, within limits, by readBundle).
 */
function setPolicyData(
  instance: OpaWasmPolicy,
  data: Readonly<Record<string, unknown>>,
  dataJson: Uint8Array | undefined,
): void {
  if (!dataJson) return instance.setData(data);
  const text = dataJson.buffer.slice(dataJson.byteOffset, dataJson.byteOffset + dataJson.byteLength) as ArrayBuffer;
  instance.setData(text);
}

function project(input: Record<string, unknown>, keys: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of keys) {
    if (Object.prototype.hasOwnProperty.call(input, k) && input[k] !== undefined) out[k] = input[k];
  }
  return out;
}

/** An image needs the memory it was captured with from the start (the allocator knows its top from it). */
function memoryFor(origin: DataOrigin): { initial: number; maximum: number } {
  const initial = Math.max(WASM_MEMORY.initial, origin.image?.memory.pages ?? 0);
  return { initial: Math.min(initial, WASM_MEMORY.maximum), maximum: WASM_MEMORY.maximum };
}

function deepMerge(base: Readonly<Record<string, unknown>>, overlay: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(overlay)) {
    const existing = Object.prototype.hasOwnProperty.call(base, key) ? base[key] : undefined;
    const merged = isObject(existing) && isObject(value) ? deepMerge(existing, value) : value;
    Object.defineProperty(out, key, { value: merged, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

/**
 * Accepts the three result shapes a policy may return and checks their types:
 * - ours: `{allow: bool, snat_pool?: string, reason?: string, http_status?, headers?, body?}`
 * - opa-envoy-plugin's object: `{allowed: bool, headers?, http_status?, body?}` (snat_pool accepted too)
 * - opa-envoy-plugin's boolean: `true` / `false`
 * A deny never carries a pool (snat_pool is forced to ""). An allow without a pool is still an allow,
 * with snat_pool "": the caller keeps its default source address (the decision step may refuse it).
 */
export function normalisePolicyResult(value: unknown): Result<PolicyResult> {
  if (typeof value === 'boolean') {
    return ok({ allow: value, snat_pool: '', reason: value ? 'allowed by policy' : 'denied by policy' });
  }
  if (!isObject(value)) return fail(`policy result must be an object or a boolean, got ${typeName(value)}`, 'policy');
  const hasAllow = 'allow' in value;
  const hasAllowed = 'allowed' in value;
  if (!hasAllow && !hasAllowed) return fail('policy result has neither "allow" nor "allowed"', 'policy');
  const allow = hasAllow ? value['allow'] : value['allowed'];
  if (typeof allow !== 'boolean')
    return fail(
      `policy result "${hasAllow ? 'allow' : 'allowed'}" must be a boolean, got ${typeName(allow)}`,
      'policy',
    );
  if (hasAllow && hasAllowed && value['allowed'] !== allow)
    return fail('policy result has "allow" and "allowed" that disagree', 'policy');

  const pool = optionalString(value, 'snat_pool');
  if (!pool.ok) return pool;
  const reason = optionalString(value, 'reason');
  if (!reason.ok) return reason;
  const body = optionalString(value, 'body');
  if (!body.ok) return body;
  const result: PolicyResult = {
    allow,
    snat_pool: allow ? (pool.value ?? '') : '',
    reason: reason.value || (allow ? 'allowed by policy' : 'denied by policy'),
  };
  if (body.value !== undefined) result.body = body.value;

  const status = value['http_status'];
  if (status !== undefined) {
    if (typeof status !== 'number' || !Number.isInteger(status) || status < 100 || status > 599) {
      return fail(
        `policy result "http_status" must be an integer HTTP status, got ${JSON.stringify(status)}`,
        'policy',
      );
    }
    result.http_status = status;
  }
  const headers = value['headers'];
  if (headers !== undefined) {
    const h = normaliseHeaders(headers);
    if (!h.ok) return h;
    result.headers = h.value;
  }
  return ok(result);
}

function normaliseHeaders(headers: unknown): Result<Record<string, string>> {
  if (!isObject(headers)) return fail(`policy result "headers" must be an object, got ${typeName(headers)}`, 'policy');
  const out: Record<string, string> = {};
  for (const [name, v] of Object.entries(headers)) {
    // opa-envoy-plugin accepts a list of values for one header; HTTP joins them with ", ".
    if (typeof v === 'string') out[name] = v;
    else if (Array.isArray(v) && v.every((x) => typeof x === 'string')) out[name] = v.join(', ');
    else return fail(`policy result header ${JSON.stringify(name)} must be a string or a list of strings`, 'policy');
  }
  return ok(out);
}

function optionalString(obj: Record<string, unknown>, key: string): Result<string | undefined> {
  const v = obj[key];
  if (v === undefined || typeof v === 'string') return ok(v);
  return fail(`policy result "${key}" must be a string, got ${typeName(v)}`, 'policy');
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

function describe(e: unknown): string {
  if (typeof e === 'string') return e;
  if (e instanceof Error) return e.message;
  if (isObject(e) && typeof e['message'] === 'string') return e['message'];
  return String(e);
}
