#!/usr/bin/env node
// One-command benchmark (issue 7): egress-authz against opa-envoy-plugin and a no-op grpc-js
// ceiling, on path `grpc` (a load generator straight at the server) and path `envoy` (fixed rate through real
// Envoy with ext_authz, plus Envoy alone). Each server runs pinned to core 0 and each load generator
// to core 1, so the figures are per core. Usage (after scripts/install-bench-tools.sh):
//   node bench/run.mjs [--quick] [--no-envoy] [--no-grpc] [--systems a,b] [--logs] [--opa-decision-logs on|off]
//                    [--wait-quiet SECONDS] [--identities N] [--rates R,R,...] [--sweep-rounds N] [--workers N,N]
//                    [--load-generator loadgen|ghz] [--grpc-rate RPS]
// Workloads (issue 10): hot (one workload), warm (--identities distinct workloads × 3 destinations, half
// denied, after a warm-up pass), cold (the same, egress-authz with its caches off); the peer with both
// its policies (principal-only, certificate-parsing); a rate sweep through Envoy; workers 1 vs 2.
// Writes bench/RESULTS.md, bench/results/latest.json and bench/results/latest.svg.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { checkRequest, waitForAllow } from './check-request.mjs';
import { envoyVersion, runH2load, waitForEnvoy, writeEnvoyConfig } from './envoy.mjs';
import { LOAD_GENERATORS, runLoad } from './load.mjs';
import { makeIdentities } from './identities.mjs';
import { makePki } from './pki.mjs';
import { startNodeFlags } from './node-flags.mjs';
import {
  childrenPeakRssMb,
  freePort,
  peakRssMb,
  runCommand,
  startCpuWatch,
  startProcess,
  stopProcess,
} from './processes.mjs';
import { workloadRequests, writeRequestFiles } from './workloads.mjs';
import { chartSvg, goalsTable, resultsMarkdown, resultsTable } from './report.mjs';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const tools = join(root, '.tools', 'bin');
const work = join(root, 'bench', 'work');
const SERVER_CORE = 0;
const LOAD_CORE = 1;
const SYSTEMS = ['egress-authz', 'opa-envoy-plugin', 'noop'];

const { values: opts } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    'no-envoy': { type: 'boolean', default: false },
    'no-grpc': { type: 'boolean', default: false },
    systems: { type: 'string', default: SYSTEMS.join(',') },
    logs: { type: 'boolean', default: false },
    'opa-decision-logs': { type: 'string', default: 'on' },
    'wait-quiet': { type: 'string', default: '0' },
    'report-only': { type: 'boolean', default: false },
    identities: { type: 'string' },
    rates: { type: 'string' },
    'sweep-rounds': { type: 'string' },
    workers: { type: 'string' },
    'load-generator': { type: 'string', default: 'loadgen' },
    'grpc-rate': { type: 'string', default: '1000' },
  },
});
// --quick: the grpc path's three workloads only (no Envoy sweep, no second worker), in under 3 minutes.
const plan = opts.quick
  ? {
      mode: 'quick',
      warmupS: 1,
      measureS: 4,
      concurrency: 50,
      sweepWarmupS: 1,
      sweepMeasureS: 3,
      sweepRounds: 2,
      stationWarmupS: 2,
    }
  : {
      mode: 'full',
      warmupS: 5,
      measureS: 15,
      concurrency: 50,
      sweepWarmupS: 1,
      sweepMeasureS: 5,
      sweepRounds: 5,
      stationWarmupS: 5,
    };
if (opts['sweep-rounds'] !== undefined) plan.sweepRounds = Number(opts['sweep-rounds']);
if (!(Number.isSafeInteger(plan.sweepRounds) && plan.sweepRounds >= 1 && plan.sweepRounds <= 50))
  throw new Error('--sweep-rounds takes a count from 1 to 50');
// --quick: 1,000 identities (3,000 requests), so the warm-up pass over all of them stays short.
plan.identities = Number(opts.identities ?? (opts.quick ? 1000 : 3000));
if (!(Number.isSafeInteger(plan.identities) && plan.identities >= 1 && plan.identities <= 200_000))
  throw new Error('--identities takes a count from 1 to 200000');
plan.rates = (opts.rates ?? (opts.quick ? '' : '250,500,1000,2000,4000,8000')).split(',').filter(Boolean).map(Number);
if (plan.rates.some((r) => !(r >= 10 && r <= 100_000))) throw new Error('--rates takes rates from 10 to 100000 rps');
const requestedWorkers = (opts.workers ?? (opts.quick ? '1' : '1,2')).split(',').filter(Boolean).map(Number);
if (requestedWorkers.some((w) => !(Number.isSafeInteger(w) && w >= 1 && w <= cpus().length)))
  throw new Error(`--workers takes counts from 1 to ${cpus().length}`);
