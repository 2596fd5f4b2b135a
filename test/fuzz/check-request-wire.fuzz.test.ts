// The CheckRequest decoder (check-request-wire.ts) against the reference: proto-loader's deserializer
// over the same .proto files and options. Requests are generated from the schema itself (every field
// of the whole AttributeContext, Struct metadata nested a few levels, every scalar's range), encoded by
// protobufjs, then damaged. Wherever the fast path answers, its object must be the reference's, key
// order included; the deserializer the server uses must answer as the reference does, or throw where
// it throws. And the fast path must really be taken: on every undamaged encoding it must answer.
import fc from 'fast-check';
import type { Enum, MapField, Type } from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { checkRequestDeserializer, plainCheckRequestDecoder } from '../../src/transport/check-request-wire.js';
import { loadAuthorizationRoot, loadAuthorizationService } from '../../src/transport/envoy-protos.js';
import { FUZZ_RUNS } from './runs.js';

const check = loadAuthorizationService().Check!;
const reference = (b: Buffer) => check.requestDeserialize(b) as Record<string, unknown>;
const encode = (req: unknown) => check.requestSerialize(req);
const root = loadAuthorizationRoot();
const fast = plainCheckRequestDecoder(root);
const deserialize = checkRequestDeserializer(root, check.requestDeserialize);

type Outcome = { threw: true } | { threw: false; value: unknown };
function attempt(f: () => unknown): Outcome {
  try {
    return { threw: false, value: f() };
  } catch {
    return { threw: true };
  }
}

/** Object equality that also sees key order, Buffers by content, NaN and -0. */
function expectSameObject(actual: unknown, expected: unknown): void {
  expect(actual).toStrictEqual(expected);
  expect(JSON.stringify(actual)).toBe(JSON.stringify(expected));
}

/** The property every input must have, whatever its bytes. */
function expectLikeReference(bytes: Buffer): void {
  const ref = attempt(() => reference(bytes));
  const plain = fast(bytes);
  if (plain !== undefined) {
    expect(ref.threw).toBe(false);
    if (!ref.threw) expectSameObject(plain, ref.value);
  }
  const served = attempt(() => deserialize(bytes));
  expect(served.threw).toBe(ref.threw);
  if (!ref.threw && !served.threw) expectSameObject(served.value, ref.value);
}

// --- requests generated from the schema --------------------------------------------------------------

const text = fc.oneof(
  fc.string({ maxLength: 8 }),
  fc.string({ unit: 'binary', maxLength: 30 }),
  fc.constantFrom(
    '',
    '/api/v1/orders?x=1',
    'spiffe://cluster.local/ns/bookinfo/sa/productpage',
    'é😀',
    'x'.repeat(130),
  ),
);
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const scalar: Record<string, fc.Arbitrary<unknown>> = {
  string: text,
  bytes: fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
  bool: fc.boolean(),
  int32: fc.oneof(fc.integer(), fc.integer({ min: -3, max: 3 })),
  sint32: fc.integer(),
  sfixed32: fc.integer(),
  uint32: fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 300 })),
  fixed32: fc.integer({ min: 0, max: 0xffffffff }),
  int64: fc.oneof(fc.bigInt({ min: INT64_MIN, max: INT64_MAX }), fc.bigInt({ min: 0n, max: 2n ** 40n })).map(String),
  sint64: fc.bigInt({ min: INT64_MIN, max: INT64_MAX }).map(String),
  sfixed64: fc.bigInt({ min: INT64_MIN, max: INT64_MAX }).map(String),
  uint64: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map(String),
  fixed64: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map(String),
  double: fc.double(),
  float: fc.float(),
};

function valueArbitrary(type: string, resolved: unknown, depth: number): fc.Arbitrary<unknown> | undefined {
  if (resolved && typeof resolved === 'object' && 'fieldsArray' in resolved)
    return depth > 0 ? messageArbitrary(resolved as Type, depth - 1) : undefined;
  if (resolved && typeof resolved === 'object' && 'values' in resolved) {
    const e = resolved as Enum;
    return fc.oneof(fc.constantFrom(...Object.keys(e.values)), fc.integer({ min: -2, max: 5 }));
  }
  return scalar[type];
}

const messages = new Map<string, fc.Arbitrary<Record<string, unknown>>>();
function messageArbitrary(type: Type, depth: number): fc.Arbitrary<Record<string, unknown>> {
  const key = `${type.fullName}@${depth}`;
  const known = messages.get(key);
  if (known) return known;
  const fields: Record<string, fc.Arbitrary<unknown>> = {};
  for (const field of type.fieldsArray) {
    field.resolve();
    const value = valueArbitrary(field.type, field.resolvedType, depth);
    if (!value) continue;
    if (field.map) {
      const keyType = (field as unknown as MapField).keyType;
      if (keyType !== 'string') continue;
      fields[field.name] = fc.dictionary(text, value, { maxKeys: 3, noNullPrototype: true });
    } else if (field.repeated) fields[field.name] = fc.array(value, { maxLength: 3 });
    else fields[field.name] = value;
  }
  const arbitrary = fc.record(fields, { requiredKeys: [] });
  messages.set(key, arbitrary);
  return arbitrary;
}

