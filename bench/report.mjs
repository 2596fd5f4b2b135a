// Turns the runs into the three result files: a Markdown report, an SVG bar chart drawn by hand from
// the numbers (no charting dependency), and the raw figures as JSON.

const fmt = (v, digits = 2) =>
  v === null || v === undefined
    ? '–'
    : typeof v === 'number'
      ? Number.isInteger(v)
        ? String(v)
        : v.toFixed(digits)
      : String(v);

export function resultsTable(runs) {
  const lines = [
    '| path | system | workload | policy | workers | connections | target rps | rps | p50 ms | p99 ms | p99 over no-op, ms | p99 over contract no-op, ms | p99 added vs envoy-only, ms | errors | peak RSS MB | load gen CPU % | other CPU % |',
    '|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of runs) {
    const envoyRow = r.path === 'envoy' && r.system !== 'envoy-only';
    lines.push(
      `| ${r.path} | ${r.system}${r.transport ? ` (${r.transport})` : ''}${r.answer ? ` (${r.answer} answer)` : ''} | ${r.workload ?? 'hot'} | ${r.policy ?? ''} | ${fmt(r.workers ?? 1)} | ${r.path === 'grpc' ? fmt(r.connections ?? 1) : ''} | ${r.target_rps !== undefined ? fmt(r.target_rps) : ''} | ${fmt(r.rps)} | ${fmt(r.p50_ms, 3)} | ${fmt(r.p99_ms, 3)} | ${envoyRow ? fmt(r.p99_over_noop_ms, 3) : ''} | ${envoyRow ? fmt(r.p99_over_contract_noop_ms, 3) : ''} | ${envoyRow ? fmt(r.p99_added_ms, 3) : ''} | ${fmt(r.errors)} | ${fmt(r.rss_mb, 1)} | ${fmt(r.load_generator_cpu_pct)} | ${fmt(r.other_cpu_pct)} |`,
    );
  }
  return lines.join('\n');
}

/** The run of a system on a path for a workload (runs without the field are hot), peer policy, workers. */
function pick(runs, system, path, { workload = 'hot', policy, workers = 1, target, connections = 1, transport } = {}) {
  return runs.find(
    (r) =>
      r.system === system &&
      r.path === path &&
      (r.workload ?? 'hot') === workload &&
      (policy === undefined || (r.policy ?? 'certificate') === policy) &&
      (r.workers ?? 1) === workers &&
      (r.connections ?? 1) === connections &&
      // A grpc run at a fixed rate has target_rps; without a target only the throughput runs match.
      r.target_rps === target &&
      r.transport === transport &&
      r.answer === undefined,
  );
}