const wanted = opts.systems
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
if (!['on', 'off'].includes(opts['opa-decision-logs'])) throw new Error('--opa-decision-logs takes on or off');
for (const s of wanted) if (!SYSTEMS.includes(s)) throw new Error(`unknown system ${s} (known: ${SYSTEMS.join(', ')})`);

// The warm workload at a fixed rate straight over gRPC (issue 10: "p99 at 1,000 rps ≤ the peer's");
// 0 leaves it out.
plan.grpcRate = Number(opts['grpc-rate']);
if (!(plan.grpcRate === 0 || (plan.grpcRate >= 10 && plan.grpcRate <= 100_000)))
  throw new Error('--grpc-rate takes a rate from 10 to 100000 rps, or 0');
if (!LOAD_GENERATORS.includes(opts['load-generator']))
  throw new Error(`--load-generator takes ${LOAD_GENERATORS.join(' or ')}`);
const loadTool = opts['load-generator'];

const waitQuietS = Number(opts['wait-quiet']);
if (!(waitQuietS >= 0 && waitQuietS <= 600)) throw new Error('--wait-quiet takes seconds, 0 to 600');

const log = (msg) => console.error(`bench: ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Where a server's output goes: /dev/null unless --logs (decision logs included, see notes). */
const sink = (name) => (opts.logs ? join(work, 'logs', `${name}.log`) : 'ignore');

// --- systems -------------------------------------------------------------------------------------

const systems = {
  'egress-authz': {
    async prepare() {
      if (!existsSync(join(root, 'src', 'cli.ts')))
        return 'skipped: egress-authz has no src/cli.ts in this tree (core service not merged yet)';
      // What `npm ci` builds: dist/ and the embedded default policy bundle (needs the opa CLI).
      const build = await runCommand('npm', ['run', 'prepare'], { cwd: root, timeoutMs: 600_000 });
      if (build.code !== 0)
        return `skipped: npm run prepare failed: ${(build.stderr || build.stdout).trim().slice(-400)}`;
      return null;
    },
    async start(grpcAddr, { workers = 1, cold = false } = {}) {
      const httpAddr = `127.0.0.1:${await freePort()}`;
      const flags = [];
      // cold: nothing remembered, every certificate parsed and every decision evaluated.
      if (cold) flags.push('--svid-cache-entries', '0', '--policy-memo', 'off');
      if (await supportsWorkers()) flags.push('--workers', String(workers));
      else if (workers !== 1) throw new Error('this build has no serve --workers');
      // Its decision log (one JSON line per Check, on stdout) goes to /dev/null, like opa-envoy-plugin's.
      return startProcess(
        'taskset',
        [
          '-c',
          serverCores(workers),
          process.execPath,
          ...startNodeFlags(),
          join(root, 'dist', 'cli.js'),
          'serve',
          '--grpc-addr',
          grpcAddr,
          '--http-addr',
          httpAddr,
          ...flags,
        ],
        {
          cwd: root,
          stdout: sink('egress-authz'),
          stderr: sink('egress-authz'),
        },
      );
    },
  },
  'opa-envoy-plugin': {
    async prepare() {
      return existsSync(join(tools, 'opa-envoy-plugin'))
        ? null
        : 'skipped: opa-envoy-plugin not installed (scripts/install-bench-tools.sh)';
    },
    async start(grpcAddr, { policy = 'certificate' } = {}) {
      const dir = join(root, 'bench', 'opa-envoy-plugin');
      const config = join(work, 'opa-envoy-plugin.yaml');
      writeFileSync(
        config,
        readFileSync(join(dir, 'config.template.yaml'), 'utf8')
          .replace('${GRPC_ADDR}', grpcAddr)
          .replace('${DECISION_LOGS}', String(opts['opa-decision-logs'] === 'on')),
      );
      const httpAddr = `127.0.0.1:${await freePort()}`;
      // OPA writes its logs, console decision logs included, to stderr.
      return startProcess(
        'taskset',
        [
          '-c',
          String(SERVER_CORE),
          join(tools, 'opa-envoy-plugin'),
          'run',
          '--server',
          '--addr',
          httpAddr,
          '--config-file',
          config,
          '--disable-telemetry',
          join(dir, policy === 'principal' ? 'policy-principal.rego' : 'policy.rego'),
        ],
        {
          env: { ...process.env, GOMAXPROCS: '1' },
          stdout: sink('opa-envoy-plugin'),
          stderr: sink('opa-envoy-plugin'),
        },
      );
    },
  },
  noop: {
    async prepare() {
      return null;
    },
    async start(grpcAddr, { answer, transport } = {}) {
      return startProcess(
        'taskset',
        [
          '-c',
          String(SERVER_CORE),
          process.execPath,
          ...startNodeFlags(),
          join(root, 'bench', 'noop-server.mjs'),
          grpcAddr,
          ...(answer === 'contract' ? ['--contract'] : []),
          ...(transport === 'http2' ? ['--http2'] : []),
        ],
        {
          stdout: sink('noop'),
          stderr: sink('noop'),
        },
      );
    },
  },
};

/** Server cores: core 0, or cores 0..N-1 for N workers (the load generator stays on core 1). */
function serverCores(workers) {
  return workers === 1 ? String(SERVER_CORE) : Array.from({ length: workers }, (_, i) => i).join(',');
}

let workersFlag;
/** Whether this build's serve has --workers (the flag comes with issue 10's "every core" work). */
async function supportsWorkers() {
  if (workersFlag === undefined) {
    const config = await import(join(root, 'dist', 'service', 'config.js')).catch(() => ({}));
    workersFlag = Boolean(config.SERVE_OPTIONS && 'workers' in config.SERVE_OPTIONS);
  }
  return workersFlag;
}

async function startReady(name, request, variant = {}) {
  const grpcAddr = `127.0.0.1:${await freePort()}`;
  const child = await systems[name].start(grpcAddr, variant);
  try {
    await waitForAllow(grpcAddr, request, 60_000, () => child.exitCode === null && child.signalCode === null);
  } catch (err) {
    await stopProcess(child);
    throw new Error(
      `${err.message}${opts.logs ? ` (server output: bench/work/logs/${name}.log)` : ' (rerun with --logs to keep the server output)'}`,
    );
  }
  return { child, grpcAddr };
}

/**
 * On a shared machine, waits (at most --wait-quiet seconds) until processes outside the benchmark use
 * less than a quarter of a core, so that a measured run starts undisturbed. Returns the seconds waited.
 */
async function waitForQuiet() {
  const started = Date.now();
  while (waitQuietS > 0 && Date.now() - started < waitQuietS * 1000) {
    const watch = startCpuWatch();
    await sleep(1000);
    const { other_cpu_pct: other } = watch.stop();
    if (other < 25) break;
    log(`machine busy (other processes use ${other} % of a core), waiting`);
  }
  return Math.round((Date.now() - started) / 1000);
}

// --- paths ---------------------------------------------------------------------------------------

/** What a run measured: the workload, the peer's policy, the worker count (see notes). */
function variantFields({ name, workload, policy, workers, connections = 1, transport }) {
  return {
    workload,
    ...(transport ? { transport } : {}),
    policy: name === 'opa-envoy-plugin' ? policy : null,
    workers: name === 'egress-authz' ? workers : 1,
    connections,
    ...(workload === 'hot' ? {} : { identities: plan.identities }),
  };
}

async function grpcRun(variant, request, files) {
  const { name, workload } = variant;
  const { child, grpcAddr } = await startReady(name, request, { ...variant, cold: workload === 'cold' });
  const label = `${name}${variant.policy && name === 'opa-envoy-plugin' ? ` (${variant.policy})` : ''}${variant.workers > 1 ? ` ×${variant.workers}` : ''}${(variant.connections ?? 1) > 1 ? ` (${variant.connections} connections)` : ''}${variant.transport ? ` (${variant.transport})` : ''} grpc ${workload}${variant.rate ? ` at ${variant.rate} rps` : ''}`;
  try {
    const requests = workload === 'hot' ? files.hot : files.many;
    const common = {
      tool: loadTool,
      tools,
      core: LOAD_CORE,
      addr: grpcAddr,
      requests,
      concurrency: plan.concurrency,
      connections: variant.connections ?? 1,
      outFile: join(work, `load-${name}.json`),
      // At a fixed rate the concurrency is only a bound on the calls in flight (open loop).
      ...(variant.rate ? { rps: variant.rate } : {}),
    };
    if (workload !== 'hot') {
      // One pass over every identity × destination first: the warm workload's steady state has all of
      // them seen; for cold it changes nothing (its caches are off) but keeps the two runs alike.
      log(`${label}: warm-up pass over ${requests.count} requests`);
      await runLoad({ ...common, total: requests.count });
    }
    log(`${label}: warm-up ${plan.warmupS} s`);
    await runLoad({ ...common, seconds: plan.warmupS });
    log(
      `${label}: measuring ${plan.measureS} s ${variant.rate ? `at ${variant.rate} rps` : `at concurrency ${plan.concurrency}`}`,
    );
    const waited = await waitForQuiet();
    const watch = startCpuWatch();
    const m = await runLoad({ ...common, seconds: plan.measureS });
    const disturbance = watch.stop();
    const rss = peakRssMb(child.pid);
    // With workers, rss_mb is the primary and its workers together; each worker's own peak beside it.
    const workerRss = (variant.workers ?? 1) > 1 ? childrenPeakRssMb(child.pid) : [];
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${name} exited during the run`);
    return {
      system: name,
      path: 'grpc',
      ...variantFields(variant),
      ...(variant.rate ? { target_rps: variant.rate } : {}),
      load_generator: loadTool,
      rps: m.rps,
      p50_ms: m.p50_ms,
      p99_ms: m.p99_ms,
      errors: m.errors,
      rss_mb: rss,
      ...(workerRss.length > 0
        ? {
            worker_rss_mb: workerRss,
            primary_rss_mb: Math.round((rss - workerRss.reduce((a, b) => a + b, 0)) * 10) / 10,
          }
        : {}),
      requests: m.requests,
      cancelled_at_stop: m.cancelled_at_stop,
      concurrency: plan.concurrency,
      ...disturbance,
      waited_for_quiet_s: waited,
    };
  } finally {
    await stopProcess(child);
  }
}

