// CheckRequest bytes → the object @grpc/proto-loader's deserializer gives for them (protobufjs decode
// into message objects, then toObject with envoy-protos.ts's options), in one pass that builds only the
// plain objects. proto-loader's two trees were ~3.3 KB of garbage and about as much CPU as the rest of
// a cached Check on the grpc path (docs/performance.md, "Garbage on the Check path").
//
// The fast path reads the encoding Envoy writes: fields in number order, each once (repeated ones in a
// run), map entries as key then value, wire types as declared, varints of at most ten bytes, nothing past
// its message. Whatever else it meets (a reordered or repeated field, a packed or malformed varint, a
// group, a wire type the field does not declare, a length past its message, deep nesting) it does not
// interpret: the whole request goes to proto-loader's deserializer, which stays the reference for the
// odd corners of protobufjs's reader (it reads a field by its declared type whatever the wire says, lets
// a later copy of a field replace the earlier one, clamps a string at its message's end). So the fast
// path only has to agree with protobufjs where the encoding is plain, and
// test/fuzz/check-request-wire.fuzz.test.ts holds it to the reference's very objects, key order
// included, over generated requests for the whole AttributeContext and damaged copies of them.
import type { MapField, Root, Type } from 'protobufjs';

type Deserialize = (bytes: Buffer) => unknown;

// Value kinds; a field's kind says how one value is read and what it becomes.
const STRING = 0;
const BYTES = 1;
const BOOL = 2;
const INT32 = 3;
const UINT32 = 4;
const SINT32 = 5;
const INT64 = 6;
const UINT64 = 7;
const SINT64 = 8;
const FIXED32 = 9;
const SFIXED32 = 10;
const FIXED64 = 11;
const SFIXED64 = 12;
const FLOAT = 13;
const DOUBLE = 14;
const ENUM = 15;
const MESSAGE = 16;
/** A field the fast path leaves to the reference (repeated scalars, which may come packed; groups). */
const UNSUPPORTED = 17;

const KINDS: Record<string, number> = {
  string: STRING,
  bytes: BYTES,
  bool: BOOL,
  int32: INT32,
  uint32: UINT32,
  sint32: SINT32,
  int64: INT64,
  uint64: UINT64,
  sint64: SINT64,
  fixed32: FIXED32,
  sfixed32: SFIXED32,
  fixed64: FIXED64,
  sfixed64: SFIXED64,
  float: FLOAT,
  double: DOUBLE,
};

const VARINT = 0;
const I64 = 1;
const LEN = 2;
const I32 = 5;

function wireOf(kind: number): number {
  if (kind === STRING || kind === BYTES || kind === MESSAGE) return LEN;
  if (kind === FIXED64 || kind === SFIXED64 || kind === DOUBLE) return I64;
  if (kind === FIXED32 || kind === SFIXED32 || kind === FLOAT) return I32;
  return VARINT;
}

interface FieldPlan {
  readonly name: string;
  readonly kind: number;
  /** the tag (number << 3 | wire type) the fast path accepts; for a map, the entry's */
  readonly tag: number;
  readonly repeated: boolean;
  readonly map: boolean;
  /** a map entry's value tag (2 << 3 | wire type) */
  readonly valueTag: number;
  /** for ENUM: protobufjs's `values`, whose prototype maps numbers to names, as toObject reads them */
  readonly enumValues: Record<string | number, unknown> | undefined;
  message: MessagePlan | undefined;
}

interface MessagePlan {
  /** by field number; numbers past the end are unknown fields */
  readonly fields: (FieldPlan | undefined)[];
}

// Field numbers above this are looked up nowhere: the fast path hands such a request to the reference.
const MAX_PLANNED_NUMBER = 1024;
// protobufjs refuses nesting past 100 (counted as here: one a message, map values included); the fast
// path stops well short and lets the reference decide.
const MAX_DEPTH = 32;

function planOf(type: Type, plans: Map<Type, MessagePlan>): MessagePlan {
  const known = plans.get(type);
  if (known) return known;
  const plan: MessagePlan = { fields: [] };
  plans.set(type, plan);
  for (const field of type.fieldsArray) {
    field.resolve();
    const valueType = field.resolvedType;
    let kind: number;
    let enumValues: FieldPlan['enumValues'];
    if (valueType && 'values' in valueType && !('fieldsArray' in valueType)) {
      kind = ENUM;
      enumValues = valueType.values;
    } else if (valueType) kind = MESSAGE;
    else kind = KINDS[field.type] ?? UNSUPPORTED;
    const map = field.map;
    const keyType = map ? (field as unknown as MapField).keyType : undefined;
    if (field.delimited || (field.repeated && kind !== MESSAGE) || (map && keyType !== 'string')) kind = UNSUPPORTED;
    if (field.id > MAX_PLANNED_NUMBER) continue;
    const fieldPlan: FieldPlan = {
      name: field.name,
      kind,
      tag: (field.id << 3) | (map ? LEN : wireOf(kind)),
      repeated: field.repeated,
      map,
      valueTag: (2 << 3) | wireOf(kind),
      enumValues,
      message: undefined,
    };
    plan.fields[field.id] = fieldPlan;
    if (kind === MESSAGE) fieldPlan.message = planOf(valueType as Type, plans);
  }
  return plan;
}

