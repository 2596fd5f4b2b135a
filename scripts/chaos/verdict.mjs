// The chaos run's verdict, from plain data only (no clocks, no processes), so that it can be tested on
// made-up runs and re-run on a recorded one (`node scripts/chaos.mjs --verdict-from FILE`).
//
// A request:  { path: 'envoy'|'irule', identity: 'allowed'|'denied', sent, egress, answered,
//               outcome: 'allow'|'deny'|'unavailable'|'error', served_by }
//   times are milliseconds on the runner's one monotonic clock; `sent` is taken before the request is
//   written, `answered` when its answer (or error) arrived, `egress` when the upstream saw it (only
//   for allows: "allow" means the request left, whatever status the client got back).
//   outcome 'deny' is a denial the service decided; 'unavailable' is a caller's fail-closed denial
//   (Envoy's ext_authz error/timeout, the iRule's "egress-authz unavailable").
//   served_by (iRule path only): which sideband the request reached, 'healthy' when the runner's relay
//   piped it to the real service unchanged, else the fault mode that answered it, null when it reached
//   nothing (the sideband was down).
// A fault:    { name, path, kind: 'outage'|'last-good', start, end, recovery_timeout_ms }
//   start is taken after the fault is in effect (signal delivered, slow policy reported loaded),
//   end before it is undone (SIGCONT sent, process started, good bundle written), so that a request
//   sent at or after start and answered by end had no healthy service to answer it.
//
// Rules (each broken rule is a failure; any failure makes the run exit 1):
//   1. outage, Envoy path: a request sent at or after start whose egress (or answer) came by end,
//      allowed, is a fault allow.
//   2. iRule path: an allow whose sideband answer did not come unchanged from the healthy service is a
//      fault allow, at any time (no clock involved).
//   3. last-good (a corrupt bundle): the last good policy keeps deciding, so in the window the denied
//      identity is never allowed and the allowed one is never denied by the service.
//   4. the denied identity is never allowed, at any time.
//   5. after each fault the allowed identity is allowed again within recovery_timeout_ms.
//   6. every window saw requests of both identities (a fault nobody asked through proves nothing).

const EMPTY = () => ({ requests: 0, allows: 0, denied: 0, unavailable: 0, errors: 0 });

function count(stats, r) {
  stats.requests++;
  if (r.outcome === 'allow') stats.allows++;
  else if (r.outcome === 'deny') stats.denied++;
  else if (r.outcome === 'unavailable') stats.unavailable++;
  else stats.errors++;
}

const leftAt = (r) => (r.outcome === 'allow' && typeof r.egress === 'number' ? r.egress : r.answered);

/** Whether the whole life of the request fell inside the fault window. */
export function inWindow(r, f) {
  if (r.path !== f.path) return false;
  if (r.path === 'irule') return r.answered >= f.start && r.answered <= f.end;
  return typeof r.sent === 'number' && r.sent >= f.start && leftAt(r) <= f.end;
}

function isFaultAllow(r, f) {
  if (r.outcome !== 'allow') return false;
  if (r.path === 'irule') return r.served_by !== 'healthy';
  if (f.kind === 'last-good') return r.identity === 'denied';
  return true;
}

const round = (ms) => (ms === null ? null : Math.round(ms));

export function judge(requests, faults) {
  const failures = [];
  const perFault = faults.map((f) => {
    const window = { allowed: EMPTY(), denied: EMPTY() };
    let faultAllows = 0;
    let changedDecisions = 0;
    for (const r of requests) {
      if (!inWindow(r, f)) continue;
      count(window[r.identity], r);
      if (isFaultAllow(r, f)) faultAllows++;
      if (f.kind === 'last-good' && r.identity === 'allowed' && r.outcome === 'deny') changedDecisions++;
    }
    let recoveredAt = null;
    for (const r of requests) {
      if (r.path !== f.path || r.identity !== 'allowed' || r.outcome !== 'allow') continue;
      if (r.path === 'irule' && r.served_by !== 'healthy') continue;
      const t = leftAt(r);
      if (t > f.end && (recoveredAt === null || t < recoveredAt)) recoveredAt = t;
    }
    const recoveryMs = recoveredAt === null ? null : recoveredAt - f.end;
    const recovered = recoveryMs !== null && recoveryMs <= f.recovery_timeout_ms;
    const problems = [];
    if (faultAllows > 0) problems.push(`${faultAllows} allow(s) during the fault`);
    if (changedDecisions > 0) problems.push(`${changedDecisions} allowed-identity request(s) denied by the service`);
    if (!recovered)
      problems.push(
        recoveryMs === null
          ? 'no allow after the fault ended'
          : `recovered only after ${round(recoveryMs)} ms (limit ${f.recovery_timeout_ms} ms)`,
      );
    if (f.evidence && f.evidence.ok === false) problems.push(f.evidence.problem);
    if (window.allowed.requests === 0 || window.denied.requests === 0)
      problems.push('no request of one identity fell inside the fault window');
    for (const p of problems) failures.push(`${f.name}: ${p}`);
    return {
      name: f.name,
      path: f.path,
      kind: f.kind,
      window_ms: round(f.end - f.start),
      requests: window.allowed.requests + window.denied.requests,
      fault_allows: faultAllows,
      allowed_identity: window.allowed,
      denied_identity: window.denied,
      recovery_ms: round(recoveryMs),
      ...(f.evidence ? { evidence: f.evidence } : {}),
      pass: problems.length === 0,
      problems,
    };
  });
  // Rule 4 over the whole run, and rule 2 outside every window too.
  const wrongAllows = requests.filter((r) => r.identity === 'denied' && r.outcome === 'allow').length;
  if (wrongAllows > 0) failures.push(`the denied identity was allowed ${wrongAllows} time(s)`);
  const unprovable = requests.filter(
    (r) =>
      r.path === 'irule' && r.outcome === 'allow' && r.served_by !== 'healthy' && !faults.some((f) => inWindow(r, f)),
  ).length;
  if (unprovable > 0)
    failures.push(`${unprovable} iRule allow(s) outside the fault windows not answered by the service`);
  return { pass: failures.length === 0, failures, faults: perFault };
}

/** The table printed at the end of a run. */
export function formatTable(verdict) {
  const head = [
    'fault',
    'path',
    'window',
    'requests',
    'allows',
    'fault allows',
    'denied',
    'unavail.',
    'errors',
    'recovery',
    '',
  ];
  const rows = verdict.faults.map((f) => {
    const sum = (k) => f.allowed_identity[k] + f.denied_identity[k];
    return [
      f.name,
      f.path,
      `${(f.window_ms / 1000).toFixed(1)} s`,
      String(f.requests),
      String(sum('allows')),
      String(f.fault_allows),
      String(sum('denied')),
      String(sum('unavailable')),
      String(sum('errors')),
      f.recovery_ms === null ? '-' : `${(f.recovery_ms / 1000).toFixed(2)} s`,
      f.pass ? 'ok' : 'FAIL',
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells) =>
    cells
      .map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join('  ')
      .trimEnd();
  const out = [line(head), ...rows.map(line)];
  out.push(verdict.pass ? 'verdict: pass' : `verdict: FAIL\n  ${verdict.failures.join('\n  ')}`);
  return out.join('\n');
}