let stationCount = 0;
/** Envoy in front of one system (or of nothing, envoy-only), on the load core, with its own ports. */
async function startStation(variant, request, envoy, pki) {
  const { name } = variant;
  const label = `${name}${variant.policy && name === 'opa-envoy-plugin' ? ` (${variant.policy})` : ''}${variant.answer ? ` (${variant.answer} answer)` : ''}`;
  const server = name === 'envoy-only' ? null : await startReady(name, request, variant);
  const station = { variant, label, server, proxy: null, rounds: [], saturated: false };
  try {
    const adminAddr = `127.0.0.1:${await freePort()}`;
    station.sidecarAddr = `127.0.0.1:${await freePort()}`;
    const gatewayAddr = `127.0.0.1:${await freePort()}`;
    const file = `envoy-${name}${variant.policy ? `-${variant.policy}` : ''}${variant.answer ? `-${variant.answer}` : ''}`;
    const config = join(work, `${file}.json`);
    writeEnvoyConfig(config, {
      adminAddr,
      sidecarAddr: station.sidecarAddr,
      gatewayAddr,
      authzAddr: server?.grpcAddr ?? null,
      pki,
    });
    station.proxy = startProcess(
      'taskset',
      [
        '-c',
        String(LOAD_CORE),
        envoy,
        '-c',
        config,
        '--concurrency',
        '1',
        '--log-level',
        'error',
        '--base-id',
        String((process.pid % 10000) * 6 + stationCount++),
      ],
      { stdout: sink(file), stderr: opts.logs ? sink(file) : join(work, `${file}.stderr`) },
    );
    const { proxy } = station;
    await waitForEnvoy({
      adminAddr,
      sidecarAddr: station.sidecarAddr,
      isAlive: () => proxy.exitCode === null && proxy.signalCode === null,
    });
    return station;
  } catch (err) {
    await stopStation(station);
    throw err;
  }
}