/** Thrown inside the fast path when the encoding is not plain; never leaves this module. */
class NotPlain extends Error {}
const NOT_PLAIN = new NotPlain('not a plain encoding');

// Buffer's own UTF-8 reader (what protobufjs's BufferReader calls), without toString's argument checks.
type Bytes = Buffer & { utf8Slice(start: number, end: number): string };

// The request being read: one at a time, synchronously.
let buf = Buffer.alloc(0) as Bytes;
let pos = 0;

function notPlain(): never {
  throw NOT_PLAIN;
}

/** A varint of at most 5 bytes, or 10 for a negative int32 (read as protobufjs reads it: low 32 bits). */
function varint32(end: number): number {
  if (pos >= end) notPlain();
  let b = buf[pos++]!;
  if (b < 0x80) return b;
  let value = b & 0x7f;
  for (let shift = 7; shift < 28; shift += 7) {
    if (pos >= end) notPlain();
    b = buf[pos++]!;
    value |= (b & 0x7f) << shift;
    if (b < 0x80) return value >>> 0;
  }
  if (pos >= end) notPlain();
  b = buf[pos++]!;
  value = (value | ((b & 0x0f) << 28)) >>> 0;
  if (b < 0x80) return value;
  // protobufjs skips five more bytes unread; only a well-formed ten-byte varint is plain.
  if (pos + 5 > end) notPlain();
  for (let i = 0; i < 4; i++) if (buf[pos + i]! < 0x80) notPlain();
  if (buf[pos + 4]! >= 0x80) notPlain();
  pos += 5;
  return value;
}

// A 64-bit value read by varint64/fixed64, as two unsigned halves.
let lo = 0;
let hi = 0;

function varint64(end: number): void {
  lo = 0;
  hi = 0;
  for (let i = 0; i < 10; i++) {
    if (pos >= end) notPlain();
    const b = buf[pos++]!;
    const bits = b & 0x7f;
    if (i < 4) lo |= bits << (7 * i);
    else if (i === 4) {
      lo |= bits << 28;
      hi |= bits >>> 4;
    } else hi |= bits << (7 * (i - 5) + 3);
    if (b < 0x80) {
      lo >>>= 0;
      hi >>>= 0;
      return;
    }
  }
  notPlain();
}

function fixed32At(at: number): number {
  return (buf[at]! | (buf[at + 1]! << 8) | (buf[at + 2]! << 16) | (buf[at + 3]! << 24)) >>> 0;
}

const TWO_32 = 4294967296;

/** lo/hi as protobufjs's Long.toString gives them: signed unless `unsigned`. */
function longString(unsigned: boolean): string {
  if (hi === 0) return String(lo);
  if (unsigned || hi < 0x80000000) {
    if (hi < 0x200000) return String(hi * TWO_32 + lo);
    const u = (BigInt(hi) << 32n) | BigInt(lo);
    return u.toString();
  }
  const u = (BigInt(hi) << 32n) | BigInt(lo);
  return BigInt.asIntN(64, u).toString();
}

function zigzag64(): string {
  const u = (BigInt(hi) << 32n) | BigInt(lo);
  return ((u >> 1n) ^ -(u & 1n)).toString();
}

function skip(wire: number, end: number): void {
  if (wire === VARINT) {
    for (let i = 0; i < 10; i++) {
      if (pos >= end) notPlain();
      if (buf[pos++]! < 0x80) return;
    }
    notPlain();
  } else if (wire === LEN) {
    const length = varint32(end);
    if (length > end - pos) notPlain();
    pos += length;
  } else if (wire === I64) {
    if (pos + 8 > end) notPlain();
    pos += 8;
  } else if (wire === I32) {
    if (pos + 4 > end) notPlain();
    pos += 4;
  } else notPlain(); // groups (3, 4) and the wire types that do not exist (6, 7)
}

