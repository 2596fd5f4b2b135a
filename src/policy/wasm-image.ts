// A loaded policy's Wasm memory, captured in the thread that loaded it and restored on the thread that
// serves it. Parsing a 17.5 MiB data.json with OPA's Wasm JSON parser held the serving event loop for
// 29 s; copying the memory that parse produced (99 MiB, 11.6 MiB deflated) takes tens of milliseconds,
// in steps between which the loop answers Checks.
//
// The OPA Wasm SDK (@open-policy-agent/opa-wasm 1.10) has no API for this, so this module, and only
// this module, reads and writes its LoadedPolicy internals: `mem` (the linear memory), `wasmInstance`,
// `dataAddr` (the parsed data), `baseHeapPtr` and `dataHeapPtr` (where the heap starts and where it
// starts after the data). With ABI 1.2 or later, evaluate() writes the input at dataHeapPtr and calls
// `opa_eval(0, ep, dataAddr, input, len, heap, 0)`, which resets the heap to `heap` itself; so the
// bytes [0, dataHeapPtr) plus those three numbers are the whole state an evaluation depends on, as long
// as the module keeps nothing in mutable globals but its stack pointer (back at its initial value
// whenever no call is running). Whatever is not as expected here gives no image, and the caller loads
// the careful way (the bundle bytes, parsed again).
import { deflateRawSync, inflateRaw, inflateRawSync } from 'node:zlib';
import { promisify } from 'node:util';
import type { LoadedPolicy as OpaWasmPolicy } from '@open-policy-agent/opa-wasm';
import { mutableGlobalCount } from './wasm-limits.js';

const inflate = promisify(inflateRaw);

/** Memory is captured and restored in pieces this big: a restore step holds the loop ~1-3 ms. */
export const IMAGE_CHUNK_BYTES = 4 * 1024 * 1024;
const PAGE_BYTES = 64 * 1024;

/** Plain data: survives postMessage (transfer the chunks' buffers) and structured clone. */
export interface WasmImage {
  /** the linear memory [0, dataHeapPtr), deflated in pieces of IMAGE_CHUNK_BYTES (the last one shorter) */
  chunks: Uint8Array[];
  /** the memory's size when captured, in 64 KiB pages: the heap allocator knows its top from it */
  pages: number;
  dataAddr: number;
  baseHeapPtr: number;
  dataHeapPtr: number;
}

// The SDK fields this module relies on, typed for what it does with them.
interface SdkInternals {
  mem: { buffer: ArrayBuffer };
  wasmInstance: { exports: Record<string, unknown> };
  minorVersion: unknown;
  dataAddr: number;
  baseHeapPtr: number;
  dataHeapPtr: number;
}

/** The SDK's internals, when they are what this module was written against; else undefined. */
function internals(policy: OpaWasmPolicy): SdkInternals | undefined {
  const p = policy as unknown as Partial<Record<keyof SdkInternals, unknown>>;
  const exports = (p.wasmInstance as { exports?: Record<string, unknown> } | undefined)?.exports;
  const numbers = [p.dataAddr, p.baseHeapPtr, p.dataHeapPtr];
  if (
    !(p.mem instanceof Object) ||
    !((p.mem as { buffer?: unknown }).buffer instanceof ArrayBuffer) ||
    !exports ||
    typeof exports['opa_heap_ptr_set'] !== 'function' ||
    typeof exports['opa_heap_ptr_get'] !== 'function' ||
    typeof exports['opa_json_dump'] !== 'function' ||
    typeof exports['opa_eval'] !== 'function' ||
    typeof p.minorVersion !== 'number' ||
    p.minorVersion < 2 ||
    !numbers.every((n) => typeof n === 'number' && Number.isInteger(n) && n >= 0)
  )
    return undefined;
  return p as unknown as SdkInternals;
}

/**
 * The image of a policy whose data was just set, before anything evaluated on it (an evaluation leaves
 * its own allocations above dataHeapPtr, but starts no state below it that a fresh one would not).
 * Undefined when the SDK or the module is not shaped as expected. Costs ~0.4 s of CPU per 100 MiB.
 */