async function stopStation(station) {
  setPaused(station, false);
  await stopProcess(station.proxy);
  if (station.server) await stopProcess(station.server.child);
}

// A station not being measured is stopped (SIGSTOP), so that its idle server's and Envoy's timers
// take nothing from the one that is.
function setPaused(station, paused) {
  for (const child of [station.server?.child, station.proxy]) {
    if (child && child.exitCode === null && child.signalCode === null) child.kill(paused ? 'SIGSTOP' : 'SIGCONT');
  }
}

const percentile = (sorted, p) =>
  sorted.length === 0
    ? null
    : Math.round(sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] * 1000) /
      1000;
const median = (xs) => {
  const v = xs.filter((x) => x !== null).sort((a, b) => a - b);
  return v.length ? v[Math.floor((v.length - 1) / 2)] : null;
};

/**
 * The rate sweep through Envoy, every system at every rate in interleaved rounds: at each rate, round
 * after round, each system in turn (the order rotating) gets a short warm-up and a measured window
 * while the others are paused. A 10 s window per system, one system after the other, left minutes of
 * drift between a system and the no-op it is compared with, and a window's p99 moved by ±2 ms from run
 * to run (docs/performance.md); interleaving puts every system under the same conditions, and the
 * percentiles come from all of a system's requests at that rate (every round pooled). A system stops
 * at the first rate it cannot sustain within 10 % (its saturation).
 */