/** The issue's goals, judged from this run's figures; a goal without the figures it needs is "not measured". */
export function goals(runs) {
  const ours = pick(runs, 'egress-authz', 'grpc');
  const opa = pick(runs, 'opa-envoy-plugin', 'grpc', { policy: 'certificate' });
  const noop = pick(runs, 'noop', 'grpc');
  const viaEnvoy = pick(runs, 'egress-authz', 'envoy', { target: 2000 });
  const rows = [];
  const row = (goal, ok, figure) =>
    rows.push({ goal, status: ok === null ? 'not measured' : ok ? 'met' : 'NOT met', figure });
  row(
    'hot grpc: throughput ≥ 2× opa-envoy-plugin',
    ours && opa ? ours.rps >= 2 * opa.rps : null,
    ours && opa ? `${(ours.rps / opa.rps).toFixed(2)}× (${ours.rps} vs ${opa.rps} rps)` : '',
  );
  row(
    'hot grpc: p99 ≤ opa-envoy-plugin p99',
    ours && opa ? ours.p99_ms <= opa.p99_ms : null,
    ours && opa ? `${fmt(ours.p99_ms, 3)} vs ${fmt(opa.p99_ms, 3)} ms` : '',
  );
  row(
    'hot grpc: throughput ≥ 70 % of no-op grpc-js',
    ours && noop ? ours.rps >= 0.7 * noop.rps : null,
    ours && noop ? `${Math.round((100 * ours.rps) / noop.rps)} % (${ours.rps} vs ${noop.rps} rps)` : '',
  );
  // Not a goal of the issues: how close the Check path comes to Node's own HTTP/2 doing nothing.
  for (const workload of ['hot', 'warm']) {
    const a = pick(runs, 'egress-authz', 'grpc', { workload });
    const h2 = pick(runs, 'noop', 'grpc', { workload, transport: 'http2' });
    rows.push({
      goal: `${workload} grpc: throughput against the node:http2 no-op (no goal: the Node ceiling)`,
      status: a && h2 ? 'for information' : 'not measured',
      figure: a && h2 ? `${Math.round((100 * a.rps) / h2.rps)} % (${a.rps} vs ${h2.rps} rps)` : '',
    });
  }
  row(
    'envoy at 2,000 rps: p99 added by ext_authz < 1 ms',
    viaEnvoy && viaEnvoy.p99_added_ms !== null && viaEnvoy.target_rps === 2000
      ? viaEnvoy.p99_added_ms < 1 && viaEnvoy.rps >= 0.95 * viaEnvoy.target_rps
      : null,
    viaEnvoy ? `${fmt(viaEnvoy.p99_added_ms, 3)} ms (target ${viaEnvoy.target_rps} rps, achieved ${viaEnvoy.rps})` : '',
  );
  // Issue 10: the traffic a cluster really has.
  const ratio = (goal, a, b, factor) =>
    row(
      goal,
      a && b ? a.rps >= factor * b.rps : null,
      a && b ? `${(a.rps / b.rps).toFixed(2)}× (${a.rps} vs ${b.rps} rps)` : '',
    );
  const warm = pick(runs, 'egress-authz', 'grpc', { workload: 'warm' });
  const cold = pick(runs, 'egress-authz', 'grpc', { workload: 'cold' });
  ratio(
    'warm grpc: throughput ≥ 2× opa-envoy-plugin (principal)',
    warm,
    pick(runs, 'opa-envoy-plugin', 'grpc', { workload: 'warm', policy: 'principal' }),
    2,
  );
  ratio(
    'cold grpc: throughput ≥ 1× opa-envoy-plugin (principal)',
    cold,
    pick(runs, 'opa-envoy-plugin', 'grpc', { workload: 'cold', policy: 'principal' }),
    1,
  );
  ratio(
    'cold grpc: throughput ≥ 1.5× opa-envoy-plugin (certificate)',
    cold,
    pick(runs, 'opa-envoy-plugin', 'grpc', { workload: 'cold', policy: 'certificate' }),
    1.5,
  );
  const warmAt = pick(runs, 'egress-authz', 'grpc', { workload: 'warm', target: 1000 });
  const peerWarmAt = pick(runs, 'opa-envoy-plugin', 'grpc', { workload: 'warm', target: 1000, policy: 'principal' });
  row(
    'warm grpc at 1,000 rps: p99 ≤ opa-envoy-plugin (principal)',
    warmAt && peerWarmAt ? warmAt.p99_ms <= peerWarmAt.p99_ms && warmAt.rps >= 0.95 * warmAt.target_rps : null,
    warmAt && peerWarmAt
      ? `${fmt(warmAt.p99_ms, 3)} vs ${fmt(peerWarmAt.p99_ms, 3)} ms (p50 ${fmt(warmAt.p50_ms, 3)} vs ${fmt(peerWarmAt.p50_ms, 3)}; achieved ${warmAt.rps} rps)`
      : '',
  );
  const at1000 = pick(runs, 'egress-authz', 'envoy', { target: 1000 });
  const peer1000 = pick(runs, 'opa-envoy-plugin', 'envoy', { target: 1000, policy: 'principal' });
  row(
    'envoy at 1,000 rps: p99 ≤ opa-envoy-plugin (principal)',
    at1000 && peer1000 ? at1000.p99_ms <= peer1000.p99_ms : null,
    at1000 && peer1000 ? `${fmt(at1000.p99_ms, 3)} vs ${fmt(peer1000.p99_ms, 3)} ms` : '',
  );
  const sweep = runs.filter((r) => r.system === 'egress-authz' && r.path === 'envoy' && r.target_rps <= 2000);
  const worst = sweep.reduce(
    (w, r) => (w === null || (r.p99_over_noop_ms ?? Infinity) > w ? (r.p99_over_noop_ms ?? Infinity) : w),
    null,
  );
  row(
    'envoy: p99 over the no-op server ≤ 1 ms at every rate up to 2,000 rps',
    sweep.length ? worst <= 1 : null,
    sweep.length
      ? `${sweep.map((r) => `${r.target_rps}: ${fmt(r.p99_over_noop_ms, 3)} ms`).join(', ')} (over the contract-answer no-op: ${sweep.map((r) => fmt(r.p99_over_contract_noop_ms, 3)).join(' / ')} ms)`
      : '',
  );
  // Both over the same 2 connections (one would leave the second worker idle: see run.mjs).
  const two = pick(runs, 'egress-authz', 'grpc', { workload: 'warm', workers: 2, connections: 2 });
  const one = pick(runs, 'egress-authz', 'grpc', { workload: 'warm', workers: 1, connections: 2 });
  row(
    'warm grpc, --workers 2: throughput vs 1 worker (2 connections each)',
    two && one ? two.rps > one.rps : null,
    two && one
      ? `${(two.rps / one.rps).toFixed(2)}× (${two.rps} vs ${one.rps} rps; load generator ${fmt(two.load_generator_cpu_pct)} % of a core)`
      : '',
  );
  const warmRss = runs.filter((r) => r.system === 'egress-authz' && r.workload === 'warm' && r.rss_mb !== null);
  row(
    'warm: RSS ≤ 128 MB per worker',
    // A worker's own peak where the run has it (the primary, which answers no Check, apart), else the
    // whole process over its workers.
    warmRss.length
      ? warmRss.every((r) => (r.worker_rss_mb ? Math.max(...r.worker_rss_mb) : r.rss_mb / (r.workers ?? 1)) <= 128)
      : null,
    warmRss
      .map((r) =>
        r.worker_rss_mb
          ? `${r.workers} workers: ${r.worker_rss_mb.join(' / ')} MB each, primary ${r.primary_rss_mb} MB`
          : `${r.rss_mb} MB with ${r.workers ?? 1} worker`,
      )
      .join(', '),
  );
  // Per process: a --workers run's rss_mb is its primary and workers together (worker_rss_mb and
  // primary_rss_mb hold each one's), which a bound set before there were workers does not mean.
  const ourRuns = runs.filter((r) => r.system === 'egress-authz' && r.rss_mb !== null);
  const perProcess = ourRuns.flatMap((r) =>
    r.worker_rss_mb ? [...r.worker_rss_mb, ...(r.primary_rss_mb != null ? [r.primary_rss_mb] : [])] : [r.rss_mb],
  );
  const together = ourRuns.filter((r) => r.worker_rss_mb).map((r) => r.rss_mb);
  row(
    'peak RSS under load < 150 MB (each process)',
    perProcess.length ? Math.max(...perProcess) < 150 : null,
    perProcess.length
      ? `${Math.max(...perProcess)} MB${together.length ? ` (a --workers service, all its processes together: ${Math.max(...together)} MB)` : ''}`
      : '',
  );
  return rows;
}