const requests = messageArbitrary(root.lookupType('envoy.service.auth.v3.CheckRequest'), 6);
const encodings = requests.map((r) => encode(r));

// --- damage ------------------------------------------------------------------------------------------

const damaged = fc
  .tuple(
    encodings,
    encodings,
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.nat(7)), { minLength: 1, maxLength: 4 }),
  )
  .map(([a, other, edits]) => {
    let b = Buffer.from(a);
    for (const [at, byte, how] of edits) {
      const i = b.length === 0 ? 0 : at % b.length;
      if (how === 0 && b.length > 0)
        b[i] = byte; // a byte changed
      else if (how === 1)
        b = b.subarray(0, i); // truncated
      else if (how === 2)
        b = Buffer.concat([b.subarray(0, i), Buffer.from([byte]), b.subarray(i)]); // a byte inserted
      else if (how === 3 && b.length > 0)
        b = Buffer.concat([b.subarray(0, i), b.subarray(i + 1)]); // a byte dropped
      else if (how === 4)
        b = Buffer.concat([b, other]); // another request after it: fields again, out of order
      else if (how === 5)
        b = Buffer.concat([other, b.subarray(i)]); // spliced
      else if (how === 6 && b.length > 0)
        b[i] = b[i]! ^ (1 << (byte & 7)); // a bit flipped
      else b = Buffer.concat([b.subarray(0, i), b.subarray(i, i + (byte % 16)), b.subarray(i)]); // a run repeated
    }
    return b;
  });

// --- hand-made encodings -----------------------------------------------------------------------------

const varint = (n: bigint | number): number[] => {
  let v = BigInt.asUintN(64, BigInt(n));
  const out: number[] = [];
  do {
    const b = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v === 0n ? b : b | 0x80);
  } while (v !== 0n);
  return out;
};
const tag = (field: number, wire: number) => varint((field << 3) | wire);
const len = (field: number, body: number[]) => [...tag(field, 2), ...varint(body.length), ...body];
const str = (field: number, s: string) => len(field, [...Buffer.from(s)]);
const attributes = (body: number[]) => Buffer.from(len(1, body));
const http = (body: number[]) => attributes(len(4, len(2, body)));
const entry = (k: string, v: string) => [...str(1, k), ...str(2, v)];

const handMade: [string, Buffer][] = [
  ['empty', Buffer.alloc(0)],
  ['empty attributes', attributes([])],
  ['source, destination in order', attributes([...len(1, str(4, 'a')), ...len(2, str(4, 'b'))])],
  ['destination before source', attributes([...len(2, str(4, 'b')), ...len(1, str(4, 'a'))])],
  ['a field twice', http([...str(4, '/a'), ...str(4, '/b')])],
  ['a message twice', attributes([...len(1, str(4, 'a')), ...len(1, str(2, 'svc'))])],
  ['header map entries', http(len(3, entry(':path', '/x')).concat(len(3, entry('a', 'b'))))],
  ['header map entries apart', http([...len(3, entry('a', '1')), ...str(4, '/'), ...len(3, entry('b', '2'))])],
  ['header key twice', http([...len(3, entry('a', '1')), ...len(3, entry('a', '2'))])],
  ['map key __proto__', http(len(3, entry('__proto__', 'x')))],
  ['map value before key', http(len(3, [...str(2, 'v'), ...str(1, 'k')]))],
  ['map entry without value', http(len(3, str(1, 'k')))],
  ['map entry without key', http(len(3, str(2, 'v')))],
  ['map entry with an extra field', http(len(3, [...entry('k', 'v'), ...tag(3, 0), 1]))],
  ['struct value missing', attributes(len(11, len(1, [...str(1, 'f'), ...len(2, len(1, str(1, 'k')))])))],
  ['string where a varint is declared', attributes(len(1, len(1, len(1, [...str(3, 'x')]))))],
  ['varint where a string is declared', http([...tag(4, 0), 5])],
  [
    'unknown fields of each wire type',
    http([
      ...tag(99, 0),
      1,
      ...tag(98, 1),
      1,
      2,
      3,
      4,
      5,
      6,
      7,
      8,
      ...tag(97, 5),
      1,
      2,
      3,
      4,
      ...str(96, 'x'),
      ...str(4, '/'),
    ]),
  ],
  ['a group', http([...tag(95, 3), ...tag(95, 4), ...str(4, '/')])],
  ['an end-group alone', http([...tag(95, 4)])],
  ['wire types 6 and 7', http([...tag(94, 6)])],
  ['field number 0', http([...tag(0, 0), 1])],
  ['a large field number', http([...tag(536870911, 0), 1])],
  ['negative int32 nanos (10 bytes)', attributes(len(4, len(1, [...tag(2, 0), ...varint(-5n)])))],
  ['int64 seconds, every size', attributes(len(4, len(1, [...tag(1, 0), ...varint(-1n)])))],
  ['int64 seconds over 2^53', attributes(len(4, len(1, [...tag(1, 0), ...varint(2n ** 60n + 7n)])))],
  ['a varint with a zero last byte', http([...tag(9, 0), 0x81, 0x00])],
  ['an 11-byte varint', http([...tag(9, 0), ...Array(10).fill(0xff), 1])],
  ['a 6-byte uint32', attributes(len(1, len(1, len(1, [...tag(3, 0), 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]))))],
  ['a string past its message', Buffer.from([...tag(1, 2), 4, ...tag(1, 2), 10, 0x22, 0x01])],
  ['a message longer than the buffer', Buffer.from([...tag(1, 2), 20, ...len(1, [])])],
  ['a truncated varint at the end', Buffer.from([...tag(1, 2), 3, ...tag(9, 0), 0x80])],
  ['a packed bool', attributes(len(1, len(1, len(1, [...tag(6, 2), 2, 1, 0]))))],
  ['invalid UTF-8', http(len(4, [0xc3, 0x28, 0xed, 0xa0, 0x80, 0xff]))],
  ['bytes empty and not', http([...len(12, []), ...len(12, [1, 2])])],
  ['an enum out of range', attributes(len(1, len(1, len(1, [...tag(1, 0), ...varint(77)]))))],
];