async function envoySweep(variants, request, envoy, pki, skipped) {
  const stations = [];
  const runs = [];
  try {
    for (const variant of variants) {
      try {
        stations.push(await startStation({ workers: 1, ...variant }, request, envoy, pki));
      } catch (err) {
        skipped.push(`${variant.name} ${variant.policy ?? ''} (envoy): failed: ${err.message}`);
        log(`${variant.name} envoy failed: ${err.message}`);
      }
    }
    // Each station's JIT and caches warm before any measured round (a round's own warm-up is short).
    const warmRate = Math.min(1000, plan.rates[plan.rates.length - 1]);
    for (const station of stations) setPaused(station, true);
    for (const station of stations) {
      setPaused(station, false);
      try {
        log(`${station.label} envoy: warm-up ${plan.stationWarmupS} s at ${warmRate} rps`);
        await runH2load({
          core: LOAD_CORE,
          sidecarAddr: station.sidecarAddr,
          rate: warmRate,
          seconds: plan.stationWarmupS,
          logFile: join(work, 'h2load.log'),
        });
      } finally {
        setPaused(station, true);
      }
    }
    for (const rate of plan.rates) {
      const active = stations.filter((s) => !s.saturated);
      if (active.length === 0) break;
      const measured = new Map(active.map((s) => [s, []]));
      for (let round = 0; round < plan.sweepRounds; round++) {
        for (let k = 0; k < active.length; k++) {
          const station = active[(round + k) % active.length];
          const common = { core: LOAD_CORE, sidecarAddr: station.sidecarAddr, rate, logFile: join(work, 'h2load.log') };
          setPaused(station, false);
          try {
            await runH2load({ ...common, seconds: plan.sweepWarmupS });
            const waited = await waitForQuiet();
            log(`${station.label} envoy: ${rate} rps, round ${round + 1}/${plan.sweepRounds}`);
            const watch = startCpuWatch();
            const m = await runH2load({ ...common, seconds: plan.sweepMeasureS });
            measured.get(station).push({ ...m, ...watch.stop(), waited });
          } finally {
            setPaused(station, true);
          }
        }
      }
      for (const station of active) {
        const rounds = measured.get(station);
        const all = rounds.flatMap((m) => m.latenciesMs).sort((a, b) => a - b);
        const requests = all.length;
        const seconds = plan.sweepMeasureS * rounds.length;
        const server = station.server?.child;
        const envoyRss = peakRssMb(station.proxy.pid);
        const run = {
          system: station.variant.name,
          path: 'envoy',
          ...(station.variant.answer ? { answer: station.variant.answer } : {}),
          ...variantFields({ ...station.variant, workload: 'hot' }),
          rps: Math.round(requests / seconds),
          p50_ms: percentile(all, 50),
          p99_ms: percentile(all, 99),
          p99_rounds_ms: rounds.map((m) => m.p99_ms),
          errors: rounds.reduce((n, m) => n + m.errors, 0),
          // For envoy-only there is no authz server: its rss_mb is Envoy's own (see notes).
          rss_mb: server ? peakRssMb(server.pid) : envoyRss,
          envoy_rss_mb: envoyRss,
          target_rps: rate,
          requests,
          rounds: rounds.length,
          load_generator_cpu_pct: median(rounds.map((m) => m.load_generator_cpu_pct)),
          other_cpu_pct: Math.max(...rounds.map((m) => m.other_cpu_pct)),
          steal_pct: Math.max(...rounds.map((m) => m.steal_pct)),
          waited_for_quiet_s: rounds.reduce((n, m) => n + m.waited, 0),
        };
        runs.push(run);
        if (server && (server.exitCode !== null || server.signalCode !== null))
          throw new Error(`${station.label} exited during the sweep`);
        // Saturated: the next, higher rate would only measure the queue.
        if (run.rps < 0.9 * rate) station.saturated = true;
      }
    }
    return runs;
  } finally {
    for (const station of stations) await stopStation(station);
  }
}

// --- metadata ------------------------------------------------------------------------------------

async function firstLine(cmd, args) {
  const r = await runCommand(cmd, args, { timeoutMs: 20_000 });
  return r.code === 0 ? (r.stdout || r.stderr).trim().split('\n')[0] : null;
}

async function versions(envoy) {
  const ghzInfo = await runCommand('go', ['version', '-m', join(tools, 'ghz')], { timeoutMs: 20_000 });
  const loadgenInfo = await runCommand('go', ['version', '-m', join(tools, 'loadgen')], { timeoutMs: 20_000 });
  const loadgenGrpc = /\tdep\tgoogle.golang.org\/grpc\t(\S+)/.exec(loadgenInfo.stdout)?.[1];
  const rev = await firstLine('git', ['-C', root, 'rev-parse', '--short', 'HEAD']);
  const dirty =
    (
      await runCommand('git', ['-C', root, 'status', '--porcelain', '--', 'src', 'policies', 'package.json'])
    ).stdout.trim() !== '';
  const stamp = join(tools, '.opa-envoy-plugin.version');
  return {
    node: process.version,
    'egress-authz': rev ? `${rev}${dirty ? ' (with uncommitted changes)' : ''}` : 'unknown',
    'opa-envoy-plugin': existsSync(stamp) ? readFileSync(stamp, 'utf8').trim() : null,
    ghz: /\tmod\tgithub.com\/bojand\/ghz\t(\S+)/.exec(ghzInfo.stdout)?.[1] ?? null,
    loadgen: loadgenGrpc ? `bench/loadgen (grpc-go ${loadgenGrpc})` : null,
    envoy: envoy ? await envoyVersion(envoy) : null,
    h2load: (await firstLine('h2load', ['--version']))?.replace(/^h2load /, '') ?? null,
  };
}

function machine() {
  return {
    nproc: cpus().length,
    cpu: cpus()[0]?.model?.trim() ?? 'unknown',
    memory_gb: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
  };
}

function findEnvoy() {
  const candidates = [process.env.ENVOY_BIN, join(tools, 'envoy')].filter(Boolean);
  return candidates.find((p) => existsSync(p)) ?? null;
}

