import { describe, expect, it } from 'vitest';
import { randomUuid } from '../../src/common/uuid.js';

describe('randomUuid', () => {
  it('gives version 4 UUIDs, each one new, across many batches', () => {
    const ids = Array.from({ length: 5000 }, randomUuid);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('draws every one of the 122 random bits afresh (no position stuck, none repeating a batch)', () => {
    const ids = Array.from({ length: 2000 }, () => randomUuid().replaceAll('-', ''));
    for (let pos = 0; pos < 32; pos++) {
      if (pos === 12) continue; // the version nibble
      const values = new Set(ids.map((id) => id[pos]));
      // the variant nibble has 4 values; the others 16, and 2,000 draws see them all
      expect(values.size, `hex digit ${pos}`).toBe(pos === 16 ? 4 : 16);
    }
    // 128 ids a batch: an id never comes back at the same place of a later batch
    for (let i = 128; i < ids.length; i++) expect(ids[i]).not.toBe(ids[i - 128]);
  });
});
