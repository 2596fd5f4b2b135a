// Random (version 4) UUIDs for decision ids, one a Check. crypto.randomUUID() draws from a cache of
// random bytes but builds each id by concatenating 20 short strings: ~590 bytes of garbage and 0.2 µs,
// and the rope it returns is flattened again by whoever writes it. Here a batch of ids is drawn from
// the same CSPRNG at once and written out as text into one buffer; each id is then one flat 36-character
// string copied from it (~57 bytes). Every id uses its own 16 fresh random bytes, never reused, so the
// ids are as unique and as unpredictable as randomUUID's (122 random bits each).
import { randomFillSync } from 'node:crypto';

const BATCH = 128;
const HEX = Buffer.from('0123456789abcdef', 'latin1');
const random = Buffer.allocUnsafeSlow(16 * BATCH);
const text = Buffer.allocUnsafeSlow(36 * BATCH);
let next = BATCH;

/** A random UUID in its lower-case 8-4-4-4-12 form, like crypto.randomUUID(). */
export function randomUuid(): string {
  if (next === BATCH) refill();
  const start = 36 * next++;
  return text.toString('latin1', start, start + 36);
}

function refill(): void {
  randomFillSync(random);
  let out = 0;
  for (let id = 0; id < BATCH; id++) {
    const r = 16 * id;
    random[r + 6] = (random[r + 6]! & 0x0f) | 0x40; // version 4
    random[r + 8] = (random[r + 8]! & 0x3f) | 0x80; // variant 10xx (RFC 9562)
    for (let i = 0; i < 16; i++) {
      if (i === 4 || i === 6 || i === 8 || i === 10) text[out++] = 0x2d; // -
      const b = random[r + i]!;
      text[out++] = HEX[b >> 4]!;
      text[out++] = HEX[b & 0x0f]!;
    }
  }
  // The random bytes are in the text now; they are not kept twice.
  random.fill(0);
  next = 0;
}