// --- main ----------------------------------------------------------------------------------------

const WORKLOADS = ['hot', 'warm', 'cold'];

/** Every grpc run: egress-authz (each worker count), the peer with both policies, the no-op ceiling. */
function grpcVariants(ready, workers) {
  const out = [];
  for (const name of ready) {
    if (name === 'egress-authz') {
      for (const workload of WORKLOADS) out.push({ name, workload, workers: 1, connections: 1 });
      // Workers share connections, not requests: over one connection a second worker would idle.
      // So the worker comparison runs over as many connections as the most workers (an Envoy gateway
      // opens one per worker thread; a cluster has several gateways), for 1 worker as well.
      const most = Math.max(...workers);
      if (most > 1)
        for (const w of workers)
          for (const workload of ['warm', 'cold']) out.push({ name, workload, workers: w, connections: most });
    } else if (name === 'opa-envoy-plugin') {
      for (const policy of ['principal', 'certificate'])
        for (const workload of WORKLOADS) out.push({ name, workload, policy, workers: 1 });
    } else {
      // The no-op server looks at nothing: warm and cold are the same work for it. It runs on grpc-js
      // (the ceiling the issue names) and on node:http2 alone (the ceiling of egress-authz's Check path,
      // which answers on the HTTP/2 stream too).
      for (const transport of [undefined, 'http2'])
        for (const workload of ['hot', 'warm']) out.push({ name, workload, workers: 1, transport });
    }
  }
  // Last, the warm workload at a fixed rate: latency where no server is saturated.
  if (plan.grpcRate > 0)
    for (const name of ready)
      for (const policy of name === 'opa-envoy-plugin' ? ['principal', 'certificate'] : [undefined])
        out.push({ name, workload: 'warm', workers: 1, policy, rate: plan.grpcRate });
  return out;
}

function envoyVariants(ready) {
  return ready.flatMap((name) =>
    name === 'opa-envoy-plugin'
      ? [
          { name, policy: 'principal' },
          { name, policy: 'certificate' },
        ]
      : [{ name }],
  );
}

