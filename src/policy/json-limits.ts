// A bound on what a data document may cost before anything parses it. Bytes alone say little: a 32 MiB
// `[0,0,…]` is 16 million values (a JS heap out of memory), 20 million nested `[` exhaust any parser,
// and OPA's Wasm JSON parser spends about 100-180 bytes of policy memory per value, so past roughly a
// million values a document cannot fit the module's memory cap anyway. One linear pass over the bytes,
// no allocation per value, decides before JSON.parse or the Wasm parser ever see the document.
import { fail, ok, type Result } from '../common/result.js';

export interface JsonLimits {
  /** deepest nesting of arrays and objects */
  maxDepth: number;
  /** scalars, arrays and objects counted together (object keys not counted) */
  maxValues: number;
}

/** Generous for data (40,000 tenants with destination lists are ~500,000 values, depth 5). */
export const DATA_JSON_LIMITS: JsonLimits = { maxDepth: 64, maxValues: 1_000_000 };

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;

/**
 * Counts values and nesting: the number of values, or a failure when either exceeds its limit. Syntax is left to the real parser:
 * this pass only has to be exact about strings (so that brackets inside them do not count).
 */
export function checkJsonLimits(bytes: Uint8Array, limits: JsonLimits = DATA_JSON_LIMITS): Result<number> {
  let depth = 0;
  let values = 0;
  // A string directly followed by ':' is a key, not a value.
  let pendingString = false;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (b <= 0x20) continue;
    if (pendingString) {
      pendingString = false;
      if (b !== COLON) values++;
    }
    switch (b) {
      case QUOTE: {
        i++;
        while (i < bytes.length && bytes[i] !== QUOTE) i += bytes[i] === BACKSLASH ? 2 : 1;
        pendingString = true;
        continue;
      }
      case 0x5b: // [
      case 0x7b: // {
        if (++depth > limits.maxDepth) return fail(`nested deeper than ${limits.maxDepth} levels`);
        values++;
        break;
      case 0x5d: // ]
      case 0x7d: // }
        depth--;
        break;
      case 0x2c: // ,
      case COLON:
        break;
      default: {
        // a number or a literal: one value, however many bytes it takes
        values++;
        while (i + 1 < bytes.length && !isDelimiter(bytes[i + 1]!)) i++;
      }
    }
    if (values > limits.maxValues) return fail(`has more than ${limits.maxValues.toLocaleString('en')} values`);
  }
  if (pendingString) values++;
  if (values > limits.maxValues) return fail(`has more than ${limits.maxValues.toLocaleString('en')} values`);
  return ok(values);
}

function isDelimiter(b: number): boolean {
  return b <= 0x20 || b === 0x2c || b === 0x5d || b === 0x7d || b === COLON || b === QUOTE;
}
