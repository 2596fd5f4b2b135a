// The decision memo's key (memo-key.ts) against what the policy sees, the projection's JSON text: two
// inputs may share a key only if the policy would see the very same text, and an equal plain input
// rebuilt from scratch (the next Check from the same workload) must find the same key.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { memoKey } from '../../src/policy/memo-key.js';

const KEYS = ['caller', 'destination', 'identity', 'n'] as const;

function project(input: Record<string, unknown>, keys: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of keys) if (Object.prototype.hasOwnProperty.call(input, k) && input[k] !== undefined) out[k] = input[k];
  return out;
}
const seen = (input: Record<string, unknown>) => JSON.stringify(project(input, KEYS));
const key = (input: Record<string, unknown>) => memoKey(input, KEYS, project);

class Point {
  constructor(readonly x: number) {}
}
// A small domain, so that different inputs often meet on one JSON text or on one key: strings that
// differ only in where a boundary falls, in one code unit above ASCII, in a lone surrogate against
// U+FFFD; numbers JSON writes alike (0 and -0, NaN, Infinity and null); values JSON drops or rewrites.
// The encoding's own tag bytes are letters ('s' starts a string, 'k' a key, 'e' ends an object).
const text = fc.constantFrom(
  ...['', 'a', 'b', 'ab', 's', 'sb', 'as', 'ke', 'a\u0000', '"'],
  ...['Ł', '\u0241', 'A', '\u0141A', '\ud800', '\ufffd', '\u00e9', 'e\u0301'],
);
const leaf = fc.oneof(
  text,
  fc.constantFrom(0, -0, 1, 1.5, 2, NaN, Infinity, -Infinity, 443, 2 ** 53, 2 ** 53 + 2),
  fc.constantFrom(true, false, null, undefined),
  fc.constantFrom(new Date(0), new Point(1), { toJSON: () => 'a' }, 1n as unknown, () => 1),
);
const tree = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, tie('array'), tie('object')),
  array: fc.array(tie('value'), { maxLength: 3 }),
  object: fc.dictionary(fc.constantFrom('a', 'b', 'ab', 'as', 's', '', 'toJSON', '__proto__', '1', '0'), tie('value'), {
    maxKeys: 3,
  }),
})).value;
const input = fc.dictionary(fc.constantFrom(...KEYS, 'other'), tree, { maxKeys: 5 });
// Inputs that differ from each other in one or two places, so that near neighbours meet.
const neighbours = fc
  .tuple(
    fc.dictionary(fc.constantFrom(...KEYS), fc.oneof(leaf, fc.array(leaf, { maxLength: 2 })), { maxKeys: 2 }),
    fc.array(
      fc.tuple(
        fc.constantFrom(...KEYS),
        fc.oneof(leaf, fc.array(leaf, { maxLength: 2 }), fc.dictionary(text, text, { maxKeys: 2 })),
      ),
      {
        minLength: 1,
        maxLength: 30,
      },
    ),
  )
  .map(([base, changes]) => changes.map(([k, v]) => ({ ...base, [k]: v })));

function tryKey(i: Record<string, unknown>): { key: string; seen: string } | undefined {
  try {
    return { key: key(i), seen: seen(i) };
  } catch {
    // (a BigInt: JSON.stringify throws, and so did the key before memo-key.ts; not this test's business)
    return undefined;
  }
}

/** A deep copy made the way a fresh Check makes its input: new objects, same values, same key order. */
function rebuild(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(rebuild);
  if (typeof v !== 'object' || v === null || Object.getPrototypeOf(v) !== Object.prototype) return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v))
    Object.defineProperty(out, k, { value: rebuild(x), enumerable: true, writable: true, configurable: true });
  return out;
}

describe('the decision memo key', () => {
  it('is shared only by inputs whose projection the policy sees as the same JSON text', () => {
    fc.assert(
      fc.property(fc.oneof(fc.array(input, { minLength: 2, maxLength: 40 }), neighbours), (inputs) => {
        const byKey = new Map<string, string>();
        for (const i of inputs) {
          const k = tryKey(i);
          if (!k) continue;
          const before = byKey.get(k.key);
          if (before !== undefined) expect(k.seen, JSON.stringify([before, k.seen])).toBe(before);
          byKey.set(k.key, k.seen);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('is the same for an equal input built afresh, and differs when a field the policy reads differs', () => {
    fc.assert(
      fc.property(input, (i) => {
        const k = tryKey(i);
        if (!k) return;
        key({ caller: '\u0101'.repeat(40) }); // leaves other bytes in the buffer the key is written to
        expect(key(rebuild(i) as Record<string, unknown>)).toBe(k.key);
        expect(key({ ...i, other: 'ignored' })).toBe(k.key);
        expect(key({ ...i, n: ['not', 'what', 'it', 'was'] })).not.toBe(k.key);
      }),
      { numRuns: 1000 },
    );
  });

  it('tells apart what a boundary or a wide character could blur', () => {
    const pairs: [Record<string, unknown>, Record<string, unknown>][] = [
      [{ identity: ['ab', 'c'] }, { identity: ['a', 'bc'] }],
      [{ identity: { ab: 'c' } }, { identity: { a: 'bc' } }],
      [{ identity: { as: 'b' } }, { identity: { a: 'sb' } }],
      [{ caller: '\u0141' }, { caller: 'A' }],
      [{ caller: '\u0141' }, { caller: '\u0241' }],
      [{ n: 1 }, { n: 1.5 }],
      [{ n: 2 ** 53 }, { n: 2 ** 53 + 2 }],
      [{ caller: '\ud800' }, { caller: '\ufffd' }],
      [{ caller: 'x' }, { identity: 'x' }],
      [{ n: [1, [2]] }, { n: [[1], 2] }],
      [{ n: { a: { b: 1 }, c: 2 } }, { n: { a: { b: 1, c: 2 } } }],
      [{ n: {} }, { n: [] }],
    ];
    for (const [a, b] of pairs) expect(key(a), JSON.stringify([a, b])).not.toBe(key(b));
  });

  it('keys a long projection or a deep one by its text, still exactly', () => {
    let deep: unknown = 'leaf';
    for (let i = 0; i < 100; i++) deep = { d: deep };
    const long = 'x'.repeat(2 * 1024 * 1024);
    expect(key({ identity: deep })).toBe(key({ identity: rebuild(deep) }));
    expect(key({ identity: long })).toBe(key({ identity: `${long}` }));
    expect(key({ identity: long })).not.toBe(key({ identity: `${long}y` }));
    // a projection that outgrows the buffer, then short ones again (in the new buffer)
    const before = [key({ caller: 'a' }), key({ caller: 'b' })];
    expect(key({ identity: 'z'.repeat(10_000) })).not.toBe(key({ identity: 'z'.repeat(10_001) }));
    expect([key({ caller: 'a' }), key({ caller: 'b' })]).toEqual(before);
    expect(key({ caller: 'c' })).not.toBe(key({ caller: 'd' }));
  });
});