async function main() {
  const started = Date.now();
  // Everything under bench/work is made afresh, except the generated identities (reused while valid).
  for (const entry of existsSync(work) ? readdirSync(work) : [])
    if (entry !== 'identities') rmSync(join(work, entry), { recursive: true, force: true });
  mkdirSync(join(work, 'logs'), { recursive: true });
  for (const tool of [loadTool])
    if (!existsSync(join(tools, tool))) throw new Error(`${tool} missing: run bash scripts/install-bench-tools.sh`);

  const pki = await makePki(join(work, 'pki'));
  const request = checkRequest(pki.clientCertPem);
  const madeAt = Date.now();
  const ids = await makeIdentities(join(work, 'identities'), plan.identities);
  log(`${ids.length} workload identities ready in ${Date.now() - madeAt} ms`);
  const many = workloadRequests(ids);
  const files = {
    hot: writeRequestFiles(join(work, 'check-request'), [request]),
    many: writeRequestFiles(
      join(work, 'check-requests-many'),
      many.map((r) => r.request),
    ),
  };

  const runs = [];
  const skipped = [];
  const ready = [];
  for (const name of wanted) {
    const why = await systems[name].prepare();
    if (why) {
      skipped.push(`${name}: ${why}`);
      log(`${name} ${why}`);
    } else ready.push(name);
  }

  const workers = [];
  for (const w of requestedWorkers) {
    if (w === 1 || (await supportsWorkers())) workers.push(w);
    else skipped.push(`egress-authz --workers ${w}: skipped: this build has no serve --workers`);
  }
  // --no-grpc: the Envoy sweep alone (for working on that path; a results file without the grpc runs).
  for (const variant of opts['no-grpc'] ? [] : grpcVariants(ready, workers)) {
    try {
      runs.push(await grpcRun(variant, request, files));
    } catch (err) {
      skipped.push(`${variant.name} ${variant.policy ?? ''} ${variant.workload} (grpc): failed: ${err.message}`);
      log(`${variant.name} grpc failed: ${err.message}`);
    }
    await sleep(500);
  }

  const envoy = findEnvoy();
  if (opts['no-envoy']) {
    skipped.push('path envoy: skipped (--no-envoy)');
  } else if (!envoy) {
    skipped.push(
      'path envoy: skipped: envoy not installed (scripts/install-envoy.sh not in this tree, or ENVOY_BIN unset)',
    );
  } else if ((await runCommand('h2load', ['--version'])).code !== 0) {
    skipped.push('path envoy: skipped: h2load not installed (Debian nghttp2-client)');
  } else if (plan.rates.length === 0) {
    skipped.push('path envoy: skipped (no --rates; --quick measures the grpc path only)');
  } else {
    const sweep = [{ name: 'envoy-only' }, ...envoyVariants(ready)];
    if (ready.includes('noop')) sweep.push({ name: 'noop', answer: 'contract' });
    runs.push(...(await envoySweep(sweep, request, envoy, pki, skipped)));
    // At each rate: p99 added over Envoy alone, and over the no-op ext_authz server (the floor of
    // Envoy + gRPC on this machine).
    const at = (system, rate, answer) =>
      runs.find((r) => r.system === system && r.path === 'envoy' && r.target_rps === rate && r.answer === answer);
    const diff = (a, b) => (a !== null && b ? Math.round((a - b) * 1000) / 1000 : null);
    for (const r of runs) {
      if (r.path === 'envoy' && r.system !== 'envoy-only') {
        const baseline = at('envoy-only', r.target_rps);
        const noop = at('noop', r.target_rps);
        r.p99_added_ms = diff(r.p99_ms, baseline?.p99_ms);
        r.p50_added_ms = diff(r.p50_ms, baseline?.p50_ms);
        r.p99_over_noop_ms = r.system === 'noop' && !r.answer ? 0 : diff(r.p99_ms, noop?.p99_ms);
        // Over a no-op that answers with every field of the contract: what remains is the service's work.
        r.p99_over_contract_noop_ms = diff(r.p99_ms, at('noop', r.target_rps, 'contract')?.p99_ms);
      }
    }
  }

  const meta = {
    date: new Date().toISOString(),
    command: `${process.env.ENVOY_BIN ? `ENVOY_BIN=${process.env.ENVOY_BIN} ` : ''}npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
    mode: plan.mode,
    plan,
    machine: machine(),
    versions: await versions(envoy),
    elapsed_s: Math.round((Date.now() - started) / 1000),
  };
  const notes = [
    `Each server runs under \`taskset -c ${SERVER_CORE}\` (opa-envoy-plugin with GOMAXPROCS=1); the gRPC load generator, h2load and Envoy run under \`taskset -c ${LOAD_CORE}\` (the load generator with GOMAXPROCS=1, Envoy with --concurrency 1). With \`--workers 2\` (workers: 2 in latest.json) egress-authz runs on cores 0 and 1, so its second worker shares core 1 with the load generator: load_generator_cpu_pct gives the load generator's (or h2load's) own CPU in % of one core, what the second worker could not have.`,
    `Path grpc: ${loadTool === 'loadgen' ? `${meta.versions.loadgen}: the project's own load generator, which sends requests encoded once (ghz ${meta.versions.ghz}, used for the results before 2026-12-05, spends ~90 µs of CPU a warm Check building dynamic messages and caps any server near 10,500 warm Checks/s on one core; \`--load-generator ghz\` runs it again)` : `ghz ${meta.versions.ghz} (--load-generator ghz)`}, one HTTP/2 connection (the worker comparison: as many connections as the most workers, for 1 worker too, since workers share connections, not requests; \`connections\` in latest.json), concurrency ${plan.concurrency}, ${plan.warmupS} s warm-up, then ${plan.measureS} s measured. workload "hot": every request is the same CheckRequest: the bookinfo productpage SVID (made with openssl at bench time) as URL-encoded PEM in attributes.source.certificate, its SPIFFE ID in attributes.source.principal, a GET with x-request-id. workload "warm": ${plan.identities} distinct workload SVIDs (bench/identities.mjs: one CA, Istio-shaped leaves; even ones in namespace bookinfo, allowed, odd ones in other namespaces, denied) × 3 destinations, ${plan.identities * 3} CheckRequests sent round-robin, after one warm-up pass over all of them. workload "cold": the same requests, egress-authz started with --svid-cache-entries 0 --policy-memo off, so every Check parses its certificate and evaluates the policy (opa-envoy-plugin caches nothing either way; the no-op server has no cold run: it looks at nothing). Before load, one Check must come back as an allow carrying x-egress-snat-pool: bookinfo_snat.${plan.grpcRate > 0 ? ` Rows with a target_rps on path grpc: the warm workload at a fixed ${plan.grpcRate} rps (\`--grpc-rate\`; open loop: each request is sent when due, at most ${plan.concurrency} in flight, and its latency counts from when it was due), after the same warm-up pass and ${plan.warmupS} s at that rate; their p50/p99 are the latency of an unsaturated server.` : ''}`,
    'policy (opa-envoy-plugin runs): "principal" is bench/opa-envoy-plugin/policy-principal.rego, the policy its users usually write (the SPIFFE ID from attributes.source.principal); "certificate" is policy.rego, which parses the forwarded certificate like egress-authz does. Both decide like egress-authz\'s default policy.',
    'errors = requests whose gRPC status was not OK, except (with ghz) the requests ghz itself cancels when the duration ends (`cancelled_at_stop` in latest.json, at most the concurrency); loadgen stops sending at the end and waits for the answers in flight.',
    `Path envoy: a rate sweep (target_rps ${plan.rates.join(', ') || 'none'}; a system's sweep stops at the first rate it cannot sustain within 10 %, its saturation), in interleaved rounds: every system has its own Envoy and server, started once; at each rate, ${plan.sweepRounds} rounds, in each round every system in turn (the order rotating) gets ${plan.sweepWarmupS} s of warm-up and ${plan.sweepMeasureS} s measured while the other systems' servers and Envoys are paused (SIGSTOP); p50/p99 are over all of a system's requests at that rate, its rounds pooled (p99_rounds_ms gives each round's own p99). h2load over HTTP/2 from one client whose --rps timer sends each request when due on its own stream (evenly spaced, open loop up to 256 in flight; the sweeps before 2026-12-02 used 50 HTTP/1.1 clients that fire in phase, i.e. 50-request bursts; before 2026-12-05 each system was swept alone, one 10 s window a rate, minutes apart from the no-op it was compared with). Envoy presents one client SVID, so this path is the hot workload. p99_over_noop_ms: p99 minus the no-op server's p99 at the same rate (the floor of Envoy + ext_authz gRPC on this machine); p99_added_ms: minus Envoy alone (envoy-only). The no-op runs twice: with its smallest answer (\`noop\`, the floor p99_over_noop_ms is measured against, as issue 10 defines it) and with the answer the contract requires (\`answer: contract\`: the SNAT pool and decision id headers with append false and five dynamic metadata fields, built once); p99_over_contract_noop_ms is p99 minus that one's, i.e. without Envoy's own work on the larger answer. Envoy runs two hops: a plain listener that forwards over mTLS (as the bookinfo SVID) to a gateway listener with ext_authz (include_peer_certificate, failure_mode_allow false) and a direct 200 reply. \`envoy-only\` is the same Envoy without the ext_authz filter; its rss_mb is Envoy's own peak RSS (the other envoy rows give the authz server's, with Envoy's in envoy_rss_mb). errors = non-2xx answers plus failed requests.`,
    "other_cpu_pct in latest.json: CPU time (in % of one core) that processes outside the benchmark used on this machine during each measured run, from /proc (approximate: sampled every 250 ms); steal_pct: the hypervisor's steal. Figures from runs with a high other_cpu_pct are disturbed and should be rerun on a quiet machine; `--wait-quiet SECONDS` waits (bounded) for a quiet moment before each measured run (waited_for_quiet_s).",
    'Peak RSS is VmHWM of the server process (and its children) from /proc at the end of the measured run, so it includes start-up.',
    `Decision logs: egress-authz writes its decision log (stdout) to /dev/null; opa-envoy-plugin ${opts['opa-decision-logs'] === 'on' ? "runs with console decision logs on (its quick start's setting; each entry carries the whole input document), also to /dev/null, so both log every decision" : 'runs with decision logs OFF (--opa-decision-logs off), so it does less per request than egress-authz'}. The no-op server logs nothing. egress-authz runs with the node flags of npm start (${startNodeFlags().join(' ')}), as the Dockerfile and the Kubernetes Deployment ship it, and so does the no-op server: the same runtime, so p99_over_noop_ms is what the service's own work adds.${opts.logs ? ' This run used --logs: server output went to files under bench/work/logs instead of /dev/null.' : ''}`,
  ];
  writeResults({ ...meta, notes, skipped, runs });
}

