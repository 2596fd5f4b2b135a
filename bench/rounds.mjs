// Best of several 1-second rounds of a synchronous call: on a shared machine the minimum is the
// figure least disturbed by others.
export function bestOfRounds(rounds, call, batch = 100) {
  let best = Infinity;
  let total = 0;
  for (let round = 0; round < rounds; round++) {
    let n = 0;
    const started = performance.now();
    const end = started + 1000;
    while (performance.now() < end) {
      for (let i = 0; i < batch; i++) call();
      n += batch;
    }
    total += n;
    best = Math.min(best, ((performance.now() - started) * 1000) / n);
  }
  return { checks: total, best_us_per_check: Math.round(best * 100) / 100, checks_per_s: Math.round(1e6 / best) };
}
