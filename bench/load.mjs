// Path `grpc`: a load generator straight at an ext_authz server, pinned to its own core, fixed
// concurrency over one HTTP/2 connection (as Envoy's ext_authz client uses per worker), warm-up then
// measured run. Two generators, both on grpc-go: bench/loadgen (the default: pre-encoded requests, a
// timer per call, ~6x less CPU a Check: ~15 against ~90 µs) and ghz (what earlier results used; it tops out near 10,500
// warm Checks/s on one core of this machine, below what the fastest servers answer).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkMethod, includeDirs, protoFile } from './ext-authz-proto.mjs';
import { runCommand } from './processes.mjs';

export const LOAD_GENERATORS = ['loadgen', 'ghz'];

const NS_PER_MS = 1e6;

function percentile(report, p) {
  const entry = (report.latencyDistribution ?? []).find((d) => d.percentage === p);
  return entry ? Math.round((entry.latency / NS_PER_MS) * 1000) / 1000 : null;
}

// When the duration ends, ghz closes its connection under the requests still in flight and reports
// them as failed with one of these messages; at most `concurrency` of them are ghz's own doing.
// loadgen stops sending instead and waits for the answers, so it has none.
const STOP_ARTEFACT = /use of closed network connection|context canceled/;

function argsFor(tool, { addr, requests, concurrency, connections, seconds, total, rps, outFile }) {
  const amount = total ? ['-n', String(total)] : ['-z', `${seconds}s`, ...(rps ? ['--rps', String(rps)] : [])];
  const common = ['-c', String(concurrency), '--connections', String(connections), ...amount, '-o', outFile];
  if (tool === 'loadgen') return ['-addr', addr, '-call', `/${checkMethod}`, '-data', requests.bin, ...common];
  return [
    '--insecure',
    '--proto',
    protoFile,
    '--import-paths',
    includeDirs.join(','),
    '--call',
    checkMethod,
    '-D',
    requests.json,
    ...common,
    '-O',
    'json',
    addr,
  ];
}

/**
 * Runs the load generator `tool` (from `tools`) for `seconds` (as fast as answered, or `rps` a
 * second), or for exactly `total` requests (one pass over a workload's requests), and summarises its
 * JSON report (loadgen writes the fields of ghz's that are read here). Every gRPC status other than OK counts as an error (the allow itself was
 * checked by the readiness probe: same request, same server), except the in-flight requests ghz
 * cancels itself at the end. `requests`: {json: ghz's data file, bin: loadgen's}.
 */
export async function runLoad(opts) {
  const { tool = 'loadgen', tools, core, concurrency, seconds, total, outFile } = opts;
  if (!LOAD_GENERATORS.includes(tool)) throw new Error(`unknown load generator ${tool}`);
  const args = argsFor(tool, { ...opts, connections: opts.connections ?? 1 });
  const r = await runCommand('taskset', ['-c', String(core), join(tools, tool), ...args], {
    timeoutMs: ((seconds ?? 0) + (total ? 300 : 60)) * 1000,
    env: { ...process.env, GOMAXPROCS: '1' },
  });
  if (r.code !== 0) throw new Error(`${tool} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 500)}`);
  const report = JSON.parse(readFileSync(outFile, 'utf8'));
  const ok = report.statusCodeDistribution?.OK ?? 0;
  const artefacts = Object.entries(report.errorDistribution ?? {})
    .filter(([message]) => STOP_ARTEFACT.test(message))
    .reduce((n, [, count]) => n + count, 0);
  const cancelledAtStop = tool === 'ghz' && artefacts <= concurrency ? artefacts : 0;
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