function nestedStruct(levels: number): Buffer {
  let value: number[] = str(3, 'leaf');
  for (let i = 0; i < levels; i++) value = len(5, len(1, [...str(1, 'k'), ...len(2, value)]));
  return attributes(len(11, len(1, [...str(1, 'filter'), ...len(2, len(1, [...str(1, 'f'), ...len(2, value)]))])));
}

describe('CheckRequest decoder against proto-loader', () => {
  it('answers on the fast path for every undamaged encoding, with the reference object', () => {
    fc.assert(
      fc.property(encodings, (bytes) => {
        const plain = fast(bytes);
        expect(plain).toBeDefined();
        expectSameObject(plain, reference(bytes));
      }),
      { numRuns: FUZZ_RUNS * 4 },
    );
  });

  it('answers like the reference for damaged encodings, or leaves them to it', () => {
    fc.assert(
      fc.property(damaged, (bytes) => expectLikeReference(bytes)),
      { numRuns: FUZZ_RUNS * 8 },
    );
  });

  it('answers like the reference for random bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (a) => expectLikeReference(Buffer.from(a))),
      { numRuns: FUZZ_RUNS * 4 },
    );
  });

  it.each(handMade)('hand-made: %s', (_name, bytes) => expectLikeReference(bytes));

  it('reads the Envoy-shaped request of the benchmark on the fast path', () => {
    const req = {
      attributes: {
        source: {
          address: { socketAddress: { address: '10.0.0.7', portValue: 43718 } },
          principal: 'spiffe://cluster.local/ns/bookinfo/sa/productpage',
          certificate: encodeURIComponent('-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'),
        },
        destination: { address: { socketAddress: { address: '10.0.0.1', portValue: 3128 } } },
        request: {
          time: { seconds: '1764900000', nanos: 123000000 },
          http: {
            id: '7733264120951513434',
            method: 'GET',
            headers: { ':authority': 'legacy.bookinfo.example', ':path': '/api', 'x-request-id': 'r-1' },
            path: '/api',
            host: 'legacy.bookinfo.example',
            scheme: 'http',
            protocol: 'HTTP/1.1',
            size: '0',
          },
        },
        metadataContext: {
          filterMetadata: {
            'envoy.filters.http.rbac': { fields: { shadow: { boolValue: true }, n: { numberValue: 1.5 } } },
          },
        },
        tlsSession: { sni: 'legacy.bookinfo.example' },
      },
    };
    const bytes = encode(req);
    const plain = fast(bytes);
    expect(plain).toBeDefined();
    expectSameObject(plain, reference(bytes));
    expect((plain as typeof req).attributes.request.http.headers[':authority']).toBe('legacy.bookinfo.example');
  });

  it('leaves deep nesting to the reference, which refuses it past its limit', () => {
    expect(fast(nestedStruct(10))).toBeDefined();
    expectLikeReference(nestedStruct(10));
    expect(fast(nestedStruct(40))).toBeUndefined();
    expectLikeReference(nestedStruct(40));
    expect(() => reference(nestedStruct(60))).toThrow();
    expect(() => deserialize(nestedStruct(60))).toThrow();
  });
});