function value(field: FieldPlan, end: number, depth: number): unknown {
  switch (field.kind) {
    case STRING: {
      const length = varint32(end);
      if (length > end - pos) notPlain();
      const start = pos;
      pos += length;
      return buf.utf8Slice(start, pos);
    }
    case MESSAGE: {
      const length = varint32(end);
      if (length > end - pos) notPlain();
      return message(field.message!, pos + length, depth + 1);
    }
    case BYTES: {
      const length = varint32(end);
      if (length > end - pos) notPlain();
      const start = pos;
      pos += length;
      return length === 0 ? Buffer.alloc(0) : buf.subarray(start, pos);
    }
    case BOOL:
      return varint32(end) !== 0;
    case INT32:
      return varint32(end) | 0;
    case UINT32:
      return varint32(end);
    case SINT32: {
      const n = varint32(end);
      return ((n >>> 1) ^ -(n & 1)) | 0;
    }
    case ENUM: {
      const n = varint32(end) | 0;
      const name = field.enumValues![n];
      return name === undefined ? n : name;
    }
    case INT64:
      varint64(end);
      return longString(false);
    case UINT64:
      varint64(end);
      return longString(true);
    case SINT64:
      varint64(end);
      return zigzag64();
    case FIXED32:
    case SFIXED32:
    case FLOAT: {
      if (pos + 4 > end) notPlain();
      const at = pos;
      pos += 4;
      if (field.kind === FLOAT) return buf.readFloatLE(at);
      const n = fixed32At(at);
      return field.kind === SFIXED32 ? n | 0 : n;
    }
    case FIXED64:
    case SFIXED64:
    case DOUBLE: {
      if (pos + 8 > end) notPlain();
      const at = pos;
      pos += 8;
      if (field.kind === DOUBLE) return buf.readDoubleLE(at);
      lo = fixed32At(at);
      hi = fixed32At(at + 4);
      return longString(field.kind === FIXED64);
    }
    default:
      return notPlain();
  }
}

const KEY_TAG = (1 << 3) | LEN;

function mapEntry(field: FieldPlan, into: Record<string, unknown>, end: number, depth: number): void {
  const length = varint32(end);
  if (length > end - pos) notPlain();
  const entryEnd = pos + length;
  if (varint32(entryEnd) !== KEY_TAG) notPlain();
  const key = value(STRING_FIELD, entryEnd, depth);
  if (varint32(entryEnd) !== field.valueTag) notPlain();
  const v = value(field, entryEnd, depth);
  if (pos !== entryEnd) notPlain();
  // as protobufjs does, so that a key "__proto__" is an own property like any other
  if (key === '__proto__') Object.defineProperty(into, key, { enumerable: true, configurable: true, writable: true });
  into[key as string] = v;
}

const STRING_FIELD: FieldPlan = {
  name: 'key',
  kind: STRING,
  tag: KEY_TAG,
  repeated: false,
  map: false,
  valueTag: 0,
  enumValues: undefined,
  message: undefined,
};

function message(plan: MessagePlan, end: number, depth: number): Record<string, unknown> {
  if (depth > MAX_DEPTH) notPlain();
  const out: Record<string, unknown> = {};
  const fields = plan.fields;
  // Keys are made in wire order, which is toObject's field-number order only while numbers rise.
  let last = 0;
  while (pos < end) {
    const tag = varint32(end);
    const number = tag >>> 3;
    const field = number < fields.length ? fields[number] : undefined;
    if (field === undefined) {
      if (number === 0 || number > MAX_PLANNED_NUMBER) notPlain();
      skip(tag & 7, end);
      continue;
    }
    if (tag !== field.tag || field.kind === UNSUPPORTED) notPlain();
    if (field.map) {
      let into = out[field.name] as Record<string, unknown> | undefined;
      if (number !== last) {
        if (number < last) notPlain();
        into = out[field.name] = {};
      }
      mapEntry(field, into!, end, depth);
    } else if (field.repeated) {
      let into = out[field.name] as unknown[] | undefined;
      if (number !== last) {
        if (number < last) notPlain();
        into = out[field.name] = [];
      }
      into!.push(value(field, end, depth));
    } else {
      if (number <= last) notPlain();
      out[field.name] = value(field, end, depth);
    }
    last = number;
  }
  if (pos !== end) notPlain();
  return out;
}

/**
 * The CheckRequest deserializer: the fast path where the encoding is plain, else `reference` (the
 * deserializer proto-loader made from the same .proto files and options).
 */
export function checkRequestDeserializer(root: Root, reference: Deserialize): Deserialize {
  const plain = plainCheckRequestDecoder(root);
  return (bytes: Buffer) => {
    const fast = plain(bytes);
    if (fast !== undefined) return fast;
    referenceDecodes++;
    return reference(bytes);
  };
}

// Requests read by the reference: still answered right, only slower. A count that rises with Envoy's
// traffic says its encoding has changed from what the fast path reads.
let referenceDecodes = 0;

/** How many CheckRequests went to proto-loader's deserializer (for tests and metrics). */
export function checkRequestReferenceDecodes(): number {
  return referenceDecodes;
}

/**
 * The fast path alone: undefined when the encoding is not plain. The field table keeps nothing of
 * `root` but names and enum value tables, so the root can be dropped once this returns.
 */
export function plainCheckRequestDecoder(root: Root): (bytes: Buffer) => Record<string, unknown> | undefined {
  const plan = planOf(root.lookupType('envoy.service.auth.v3.CheckRequest'), new Map());
  return (bytes: Buffer) => decodePlain(plan, bytes);
}

function decodePlain(plan: MessagePlan, bytes: Buffer): Record<string, unknown> | undefined {
  buf = bytes as Bytes;
  pos = 0;
  try {
    return message(plan, bytes.length, 0);
  } catch (err) {
    if (err !== NOT_PLAIN) throw err;
    return undefined;
  } finally {
    buf = EMPTY;
  }
}

const EMPTY = Buffer.alloc(0) as Bytes;
