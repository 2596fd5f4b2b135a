// How hard the fuzz suites push: a few hundred runs per property in `npm test` (seconds), many more
// under `npm run fuzz` (FUZZ_RUNS=20000 by default there). fast-check prints the seed of any failure.
export const FUZZ_RUNS = Math.max(1, Number(process.env.FUZZ_RUNS ?? 200) || 200);

/** A run count scaled for properties whose single run is expensive (network round trips). */
export function scaledRuns(divisor: number): number {
  return Math.max(10, Math.round(FUZZ_RUNS / divisor));
}
