// Path `grpc`: ghz straight at an ext_authz server, pinned to its own core, fixed concurrency over
// one HTTP/2 connection (as Envoy's ext_authz client uses per worker), warm-up then measured run.
import { readFileSync } from 'node:fs';
import { checkMethod, includeDirs, protoFile } from './ext-authz-proto.mjs';
import { runCommand } from './processes.mjs';

const NS_PER_MS = 1e6;

function percentile(report, p) {
  const entry = (report.latencyDistribution ?? []).find((d) => d.percentage === p);
  return entry ? Math.round((entry.latency / NS_PER_MS) * 1000) / 1000 : null;
}

// When the duration ends, ghz closes its connection under the requests still in flight and reports
// them as failed with one of these messages; at most `concurrency` of them are ghz's own doing.
const STOP_ARTEFACT = /use of closed network connection|context canceled/;

/**
 * Runs ghz for `seconds` and summarises its JSON report. Every gRPC status other than OK counts as
 * an error (the allow itself was checked by the readiness probe: same request, same server), except
 * the in-flight requests ghz cancels itself at the end.
 */
/** `total`: send exactly that many requests (one pass over a workload's data file) instead of `seconds`. */
export async function runGhz({ ghz, core, addr, requestFile, concurrency, connections = 1, seconds, total, outFile }) {
  const args = [
    '-c',
    String(core),
    ghz,
    '--insecure',
    '--proto',
    protoFile,
    '--import-paths',
    includeDirs.join(','),
    '--call',
    checkMethod,
    '-D',
    requestFile,
    '-c',
    String(concurrency),
    '--connections',
    String(connections),
    ...(total ? ['-n', String(total)] : ['-z', `${seconds}s`]),
    '-O',
    'json',
    '-o',
    outFile,
    addr,
  ];
  const r = await runCommand('taskset', args, {
    timeoutMs: ((seconds ?? 0) + (total ? 300 : 60)) * 1000,
    env: { ...process.env, GOMAXPROCS: '1' },
  });
  if (r.code !== 0) throw new Error(`ghz exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 500)}`);
  const report = JSON.parse(readFileSync(outFile, 'utf8'));
  const ok = report.statusCodeDistribution?.OK ?? 0;
  const artefacts = Object.entries(report.errorDistribution ?? {})
    .filter(([message]) => STOP_ARTEFACT.test(message))
    .reduce((n, [, count]) => n + count, 0);
  const cancelledAtStop = artefacts <= concurrency ? artefacts : 0;
  return {
    rps: Math.round(report.rps),
    p50_ms: percentile(report, 50),
    p99_ms: percentile(report, 99),
    errors: report.count - ok - cancelledAtStop,
    cancelled_at_stop: cancelledAtStop,
    requests: report.count,
    errorDistribution: report.errorDistribution ?? {},
  };
}