export function captureWasmImage(policy: OpaWasmPolicy, wasm: Uint8Array): WasmImage | undefined {
  const sdk = internals(policy);
  if (!sdk || mutableGlobalCount(wasm) !== 1) return undefined;
  const { dataAddr, baseHeapPtr, dataHeapPtr } = sdk;
  const buffer = sdk.mem.buffer;
  if (dataHeapPtr > buffer.byteLength || baseHeapPtr > dataHeapPtr) return undefined;
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < dataHeapPtr; at += IMAGE_CHUNK_BYTES) {
    const piece = new Uint8Array(buffer, at, Math.min(IMAGE_CHUNK_BYTES, dataHeapPtr - at));
    // Its own exactly-sized buffer: transferable (zlib may hand out a slice of a shared pool).
    chunks.push(new Uint8Array(deflateRawSync(piece, { level: 1 })));
  }
  return { chunks, pages: buffer.byteLength / PAGE_BYTES, dataAddr, baseHeapPtr, dataHeapPtr };
}

/**
 * Writes the image into a freshly instantiated policy of the same module (instantiated with at least
 * `image.pages` of memory), inflating in the zlib thread pool: the calling loop runs between pieces.
 * Rejects when the policy or the image is not shaped as expected (nothing usable is left then).
 */
export async function restoreWasmImage(policy: OpaWasmPolicy, image: WasmImage): Promise<void> {
  const sdk = checkedTarget(policy, image);
  let at = 0;
  for (const chunk of image.chunks) at = place(sdk, await inflate(chunk), at, image);
  finish(sdk, image, at);
}

/** restoreWasmImage on this thread at once: for re-instantiating after an aborted evaluation. */
export function restoreWasmImageSync(policy: OpaWasmPolicy, image: WasmImage): void {
  const sdk = checkedTarget(policy, image);
  let at = 0;
  for (const chunk of image.chunks) at = place(sdk, inflateRawSync(chunk), at, image);
  finish(sdk, image, at);
}

function checkedTarget(policy: OpaWasmPolicy, image: WasmImage): SdkInternals {
  const sdk = internals(policy);
  if (!sdk) throw new Error('the policy engine is not the one the memory image was made for');
  if (sdk.mem.buffer.byteLength < image.pages * PAGE_BYTES || image.dataHeapPtr > image.pages * PAGE_BYTES)
    throw new Error('memory image does not fit the instance');
  return sdk;
}

function place(sdk: SdkInternals, piece: Uint8Array, at: number, image: WasmImage): number {
  if (at + piece.byteLength > image.dataHeapPtr) throw new Error('memory image is longer than it says');
  // The buffer object is looked up at each step: nothing may grow the memory in between, but if it did
  // the old one would be detached.
  new Uint8Array(sdk.mem.buffer).set(piece, at);
  return at + piece.byteLength;
}

function finish(sdk: SdkInternals, image: WasmImage, length: number): void {
  if (length !== image.dataHeapPtr) throw new Error('memory image is shorter than it says');
  (sdk.wasmInstance.exports['opa_heap_ptr_set'] as (ptr: number) => void)(image.dataHeapPtr);
  sdk.dataAddr = image.dataAddr;
  sdk.baseHeapPtr = image.baseHeapPtr;
  sdk.dataHeapPtr = image.dataHeapPtr;
}

/**
 * The data document as the policy holds it, dumped by the module's own JSON writer (for a data
 * overlay on a policy restored from an image, which has no data.json of its own). Its allocations are
 * above dataHeapPtr, given back by the next evaluation as always.
 */
export function dumpWasmData(policy: OpaWasmPolicy): unknown {
  const sdk = internals(policy);
  if (!sdk) throw new Error('the policy engine is not the one the memory image was made for');
  const exports = sdk.wasmInstance.exports;
  (exports['opa_heap_ptr_set'] as (ptr: number) => void)(sdk.dataHeapPtr);
  const addr = (exports['opa_json_dump'] as (value: number) => number)(sdk.dataAddr);
  const bytes = new Uint8Array(sdk.mem.buffer);
  const end = bytes.indexOf(0, addr);
  if (end < 0) throw new Error('policy data dump is not terminated');
  return JSON.parse(new TextDecoder().decode(bytes.subarray(addr, end)));
}