export function goalsTable(runs) {
  return [
    '| goal | status | figure |',
    '|---|---|---|',
    ...goals(runs).map((g) => `| ${g.goal} | ${g.status} | ${g.figure} |`),
  ].join('\n');
}

const escapeXml = (s) =>
  String(s).replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]);
const COLORS = { 'egress-authz': '#2b6cb0', 'opa-envoy-plugin': '#c05621', noop: '#718096', 'envoy-only': '#2f855a' };

/** One horizontal bar chart panel; returns [svg fragment, height]. */
function panel(title, bars, unit, x, y, width) {
  const rowH = 26;
  const labelW = 280;
  const valueW = 90;
  const max = Math.max(...bars.map((b) => b.value), 1e-9);
  const parts = [`<text x="${x}" y="${y + 16}" font-size="15" font-weight="bold">${escapeXml(title)}</text>`];
  bars.forEach((b, i) => {
    const top = y + 30 + i * rowH;
    const w = Math.max(1, ((width - labelW - valueW) * b.value) / max);
    parts.push(
      `<text x="${x}" y="${top + 15}" font-size="12">${escapeXml(b.label)}</text>`,
      `<rect x="${x + labelW}" y="${top + 2}" width="${w.toFixed(1)}" height="${rowH - 8}" fill="${COLORS[b.system] ?? '#4a5568'}"/>`,
      `<text x="${(x + labelW + w + 6).toFixed(1)}" y="${top + 15}" font-size="12">${escapeXml(fmt(b.value, unit === 'ms' ? 3 : 0))} ${unit}</text>`,
    );
  });
  return [parts.join('\n  '), 30 + bars.length * rowH + 20];
}

