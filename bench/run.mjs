#!/usr/bin/env node
// One-command benchmark (issue 7): egress-authz against opa-envoy-plugin and a no-op grpc-js
// ceiling, on path `grpc` (ghz straight at the server) and path `envoy` (fixed rate through real
// Envoy with ext_authz, plus Envoy alone). Each server runs pinned to core 0 and each load generator
// to core 1, so the figures are per core. Usage (after scripts/install-bench-tools.sh):
//   node bench/run.mjs [--quick] [--no-envoy] [--systems a,b] [--logs] [--opa-decision-logs on|off]
//                    [--wait-quiet SECONDS]
// Writes bench/RESULTS.md, bench/results/latest.json and bench/results/latest.svg.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { checkRequest, waitForAllow } from './check-request.mjs';
import { envoyVersion, runH2load, waitForEnvoy, writeEnvoyConfig } from './envoy.mjs';
import { runGhz } from './ghz.mjs';
import { makePki } from './pki.mjs';
import { freePort, peakRssMb, runCommand, startCpuWatch, startProcess, stopProcess } from './processes.mjs';
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
    systems: { type: 'string', default: SYSTEMS.join(',') },
    logs: { type: 'boolean', default: false },
    'opa-decision-logs': { type: 'string', default: 'on' },
    'wait-quiet': { type: 'string', default: '0' },
    'report-only': { type: 'boolean', default: false },
  },
});
const plan = opts.quick
  ? { mode: 'quick', warmupS: 2, measureS: 6, concurrency: 50, envoyRate: 2000, envoyClients: 50 }
  : { mode: 'full', warmupS: 5, measureS: 20, concurrency: 50, envoyRate: 2000, envoyClients: 50 };