const chartSubtitle = (r) =>
  `${r.date.slice(0, 10)} · ${r.mode} run · ${r.machine.nproc} × ${r.machine.cpu} · server on core ${SERVER_CORE}, load on core ${LOAD_CORE}`;

function writeResults(result) {
  const { runs, skipped, notes } = result;
  const meta = result;
  mkdirSync(join(root, 'bench', 'results'), { recursive: true });
  writeFileSync(join(root, 'bench', 'results', 'latest.json'), JSON.stringify(result, null, 2) + '\n');
  writeFileSync(join(root, 'bench', 'results', 'latest.svg'), chartSvg(runs, chartSubtitle(meta)));
  writeFileSync(join(root, 'bench', 'RESULTS.md'), resultsMarkdown({ meta, runs, skipped, notes }));

  console.log(`\n${resultsTable(runs)}\n`);
  for (const s of skipped) console.log(`- ${s}`);
  console.log(`\n${goalsTable(runs)}\n`);
  console.log(`Wrote bench/RESULTS.md, bench/results/latest.json, bench/results/latest.svg (${meta.elapsed_s} s).`);
}

/** --report-only: rewrites RESULTS.md and the chart from results/latest.json, measuring nothing. */
function reportOnly() {
  const result = JSON.parse(readFileSync(join(root, 'bench', 'results', 'latest.json'), 'utf8'));
  writeResults({ notes: [], skipped: [], ...result });
}

(opts['report-only'] ? Promise.resolve().then(reportOnly) : main()).catch((err) => {
  console.error(`bench: ${err.stack ?? err}`);
  process.exitCode = 1;
});