export function chartSvg(runs, subtitle) {
  const width = 760;
  const measured = runs.filter((r) => r.rps !== null && r.p99_ms !== null);
  const label = (r) =>
    `${r.system}${r.transport ? ` ${r.transport}` : ''}${r.answer ? ` ${r.answer}` : ''}${r.policy ? ` ${r.policy}` : ''}${(r.workers ?? 1) > 1 ? ` ×${r.workers}` : ''}${(r.connections ?? 1) > 1 ? ` ${r.connections} conn` : ''} (${r.path === 'grpc' ? (r.workload ?? 'hot') : r.path})`;
  const rpsBars = measured
    .filter((r) => r.path === 'grpc' && r.target_rps === undefined)
    .map((r) => ({ label: label(r), system: r.system, value: r.rps }));
  const p99Bars = measured
    .filter((r) => r.path === 'envoy' && r.target_rps === 2000)
    .map((r) => ({ label: label(r), system: r.system, value: r.p99_ms }));
  let y = 50;
  const body = [];
  for (const [title, bars, unit] of [
    ['Throughput, path grpc (fixed concurrency; higher is better)', rpsBars, 'rps'],
    ['p99 latency through Envoy at 2,000 rps (lower is better)', p99Bars, 'ms'],
  ]) {
    if (bars.length === 0) continue;
    const [svg, h] = panel(title, bars, unit, 20, y, width - 40);
    body.push(svg);
    y += h;
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y + 10}" viewBox="0 0 ${width} ${y + 10}" font-family="sans-serif">
  <rect width="100%" height="100%" fill="white"/>
  <text x="20" y="24" font-size="17" font-weight="bold">egress-authz benchmark</text>
  <text x="20" y="42" font-size="12" fill="#4a5568">${escapeXml(subtitle)}</text>
  ${body.join('\n  ')}
</svg>
`;
}

function disturbanceWarning(runs) {
  const disturbed = runs.filter((r) => (r.other_cpu_pct ?? 0) > 25);
  if (disturbed.length === 0) return '';
  const worst = Math.max(...disturbed.map((r) => r.other_cpu_pct));
  return `\n**Disturbed:** other processes on this machine used more than a quarter of a core during ${disturbed.length} of ${runs.length} measured runs (up to ${worst} % of a core, column "other CPU %"); those figures are lower (rps) and higher (latency) than on a quiet machine.\n`;
}

export function resultsMarkdown({ meta, runs, skipped, notes }) {
  const machine = meta.machine;
  const v = meta.versions;
  return `# Benchmark results

Produced by \`${meta.command}\` on ${meta.date} (${meta.mode} run). Raw figures: [results/latest.json](results/latest.json); chart: [results/latest.svg](results/latest.svg).

![benchmark chart](results/latest.svg)

${resultsTable(runs)}
${disturbanceWarning(runs)}${skipped.length ? `\nSkipped:\n${skipped.map((s) => `- ${s}`).join('\n')}\n` : ''}
## Goals (issues 7 and 10)

${goalsTable(runs)}

## Machine and versions

- machine: ${machine.nproc} CPUs (${machine.cpu}), ${machine.memory_gb} GB memory, Linux ${machine.kernel}
- node ${v.node}; egress-authz ${v['egress-authz']}; opa-envoy-plugin ${v['opa-envoy-plugin']}; ${v.loadgen ?? 'loadgen not built'}; ghz ${v.ghz}; envoy ${v.envoy ?? 'not installed'}; h2load ${v.h2load ?? 'not installed'}

## How it was measured

${notes.map((n) => `- ${n}`).join('\n')}
`;
}