const wanted = opts.systems
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
if (!['on', 'off'].includes(opts['opa-decision-logs'])) throw new Error('--opa-decision-logs takes on or off');
for (const s of wanted) if (!SYSTEMS.includes(s)) throw new Error(`unknown system ${s} (known: ${SYSTEMS.join(', ')})`);

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
    async start(grpcAddr) {
      const httpAddr = `127.0.0.1:${await freePort()}`;
      // Its decision log (one JSON line per Check, on stdout) goes to /dev/null, like opa-envoy-plugin's.
      return startProcess(
        'taskset',
        [
          '-c',
          String(SERVER_CORE),
          process.execPath,
          '--max-old-space-size=128',
          join(root, 'dist', 'cli.js'),
          'serve',
          '--grpc-addr',
          grpcAddr,
          '--http-addr',
          httpAddr,
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
    async start(grpcAddr) {
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
          join(dir, 'policy.rego'),
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
    async start(grpcAddr) {
      return startProcess(
        'taskset',
        ['-c', String(SERVER_CORE), process.execPath, join(root, 'bench', 'noop-server.mjs'), grpcAddr],
        {
          stdout: sink('noop'),
          stderr: sink('noop'),
        },
      );
    },
  },
};

async function startReady(name, request) {
  const grpcAddr = `127.0.0.1:${await freePort()}`;
  const child = await systems[name].start(grpcAddr);
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

async function grpcRun(name, request, requestFile) {
  const { child, grpcAddr } = await startReady(name, request);
  try {
    const ghz = join(tools, 'ghz');
    const common = {
      ghz,
      core: LOAD_CORE,
      addr: grpcAddr,
      requestFile,
      concurrency: plan.concurrency,
      outFile: join(work, `ghz-${name}.json`),
    };
    log(`${name} grpc: warm-up ${plan.warmupS} s`);
    await runGhz({ ...common, seconds: plan.warmupS });
    log(`${name} grpc: measuring ${plan.measureS} s at concurrency ${plan.concurrency}`);
    const waited = await waitForQuiet();
    const watch = startCpuWatch();
    const m = await runGhz({ ...common, seconds: plan.measureS });
    const disturbance = watch.stop();
    const rss = peakRssMb(child.pid);
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${name} exited during the run`);
    return {
      system: name,
      path: 'grpc',
      rps: m.rps,
      p50_ms: m.p50_ms,
      p99_ms: m.p99_ms,
      errors: m.errors,
      rss_mb: rss,
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

async function envoyRun(name, request, envoy, pki) {
  const server = name === 'envoy-only' ? null : await startReady(name, request);
  let proxy = null;
  try {
    const adminAddr = `127.0.0.1:${await freePort()}`;
    const sidecarAddr = `127.0.0.1:${await freePort()}`;
    const gatewayAddr = `127.0.0.1:${await freePort()}`;
    const config = join(work, `envoy-${name}.json`);
    writeEnvoyConfig(config, { adminAddr, sidecarAddr, gatewayAddr, authzAddr: server?.grpcAddr ?? null, pki });
    proxy = startProcess(
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
        String(process.pid % 60000),
      ],
      {
        stdout: sink(`envoy-${name}`),
        stderr: opts.logs ? sink(`envoy-${name}`) : join(work, `envoy-${name}.stderr`),
      },
    );
    await waitForEnvoy({ adminAddr, sidecarAddr, isAlive: () => proxy.exitCode === null && proxy.signalCode === null });
    const common = {
      core: LOAD_CORE,
      sidecarAddr,
      rate: plan.envoyRate,
      clients: plan.envoyClients,
      logFile: join(work, `h2load-${name}.log`),
    };
    log(`${name} envoy: warm-up ${plan.warmupS} s`);
    await runH2load({ ...common, seconds: plan.warmupS });
    log(`${name} envoy: measuring ${plan.measureS} s at ${plan.envoyRate} rps`);
    const waited = await waitForQuiet();
    const watch = startCpuWatch();
    const m = await runH2load({ ...common, seconds: plan.measureS });
    const disturbance = watch.stop();
    const envoyRss = peakRssMb(proxy.pid);
    // For envoy-only there is no authz server: its rss_mb is Envoy's own (see notes).
    const rss = server ? peakRssMb(server.child.pid) : envoyRss;
    return {
      system: name,
      path: 'envoy',
      rps: m.rps,
      p50_ms: m.p50_ms,
      p99_ms: m.p99_ms,
      errors: m.errors,
      rss_mb: rss,
      envoy_rss_mb: envoyRss,
      target_rps: m.target_rps,
      requests: m.requests,
      ...disturbance,
      waited_for_quiet_s: waited,
    };
  } finally {
    await stopProcess(proxy);
    if (server) await stopProcess(server.child);
  }
}

// --- metadata ------------------------------------------------------------------------------------

async function firstLine(cmd, args) {
  const r = await runCommand(cmd, args, { timeoutMs: 20_000 });
  return r.code === 0 ? (r.stdout || r.stderr).trim().split('\n')[0] : null;
}

async function versions(envoy) {
  const ghzInfo = await runCommand('go', ['version', '-m', join(tools, 'ghz')], { timeoutMs: 20_000 });
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

async function main() {
  const started = Date.now();
  rmSync(work, { recursive: true, force: true });
  mkdirSync(join(work, 'logs'), { recursive: true });
  for (const tool of ['ghz'])
    if (!existsSync(join(tools, tool))) throw new Error(`${tool} missing: run bash scripts/install-bench-tools.sh`);

  const pki = await makePki(join(work, 'pki'));
  const request = checkRequest(pki.clientCertPem);
  const requestFile = join(work, 'check-request.json');
  writeFileSync(requestFile, JSON.stringify(request));

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

  for (const name of ready) {
    try {
      runs.push(await grpcRun(name, request, requestFile));
    } catch (err) {
      skipped.push(`${name} (grpc): failed: ${err.message}`);
      log(`${name} grpc failed: ${err.message}`);
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
  } else {
    for (const name of ['envoy-only', ...ready]) {
      try {
        runs.push(await envoyRun(name, request, envoy, pki));
      } catch (err) {
        skipped.push(`${name} (envoy): failed: ${err.message}`);
        log(`${name} envoy failed: ${err.message}`);
      }
      await sleep(500);
    }
    const baseline = runs.find((r) => r.system === 'envoy-only' && r.path === 'envoy');
    for (const r of runs) {
      if (r.path === 'envoy' && r.system !== 'envoy-only') {
        r.p99_added_ms = baseline && r.p99_ms !== null ? Math.round((r.p99_ms - baseline.p99_ms) * 1000) / 1000 : null;
        r.p50_added_ms = baseline && r.p50_ms !== null ? Math.round((r.p50_ms - baseline.p50_ms) * 1000) / 1000 : null;
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
    `Each server runs under \`taskset -c ${SERVER_CORE}\` (opa-envoy-plugin with GOMAXPROCS=1); ghz, h2load and Envoy run under \`taskset -c ${LOAD_CORE}\` (ghz with GOMAXPROCS=1, Envoy with --concurrency 1).`,
    `Path grpc: ghz ${meta.versions.ghz}, one HTTP/2 connection, concurrency ${plan.concurrency}, ${plan.warmupS} s warm-up, then ${plan.measureS} s measured. Every request is the same CheckRequest: the bookinfo productpage SVID (made with openssl at bench time) as URL-encoded PEM in attributes.source.certificate, its SPIFFE ID in attributes.source.principal, a GET with x-request-id. Before load, one Check must come back as an allow carrying x-egress-snat-pool: bookinfo_snat.`,
    'errors = requests whose gRPC status was not OK, except the requests ghz itself cancels when the duration ends (`cancelled_at_stop` in latest.json, at most the concurrency).',
    `Path envoy: h2load over HTTP/1.1, ${plan.envoyClients} clients at a fixed total rate of ${plan.envoyRate} rps, ${plan.warmupS} s warm-up, then ${plan.measureS} s measured; p50/p99 from h2load's per-request log. Envoy runs two hops: a plain listener that forwards over mTLS (as the bookinfo SVID) to a gateway listener with ext_authz (include_peer_certificate, failure_mode_allow false) and a direct 200 reply. \`envoy-only\` is the same Envoy without the ext_authz filter; its rss_mb is Envoy's own peak RSS (the other envoy rows give the authz server's, with Envoy's in envoy_rss_mb). errors = non-2xx answers plus failed requests.`,
    "other_cpu_pct in latest.json: CPU time (in % of one core) that processes outside the benchmark used on this machine during each measured run, from /proc (approximate: sampled every 250 ms); steal_pct: the hypervisor's steal. Figures from runs with a high other_cpu_pct are disturbed and should be rerun on a quiet machine; \`--wait-quiet SECONDS\` waits (bounded) for a quiet moment before each measured run (waited_for_quiet_s).",
    'Peak RSS is VmHWM of the server process (and its children) from /proc at the end of the measured run, so it includes start-up.',
    `Decision logs: egress-authz writes its decision log (stdout) to /dev/null; opa-envoy-plugin ${opts['opa-decision-logs'] === 'on' ? "runs with console decision logs on (its quick start's setting; each entry carries the whole input document), also to /dev/null, so both log every decision" : 'runs with decision logs OFF (--opa-decision-logs off), so it does less per request than egress-authz'}. The no-op server logs nothing. egress-authz runs with --max-old-space-size=128, as npm start, the Dockerfile and the Kubernetes Deployment ship it.${opts.logs ? ' This run used --logs: server output went to files under bench/work/logs instead of /dev/null.' : ''}`,
    'opa-envoy-plugin runs bench/opa-envoy-plugin/policy.rego: the default policy (bookinfo → bookinfo_snat, all else denied) written for its input document, taking the SPIFFE ID from the forwarded certificate like egress-authz does.',
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
