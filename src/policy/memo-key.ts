// The decision memo's key (policy.ts): the SHA-256 of the input fields the policy reads, without
// building the projected input or its JSON text. JSON.stringify of the projection and its hash made
// ~1 KB of garbage and took ~1.2 µs on every cached Check; here the fields are written into one reused
// buffer in a tagged binary form and that is hashed.
//
// What the key must guarantee: equal keys only for projections whose JSON text is equal, since the
// JSON text is all the policy sees (the Wasm SDK hands it JSON.stringify(input)). The binary form is
// finer than JSON (it tells 0 from -0, NaN from null, a UTF-16 code unit from another), so it can
// only split an answer in two, never give one projection another's. Whatever it does not encode
// plainly (a class instance, a Date, toJSON, a function, a BigInt, very deep nesting) is keyed by the
// JSON text itself, as before; the two forms cannot collide (the binary one starts with a byte JSON
// never starts with).
import { hash } from 'node:crypto';

const BINARY = 0x01;
const STRING = 0x73; // s
const NUMBER = 0x6e; // n
const TRUE = 0x74;
const FALSE = 0x66;
const NULL = 0x7a;
const UNDEFINED = 0x75; // an array element JSON writes as null
const ABSENT = 0x2d; // a footprint field the input does not have (or has as undefined)
const ARRAY = 0x61;
const OBJECT = 0x6f;
const KEY = 0x6b;
const END = 0x65;
/** a UTF-16 code unit above ASCII: this byte, then its two bytes */
const WIDE = 0x80;
const MAX_DEPTH = 32;
/** beyond this the projection is keyed by its JSON text (a policy reading huge fields gains little) */
const MAX_BYTES = 1024 * 1024;

let buf = Buffer.allocUnsafeSlow(4096);
let view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
let at = 0;
let busy = false;

/**
 * The memo key of `input` as the policy sees it through `keys` (a 32-character Latin-1 string): the
 * fields that are own and not undefined, in `keys` order, exactly what project() hands the policy.
 * `project` builds that projection for the fallback.
 */
export function memoKey(
  input: Record<string, unknown>,
  keys: readonly string[],
  project: (input: Record<string, unknown>, keys: readonly string[]) => Record<string, unknown>,
): string {
  // The buffer is shared: a call from inside another (an input getter evaluating a policy) takes the JSON.
  if (!busy) {
    busy = true;
    try {
      if (encode(input, keys)) return hash('sha256', buf.subarray(0, at), 'binary');
    } finally {
      busy = false;
    }
  }
  return hash('sha256', JSON.stringify(project(input, keys)), 'binary');
}

// Each writer returns false when the value is not plain (the key is then the JSON text).
function encode(input: Record<string, unknown>, keys: readonly string[]): boolean {
  at = 0;
  if (!put(BINARY)) return false;
  for (const k of keys) {
    const v = Object.prototype.hasOwnProperty.call(input, k) ? input[k] : undefined;
    if (!(v === undefined ? put(ABSENT) : value(v, 0))) return false;
  }
  return true;
}

function value(v: unknown, depth: number): boolean {
  switch (typeof v) {
    case 'string':
      return string(STRING, v);
    case 'number':
      if (!room(9)) return false;
      buf[at++] = NUMBER;
      view.setFloat64(at, v, true);
      at += 8;
      return true;
    case 'boolean':
      return put(v ? TRUE : FALSE);
    case 'object':
      if (v === null) return put(NULL);
      if (depth >= MAX_DEPTH) return false;
      return Array.isArray(v) ? array(v, depth) : object(v as Record<string, unknown>, depth);
    default:
      // undefined is handled by the callers (JSON drops it or writes null); the rest JSON treats its own way
      return false;
  }
}

function array(a: readonly unknown[], depth: number): boolean {
  if (Object.getPrototypeOf(a) !== Array.prototype || !room(5)) return false;
  buf[at++] = ARRAY;
  view.setUint32(at, a.length, true);
  at += 4;
  for (let i = 0; i < a.length; i++) {
    const e = a[i];
    if (!(e === undefined ? put(UNDEFINED) : value(e, depth + 1))) return false;
  }
  return true;
}

function object(o: Record<string, unknown>, depth: number): boolean {
  const proto: unknown = Object.getPrototypeOf(o);
  if ((proto !== Object.prototype && proto !== null) || typeof o['toJSON'] === 'function') return false;
  if (!put(OBJECT)) return false;
  // for-in visits own keys in the order JSON.stringify writes them; inherited ones are skipped.
  for (const k in o) {
    if (!Object.prototype.hasOwnProperty.call(o, k)) continue;
    const v = o[k];
    if (v === undefined) continue;
    if (!string(KEY, k) || !value(v, depth + 1)) return false;
  }
  return put(END);
}

/** The tag, the length in UTF-16 code units, then each unit: ASCII as one byte, others as WIDE + 2. */
function string(tag: number, s: string): boolean {
  const n = s.length;
  if (!room(5 + 3 * n)) return false;
  buf[at++] = tag;
  view.setUint32(at, n, true);
  at += 4;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < WIDE) buf[at++] = c;
    else {
      buf[at++] = WIDE;
      buf[at++] = c >> 8;
      buf[at++] = c & 0xff;
    }
  }
  return true;
}

function put(byte: number): boolean {
  if (!room(1)) return false;
  buf[at++] = byte;
  return true;
}

function room(n: number): boolean {
  if (at + n <= buf.length) return true;
  if (at + n > MAX_BYTES) return false;
  const bigger = Buffer.allocUnsafeSlow(Math.min(MAX_BYTES, Math.max(2 * buf.length, at + n)));
  buf.copy(bigger, 0, 0, at);
  buf = bigger;
  view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  return true;
}
