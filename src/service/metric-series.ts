// One prom-client series updated on the Check path without prom-client's per-call work. A bound child
// (`counter.labels(...)`) still hashes its labels into a string key, validates them and allocates a
// result object on every inc(); a histogram's observe() does the same plus a wrapper object: ~1.4 KB of
// garbage a Check for four updates. prom-client keeps each series as one entry of the metric's
// `hashMap` ({value, labels} for a counter, {labels, bucketValues, sum, count} for a histogram) and
// updates it in place; these series add to that very entry, with the same arithmetic in the same
// order. Whenever the entry is not the one the metric holds (first use, after reset() or remove(), a
// prom-client whose internals look different), the update goes through prom-client's own call and the
// entry is looked up again, so /metrics and the workers' JSON are what prom-client alone would give
// (test/metrics/metric-series.test.ts).
import type { Counter, Histogram } from 'prom-client';

export interface CounterSeries {
  inc(value?: number): void;
}

export interface HistogramSeries {
  observe(value: number): void;
}

type Labels = Record<string, string>;
interface CounterEntry {
  value: number;
  labels: Labels;
}
interface HistogramEntry {
  labels: Labels;
  bucketValues: Record<string, number>;
  sum: number;
  count: number;
}
/** The part of a prom-client metric these series read: its series by label hash. */
interface SeriesStore {
  hashMap?: unknown;
  labelNames?: readonly string[];
}

/** The series of `counter` with these label values (all of its label names, in its order). */
export function counterSeries(counter: Counter<string>, ...values: string[]): CounterSeries {
  return new FastCounterSeries(counter, labelsOf(counter, values));
}

/** The series of `histogram` with these label values; none for a histogram without labels. */
export function histogramSeries(histogram: Histogram<string>, ...values: string[]): HistogramSeries {
  return new FastHistogramSeries(histogram, labelsOf(histogram, values));
}

class FastCounterSeries implements CounterSeries {
  private entry: CounterEntry | undefined;
  private key = '';

  constructor(
    private readonly counter: Counter<string>,
    private readonly labels: Labels,
  ) {}

  inc(value?: number): void {
    const entry = this.entry;
    if (value === undefined && entry !== undefined && storeOf(this.counter)[this.key] === entry) {
      entry.value += 1;
      return;
    }
    this.counter.inc(this.labels, value);
    this.find();
  }

  private find(): void {
    const found = findEntry(this.counter, this.labels);
    this.entry =
      found && typeof (found.entry as CounterEntry).value === 'number' ? (found.entry as CounterEntry) : undefined;
    this.key = found?.key ?? '';
  }
}

class FastHistogramSeries implements HistogramSeries {
  private entry: HistogramEntry | undefined;
  private key = '';
  /** the upper bounds, and each as the property key prom-client counts it under */
  private readonly bounds: readonly number[];
  private readonly bucketKeys: readonly string[];
  private readonly zeroLabels: boolean;

  constructor(
    private readonly histogram: Histogram<string>,
    private readonly labels: Labels,
  ) {
    const upper = (histogram as unknown as { upperBounds?: unknown }).upperBounds;
    this.bounds = Array.isArray(upper) && upper.every((b) => typeof b === 'number') ? upper : [];
    this.bucketKeys = this.bounds.map(String);
    this.zeroLabels = Object.keys(labels).length === 0;
  }

  observe(value: number): void {
    const entry = this.entry;
    // A value prom-client refuses (not finite) takes its path, which throws as it always did.
    if (entry !== undefined && Number.isFinite(value) && storeOf(this.histogram)[this.key] === entry) {
      // prom-client counts a value in the first bucket whose upper bound is >= it; above the last,
      // only in +Inf (the count).
      const bounds = this.bounds;
      let i = 0;
      while (i < bounds.length && !(value <= bounds[i]!)) i++;
      entry.sum += value;
      entry.count += 1;
      if (i < bounds.length) {
        const key = this.bucketKeys[i]!;
        if (Object.prototype.hasOwnProperty.call(entry.bucketValues, key)) entry.bucketValues[key]! += 1;
      }
      return;
    }
    if (this.zeroLabels) this.histogram.observe(value);
    else this.histogram.observe(this.labels, value);
    this.find();
  }

  private find(): void {
    const found = findEntry(this.histogram, this.labels);
    const e = found?.entry as Partial<HistogramEntry> | undefined;
    const shaped =
      this.bounds.length > 0 &&
      typeof e?.sum === 'number' &&
      typeof e.count === 'number' &&
      typeof e.bucketValues === 'object' &&
      e.bucketValues !== null;
    this.entry = shaped ? (e as HistogramEntry) : undefined;
    this.key = found?.key ?? '';
  }
}

const NO_STORE: Record<string, unknown> = Object.freeze({});

function storeOf(metric: object): Record<string, unknown> {
  const map = (metric as SeriesStore).hashMap;
  return typeof map === 'object' && map !== null ? (map as Record<string, unknown>) : NO_STORE;
}

/** The metric's entry whose label values are these: found by value, not by prom-client's key format. */
function findEntry(metric: object, labels: Labels): { key: string; entry: { labels: Labels } } | undefined {
  const map = storeOf(metric);
  const names = Object.keys(labels);
  for (const key of Object.keys(map)) {
    const entry = map[key] as { labels?: unknown } | undefined;
    const have = entry?.labels;
    if (typeof have !== 'object' || have === null) continue;
    if (Object.keys(have).length !== names.length) continue;
    if (names.every((n) => (have as Labels)[n] === labels[n])) return { key, entry: entry as { labels: Labels } };
  }
  return undefined;
}

function labelsOf(metric: object, values: readonly string[]): Labels {
  const names = (metric as SeriesStore).labelNames ?? [];
  if (names.length !== values.length) {
    throw new Error(`expected ${names.length} label values, got ${values.length}`);
  }
  const labels: Labels = {};
  names.forEach((name, i) => (labels[name] = values[i]!));
  return labels;
}
