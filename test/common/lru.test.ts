import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ByteLru, stringBytes } from '../../src/common/lru.js';

const sized = (maxBytes: number, maxEntries?: number) =>
  new ByteLru<string>({ maxBytes, maxEntries, sizeOf: (k, v) => k.length + v.length });

describe('ByteLru', () => {
  it('evicts the least recently used entry, a hit counting as a use', () => {
    const lru = sized(25);
    lru.set('a', '123456789');
    lru.set('b', '123456789');
    expect(lru.get('a')).toBe('123456789');
    lru.set('c', '123456789');
    expect(lru.get('b')).toBeUndefined();
    expect(lru.get('a')).toBe('123456789');
    expect(lru.stats()).toMatchObject({ hits: 2, misses: 1, evictions: 1, entries: 2, bytes: 20 });
  });

  it('keeps no entry larger than the whole budget, and 0 entries keeps nothing', () => {
    const lru = sized(10);
    lru.set('k', 'x'.repeat(10));
    expect(lru.size).toBe(0);
    const off = sized(1000, 0);
    off.set('k', 'v');
    expect(off.get('k')).toBeUndefined();
    expect(off.stats()).toMatchObject({ entries: 0, bytes: 0, misses: 1 });
  });

  it('replacing a key accounts for the old value', () => {
    const lru = sized(100);
    lru.set('k', 'x'.repeat(50));
    lru.set('k', 'x');
    expect(lru.bytes).toBe(2);
    expect(lru.size).toBe(1);
  });

  it('deleting a key gives back its bytes; deleting a missing key changes nothing', () => {
    const lru = sized(100);
    lru.set('a', 'x'.repeat(20));
    lru.set('b', 'x'.repeat(30));
    lru.delete('a');
    lru.delete('nope');
    expect(lru.get('a')).toBeUndefined();
    expect(lru.stats()).toMatchObject({ entries: 1, bytes: 31, evictions: 0 });
  });

  it('never holds more than its bounds, whatever the sequence of operations', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 200 }),
        fc.integer({ min: 0, max: 20 }),
        fc.array(fc.tuple(fc.boolean(), fc.string({ maxLength: 3 }), fc.string({ maxLength: 80 })), { maxLength: 200 }),
        (maxBytes, maxEntries, ops) => {
          const lru = sized(maxBytes, maxEntries);
          const expected = new Map<string, string>();
          for (const [isSet, k, v] of ops) {
            if (isSet) lru.set(k, v);
            else lru.get(k);
            expect(lru.bytes).toBeLessThanOrEqual(maxBytes);
            expect(lru.size).toBeLessThanOrEqual(maxEntries);
            if (isSet && k.length + v.length <= maxBytes && maxEntries > 0) {
              expected.set(k, v);
              expect(lru.get(k)).toBe(v);
            }
          }
          let total = 0;
          for (const [k] of expected) {
            const v = lru.get(k);
            if (v !== undefined) total += k.length + v.length;
          }
          expect(total).toBe(lru.bytes);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('evicts in the very order of a plain reference LRU, a repeated hit on the newest included', () => {
    // The reference: an array in use order, every hit moved to the end, no shortcut.
    class Reference {
      entries: [string, string][] = [];
      constructor(
        readonly maxBytes: number,
        readonly maxEntries: number,
      ) {}
      bytes = () => this.entries.reduce((n, [k, v]) => n + k.length + v.length, 0);
      get(k: string) {
        const i = this.entries.findIndex(([key]) => key === k);
        if (i < 0) return undefined;
        const [entry] = this.entries.splice(i, 1);
        this.entries.push(entry!);
        return entry![1];
      }
      set(k: string, v: string) {
        this.delete(k);
        if (k.length + v.length > this.maxBytes || this.maxEntries < 1) return;
        while (
          this.entries.length > 0 &&
          (this.bytes() + k.length + v.length > this.maxBytes || this.entries.length >= this.maxEntries)
        )
          this.entries.shift();
        this.entries.push([k, v]);
      }
      delete(k: string) {
        this.entries = this.entries.filter(([key]) => key !== k);
      }
    }
    const op = fc.oneof(
      { weight: 3, arbitrary: fc.tuple(fc.constant('get'), fc.constantFrom('a', 'b', 'c', 'd', 'e'), fc.constant('')) },
      {
        weight: 3,
        arbitrary: fc.tuple(fc.constant('set'), fc.constantFrom('a', 'b', 'c', 'd', 'e'), fc.string({ maxLength: 30 })),
      },
      {
        weight: 1,
        arbitrary: fc.tuple(fc.constant('delete'), fc.constantFrom('a', 'b', 'c', 'd', 'e'), fc.constant('')),
      },
      { weight: 1, arbitrary: fc.tuple(fc.constant('clear'), fc.constant(''), fc.constant('')) },
    );
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 80 }),
        fc.integer({ min: 0, max: 4 }),
        fc.array(op, { maxLength: 150 }),
        (maxBytes, maxEntries, ops) => {
          const lru = sized(maxBytes, maxEntries);
          const ref = new Reference(maxBytes, maxEntries);
          for (const [kind, k, v] of ops) {
            // fresh strings, as the caches' keys are (a hash computed per Check)
            const key = k.split('').join('');
            if (kind === 'get') {
              expect(lru.get(key)).toBe(ref.get(key));
            } else if (kind === 'set') {
              lru.set(key, v);
              ref.set(key, v);
            } else if (kind === 'delete') {
              lru.delete(key);
              ref.delete(key);
            } else {
              lru.clear();
              ref.entries = [];
            }
            expect(lru.size).toBe(ref.entries.length);
            expect(lru.bytes).toBe(ref.bytes());
          }
          for (const [k, v] of [...ref.entries]) expect(lru.get(k)).toBe(v);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('estimates strings by their V8 representation', () => {
    expect(stringBytes('')).toBe(16);
    expect(stringBytes('a'.repeat(100))).toBe(120);
    expect(stringBytes('é'.repeat(100))).toBe(120);
    expect(stringBytes('\u0430'.repeat(100))).toBe(216);
  });
});
