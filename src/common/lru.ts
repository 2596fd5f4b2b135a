// A least-recently-used cache bounded in bytes (and optionally in entries), for the Check path's caches
// (certificate outcomes, remembered policy answers). The byte figure is an estimate of the V8 heap an
// entry holds, made by the caller's sizeOf from measured per-entry overheads (docs/performance.md), so
// the bound holds whatever the entries are: one huge key cannot push out more than its own weight, and
// an entry bigger than the whole budget is not kept at all.

export interface LruStats {
  hits: number;
  misses: number;
  evictions: number;
  entries: number;
  bytes: number;
  maxBytes: number;
  maxEntries: number;
}

interface ByteLruOptions<V> {
  maxBytes: number;
  /** at most this many entries (default: no bound but the bytes; 0 keeps nothing) */
  maxEntries?: number;
  /** the estimated heap bytes of one entry; called again on eviction, so it must be deterministic */
  sizeOf(this: void, key: string, value: V): number;
}

export class ByteLru<V> {
  // Map iterates in insertion order: re-inserting on a hit keeps the least recently used first.
  private readonly map = new Map<string, V>();
  /** the key last moved to the end of the Map's order (the most recently used), if still there */
  private newest: string | undefined;
  private held = 0;
  private hitCount = 0;
  private missCount = 0;
  private evictionCount = 0;
  readonly maxBytes: number;
  readonly maxEntries: number;
  private readonly sizeOf: (this: void, key: string, value: V) => number;

  constructor(opts: ByteLruOptions<V>) {
    this.maxBytes = Math.max(0, opts.maxBytes);
    this.maxEntries = opts.maxEntries ?? Infinity;
    this.sizeOf = opts.sizeOf;
  }

  get(key: string): V | undefined {
    const value = this.map.get(key);
    if (value === undefined) {
      this.missCount++;
      return undefined;
    }
    this.hitCount++;
    // A workload that calls again and again is already the newest: moving it to the end would only
    // churn the Map's table (a delete leaves a hole, the table is rebuilt when holes fill it).
    if (key !== this.newest) {
      this.map.delete(key);
      this.map.set(key, value);
      this.newest = key;
    }
    return value;
  }

  set(key: string, value: V): void {
    const bytes = this.sizeOf(key, value);
    const old = this.map.get(key);
    if (old !== undefined) {
      this.held -= this.sizeOf(key, old);
      this.map.delete(key);
    }
    if (bytes > this.maxBytes || this.maxEntries < 1) {
      if (key === this.newest) this.newest = undefined;
      return;
    }
    while (this.map.size > 0 && (this.held + bytes > this.maxBytes || this.map.size >= this.maxEntries)) {
      const oldest = this.map.entries().next().value as [string, V];
      this.map.delete(oldest[0]);
      this.held -= this.sizeOf(oldest[0], oldest[1]);
      this.evictionCount++;
    }
    this.map.set(key, value);
    this.newest = key;
    this.held += bytes;
  }

  delete(key: string): void {
    const old = this.map.get(key);
    if (old === undefined) return;
    this.held -= this.sizeOf(key, old);
    this.map.delete(key);
    if (key === this.newest) this.newest = undefined;
  }

  clear(): void {
    this.map.clear();
    this.newest = undefined;
    this.held = 0;
  }

  get size(): number {
    return this.map.size;
  }

  get bytes(): number {
    return this.held;
  }

  stats(): LruStats {
    return {
      hits: this.hitCount,
      misses: this.missCount,
      evictions: this.evictionCount,
      entries: this.map.size,
      bytes: this.held,
      maxBytes: this.maxBytes,
      maxEntries: this.maxEntries,
    };
  }
}

/**
 * A Map slot beside its key and value: 24 bytes of entry and a bucket, times the table's growth slack (it
 * doubles, so up to 2×). The worst case, so a bound holds at any entry count (bench/cache-bytes.mjs).
 */
export const MAP_ENTRY_BYTES = 56;

/** Estimated V8 heap bytes of a string: header plus one byte per Latin-1 character, else two. */
export function stringBytes(s: string): number {
  const perChar = /[^\x00-\xff]/.test(s) ? 2 : 1;
  return (16 + s.length * perChar + 7) & ~7;
}
