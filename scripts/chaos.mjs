#!/usr/bin/env node
// Fault suite: egress-authz (the built dist/cli.js) is broken in the ways production breaks it while a
// steady load asks for decisions, and no fault may turn into an allow.
//   Envoy path (real Envoy, ext_authz failure_mode_allow: false, 200 ms timeout, 500 rps):
//     killed (-9, restarted), hung (SIGSTOP past Envoy's timeout, SIGCONT), slow policy (a Rego policy
//     built here that takes several times the evaluation budget), corrupt bundle pushed to the file
//     source (the last good must keep serving), restarted (SIGTERM, then started again).
//   iRule path (the shipped iRule in tclsh): sideband down, hung, answering garbage, half an answer.
// Everything listens on 127.0.0.1; every process started here is stopped on the way out.
// The rules of the verdict are in scripts/chaos/verdict.mjs; docs/hardening.md explains the report.
//
//   npm run chaos                       # ~4 minutes: 3 s windows, each fault twice
//   npm run chaos -- --quick            # < 2 minutes: 1.5 s windows, each fault once (.ci/run)
//   npm run chaos -- --rate 300 --json bench/work/chaos.json --samples bench/work/chaos-samples.json
//   node scripts/chaos.mjs --verdict-from bench/work/chaos-samples.json   # judge a recorded run again
// Exit: 0 all faults passed, 1 a fault failed (an allow during a fault, no recovery...), 2 could not run.
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { atCleanup, installCleanupHandlers, killAll, runToEnd, startGroup } from './chaos/processes.mjs';
import { formatTable, judge } from './chaos/verdict.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    rate: { type: 'string', default: '500' },
    json: { type: 'string', default: join(root, 'bench', 'work', 'chaos.json') },
    samples: { type: 'string' },
    'verdict-from': { type: 'string' },
    only: { type: 'string' }, // envoy | irule
    keep: { type: 'boolean', default: false },
    // how many times the evaluation budget one warm evaluation of the slow policy takes
    'slow-factor': { type: 'string', default: '4' },
  },
});

function report(verdict, extra) {
  console.log(`\n${formatTable(verdict)}`);
  if (flags.json) {
    mkdirSync(dirname(resolve(flags.json)), { recursive: true });
    writeFileSync(
      flags.json,
      `${JSON.stringify({ ...extra, verdict: verdict.pass ? 'pass' : 'fail', ...verdict }, null, 2)}\n`,
    );
    console.log(`report: ${flags.json}`);
  }
  return verdict.pass ? 0 : 1;
}

if (flags['verdict-from']) {
  // Judge a recorded run (or a made-up one, in test/chaos): the same rules, no processes.
  let recorded;
  try {
    recorded = JSON.parse(readFileSync(flags['verdict-from'], 'utf8'));
  } catch (err) {
    console.error(`chaos: cannot read ${flags['verdict-from']}: ${err.message}`);
    process.exit(2);
  }
  process.exit(report(judge(recorded.requests, recorded.faults), { replayed_from: flags['verdict-from'] }));
}

installCleanupHandlers('chaos');
process.on('uncaughtException', (err) => {
  console.error(`chaos: could not run: ${err.stack ?? err}`);
  killAll();
  process.exit(2);
});
process.on('unhandledRejection', (err) => {
  console.error(`chaos: could not run: ${err?.stack ?? err}`);
  killAll();
  process.exit(2);
});

const { makePki, BOOKINFO_ID } = await import('../bench/pki.mjs');
const { freePort } = await import('../bench/processes.mjs');
const { envoyOutcome, gatewayBootstrap, startLoad, startUpstream, SNAT_ADDRESS } =
  await import('./chaos/envoy-path.mjs');
const { iruleOutcome, startIruleLoad, startRelay } = await import('./chaos/irule-path.mjs');

const QUICK = flags.quick;
const plan = {
  rate: Number(flags.rate),
  window_ms: QUICK ? 1500 : 3000,
  steady_ms: QUICK ? 1000 : 3000,
  restart_pause_ms: QUICK ? 500 : 1000,
  rounds: QUICK ? 1 : 2,
  authz_timeout_ms: 200,
  eval_budget_ms: 50,
  // A limit for "never came back", not a performance goal: on a loaded machine a cold start takes seconds.
  recovery_timeout_ms: 60_000,
  slow_factor: Number(flags['slow-factor']),
};
if (!(plan.slow_factor >= 1.5 && plan.slow_factor <= 20)) {
  console.error('chaos: --slow-factor takes 1.5..20');
  process.exit(2);
}
if (!Number.isFinite(plan.rate) || plan.rate < 10 || plan.rate > 5000) {
  console.error('chaos: --rate takes 10..5000');
  process.exit(2);
}
const paths = flags.only ? [flags.only] : ['envoy', 'irule'];
const DENIED_ID = 'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools';
const CLI = join(root, 'dist', 'cli.js');
const ENVOY = join(root, '.tools', 'bin', 'envoy');

const t0 = performance.now();
const now = () => performance.now() - t0;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const say = (text) => console.log(`[${(now() / 1000).toFixed(1).padStart(6)} s] ${text}`);

const work = mkdtempSync(join(tmpdir(), 'egress-authz-chaos-'));
atCleanup(() => {
  if (!flags.keep) rmSync(work, { recursive: true, force: true });
});

async function until(what, test, timeoutMs, proc) {
  const deadline = now() + timeoutMs;
  while (now() < deadline) {
    if (proc && !proc.alive) throw new Error(`${proc.name} exited before ${what}\n${proc.tail()}`);
    if (await test().catch(() => false)) return;
    await sleep(50);
  }
  throw new Error(`timed out (${timeoutMs} ms) waiting for ${what}${proc ? `\n${proc.tail()}` : ''}`);
}

async function httpStatus(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
  await res.arrayBuffer();
  return res.status;
}

/** Writes a bundle where the service's file source will see it in one step (rename). */
function push(bundleFile, live) {
  const tmp = `${live}.${process.pid}.tmp`;
  copyFileSync(bundleFile, tmp);
  renameSync(tmp, live);
}

// --- policies: the good one, and a slow one calibrated on this machine ---------------------------------
async function build(dir, out, revision) {
  const r = await runToEnd('build', process.execPath, [CLI, 'build', '--out', out, '--revision', revision, dir], {
    timeoutMs: 120_000,
  });
  if (r.code !== 0) throw new Error(`egress-authz build ${dir} failed:\n${r.stderr}${r.stdout}`);
}

const slowRego = (n) => `package egress.authz

# The chaos suite's slow policy: the right answer (bookinfo allowed), but only after a long loop.
# The service must deny it for exceeding the evaluation budget, never answer it late as an allow.
default decision := {"allow": false, "snat_pool": "", "reason": "chaos: not bookinfo"}

decision := {"allow": true, "snat_pool": "bookinfo_snat", "reason": "chaos: slow allow"} if {
	input.identity.namespace == "bookinfo"
	work > 0
}

work := count([x | some x in numbers.range(1, ${n} + count(input.identity.namespace)); x % 7 == 0])
`;

/**
 * Grows the loop until a warm evaluation, by the service's own engine in this process, takes at least
 * --slow-factor times the budget: the first evaluation of a fresh module is many times slower than the warm ones the
 * service runs under load, so a one-shot `eval` would overstate it.
 */
async function buildSlowPolicy(out) {
  const { loadPolicy } = await import(join(root, 'dist', 'lifecycle', 'bundle-source.js'));
  const input = {
    caller: 'envoy',
    identity: { spiffe_id: BOOKINFO_ID, trust_domain: 'cluster.local', namespace: 'bookinfo', service_account: 'x' },
    destination: { host: 'legacy.example.test' },
  };
  const dir = join(work, 'slow-policy');
  mkdirSync(dir, { recursive: true });
  const target = plan.slow_factor * plan.eval_budget_ms;
  let n = 60_000;
  let warmMs = 0;
  for (let attempt = 0; attempt < 6; attempt++) {
    writeFileSync(join(dir, 'slow.rego'), slowRego(n));
    await build(dir, out, `chaos-slow-${n}`);
    const policy = await loadPolicy(out);
    const took = [];
    for (let i = 0; i < 6; i++) {
      // On a quiet machine the loop may finish inside the budget: then it is timed here and grown.
      const started = performance.now();
      const r = policy.evaluate(input);
      const elapsed = performance.now() - started;
      took.push(r.ok ? elapsed : Number(/took ([0-9.]+)ms/.exec(r.reason)?.[1] ?? elapsed));
    }
    warmMs = Math.min(...took.slice(2));
    if (warmMs >= target) return { loop: n, warm_eval_ms: warmMs, revision: `chaos-slow-${n}` };
    // The cost grows faster than the loop: step by the square root of what is missing.
    n = Math.round(n * Math.min(2, Math.max(1.15, Math.sqrt((1.2 * target) / Math.max(warmMs, 1)))));
  }
  throw new Error(`could not make a policy slower than ${target} ms (last: ${warmMs} ms)`);
}

// --- the run -----------------------------------------------------------------------------------------------
const requests = [];
const faults = [];
const run = {
  started_at: new Date().toISOString(),
  command: `npm run chaos${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
  machine: { cpus: cpus().length, loadavg_at_start: loadavg().map((x) => Math.round(x * 100) / 100) },
  plan,
};

say(`work dir ${work}`);
const pki = await makePki(join(work, 'pki'), { extraClients: { denied: DENIED_ID } });
pki.clients.allowed = pki.client;
const goodBundle = join(work, 'good.tar.gz');
const slowBundle = join(work, 'slow.tar.gz');
const corruptBundle = join(work, 'corrupt.tar.gz');
const [, slow] = await Promise.all([
  build(join(root, 'policies'), goodBundle, 'chaos-good'),
  paths.includes('envoy') ? buildSlowPolicy(slowBundle) : Promise.resolve(null),
]);
{
  // A bundle cut short and followed by noise: what a half-finished copy or a bad deploy leaves.
  const good = readFileSync(goodBundle);
  writeFileSync(corruptBundle, Buffer.concat([good.subarray(0, Math.floor(good.length / 2)), randomBytes(512)]));
}
if (slow)
  say(`slow policy: loop ${slow.loop}, a warm evaluation ${slow.warm_eval_ms} ms (budget ${plan.eval_budget_ms} ms)`);
run.slow_policy = slow;

const policyDir = join(work, 'policy');
mkdirSync(policyDir);
const liveBundle = join(policyDir, 'bundle.tar.gz');
copyFileSync(goodBundle, liveBundle);

const [grpcPort, httpPort, listenPort, adminPort] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);

// The service, with a watcher on its log for the reload outcomes the policy faults wait for.
const logWaiters = new Set();
function waitForLog(match, timeoutMs) {
  return new Promise((ok, fail) => {
    const w = { match, ok };
    logWaiters.add(w);
    setTimeout(() => {
      if (logWaiters.delete(w)) fail(new Error(`no service log line matching ${match} within ${timeoutMs} ms`));
    }, timeoutMs);
  });
}
const budgetOverruns = [];
let service;
function startService() {
  service = startGroup(
    'egress-authz',
    process.execPath,
    // prettier-ignore
    [CLI, 'serve', '--grpc-addr', `127.0.0.1:${grpcPort}`, '--http-addr', `127.0.0.1:${httpPort}`,
      '--policy', liveBundle, '--shutdown-grace', '2s', '--log-level', 'info'],
    {
      cwd: root,
      onLine(line) {
        if (line.includes('exceeded 50ms (took')) {
          const took = /took ([0-9.]+)ms/.exec(line);
          if (took && budgetOverruns.length < 10_000) budgetOverruns.push(Number(took[1]));
        }
        if (!line.includes('"policy ')) return; // decision lines: nothing to wait for
        for (const w of logWaiters) {
          if (w.match.test(line)) {
            logWaiters.delete(w);
            w.ok(line);
          }
        }
      },
    },
  );
  return service;
}

async function serviceReady() {
  await until(
    'egress-authz ready',
    async () => (await httpStatus(`http://127.0.0.1:${httpPort}/readyz`)) === 200,
    30_000,
    service,
  );
}

startService();
await serviceReady();
say(`egress-authz serving (gRPC ${grpcPort}, HTTP ${httpPort})`);

// --- Envoy path ---------------------------------------------------------------------------------------------
// When the allowed identity was allowed, per path, in the order seen: what recovery waits for.
const allowedAllows = { envoy: [], irule: [] };
/** ms from `after` to the first allow of the allowed identity after it, or null after timeoutMs. */
async function recovery(path, after, timeoutMs) {
  const deadline = now() + timeoutMs;
  while (now() < deadline) {
    const first = allowedAllows[path].reduce((m, t) => (t > after && (m === null || t < m) ? t : m), null);
    if (first !== null) return first - after;
    await sleep(20);
  }
  return null;
}
/** Starts the service again and notes, in the fault's evidence, how long until it was ready. */
function restartService(fault) {
  const spawnedAt = now();
  startService();
  void serviceReady().then(
    () => (fault.evidence = { ...fault.evidence, service_ready_after_ms: Math.round(now() - spawnedAt) }),
    () => {},
  );
}

async function envoyFaults() {
  const upstream = await startUpstream(now);
  const cfg = join(work, 'envoy.json');
  writeFileSync(
    cfg,
    JSON.stringify(
      gatewayBootstrap({
        adminPort,
        listenPort,
        authzPort: grpcPort,
        authzTimeoutMs: plan.authz_timeout_ms,
        upstreamPort: upstream.port,
        pki,
      }),
    ),
  );
  const envoy = startGroup('envoy', ENVOY, [
    '-c',
    cfg,
    '--concurrency',
    '1',
    '--disable-hot-restart',
    '--log-level',
    'warn',
  ]);
  await until(
    'envoy ready',
    async () => (await httpStatus(`http://127.0.0.1:${adminPort}/ready`)) === 200,
    60_000,
    envoy,
  );
  const version = await runToEnd('envoy --version', ENVOY, ['--version']);
  run.envoy_version = /version: [0-9a-f]+\/([0-9.]+)\//.exec(version.stdout)?.[1] ?? null;
  say(`envoy ${run.envoy_version} ready (listener ${listenPort}); load ${plan.rate} rps`);

  const raw = [];
  const load = startLoad({
    rate: plan.rate,
    listenPort,
    pki,
    now,
    record(r) {
      raw.push(r);
      const left = upstream.seen.get(r.seq);
      if (r.identity === 'allowed' && left) allowedAllows.envoy.push(left.at);
    },
  });
  const loadStart = now();
  if ((await recovery('envoy', 0, 30_000)) === null)
    throw new Error(`no allow through Envoy at all\n${service.tail()}\n${envoy.tail()}`);
  // The share of the allowed identity's requests sent in [from, to] that were allowed.
  const allowedShare = (from, to) => {
    let sent = 0;
    let allowed = 0;
    for (let i = raw.length - 1; i >= 0 && raw[i].sent >= from - 5000; i--) {
      const r = raw[i];
      if (r.identity !== 'allowed' || r.sent < from || r.sent > to) continue;
      sent++;
      if (upstream.seen.has(r.seq)) allowed++;
    }
    return sent === 0 ? 0 : allowed / sent;
  };
  // The rate adapts to the machine: a fault must start from a service that keeps up (90% of the
  // allowed identity's requests allowed within Envoy's timeout), or recovery times measure overload.
  const rates = [];
  for (;;) {
    await sleep(500);
    const from = now();
    await sleep(QUICK ? 1500 : 2500);
    const share = allowedShare(from, now() - 500);
    rates.push({ rps: load.rate, allowed_share: Math.round(share * 100) / 100 });
    if (share >= 0.9 || load.rate <= 50) break;
    const next = Math.max(50, Math.round(load.rate / 2));
    say(`only ${Math.round(share * 100)}% of the allowed identity's requests allowed at ${load.rate} rps: ${next} rps`);
    load.setRate(next);
  }
  run.rate_steps = rates;
  /** Waits until the service keeps up again (or timeoutMs); returns the ms it took, or null. */
  const steady = async (since, timeoutMs) => {
    const deadline = now() + timeoutMs;
    while (now() < deadline) {
      await sleep(250);
      if (now() - since > 1500 && allowedShare(now() - 1500, now() - 500) >= 0.9) return now() - 500 - since;
    }
    return null;
  };

  const add = (f) => {
    const fault = { path: 'envoy', kind: 'outage', recovery_timeout_ms: plan.recovery_timeout_ms, ...f };
    faults.push(fault);
    return fault;
  };
  const after = async (fault) => {
    const ms = await recovery('envoy', fault.end, plan.recovery_timeout_ms);
    say(
      `  ${fault.name}: ${ms !== null ? `first allow ${(ms / 1000).toFixed(2)} s after` : 'NO allow after'} the fault ended`,
    );
    if (!service.alive) {
      // A fault that took the service down for good: start it again so the next fault tests something.
      startService();
      await serviceReady();
    }
    // Faults are independent: the next one starts once this one's effects are gone.
    const keptUp = await steady(fault.end, QUICK ? 15_000 : 30_000);
    fault.evidence = { ...fault.evidence, steady_again_after_ms: keptUp === null ? null : Math.round(keptUp) };
    await sleep(plan.steady_ms);
  };

  for (let round = 1; round <= plan.rounds; round++) {
    const suffix = plan.rounds > 1 ? ` #${round}` : '';

    say(`killed${suffix}: kill -9, ${plan.window_ms} ms down, started again`);
    service.signal('SIGKILL');
    await service.exited;
    let start = now();
    await sleep(plan.window_ms);
    let fault = add({ name: `killed${suffix}`, start, end: now() });
    restartService(fault);
    await after(fault);

    say(`hung${suffix}: SIGSTOP for ${plan.window_ms} ms, then SIGCONT`);
    service.signal('SIGSTOP');
    await until('every thread of egress-authz stopped', async () => allStopped(service.pid), 5000);
    start = now();
    await sleep(plan.window_ms);
    fault = add({ name: `hung${suffix}`, start, end: now() });
    service.signal('SIGCONT');
    await after(fault);

    say(`slow policy${suffix}: pushed, ${plan.window_ms} ms, good policy pushed back`);
    const slowLoaded = waitForLog(
      new RegExp(`policy reloaded.*${slow.revision}|${slow.revision}.*policy reloaded`),
      30_000,
    );
    const firstOverrun = budgetOverruns.length;
    push(slowBundle, liveBundle);
    await slowLoaded;
    start = now();
    await sleep(plan.window_ms);
    const end = now();
    const goodLoaded = waitForLog(/policy reloaded.*chaos-good|chaos-good.*policy reloaded/, 60_000).then(() => now());
    push(goodBundle, liveBundle);
    fault = add({ name: `slow policy${suffix}`, start, end });
    const goodAt = await goodLoaded.catch(() => null);
    const took = budgetOverruns.slice(firstOverrun);
    fault.evidence = {
      evaluations_over_budget: took.length,
      fastest_overrun_ms: took.length ? Math.min(...took) : null,
      good_policy_reloaded_after_ms: goodAt === null ? null : Math.round(goodAt - end),
    };
    await after(fault);

    say(`corrupt bundle${suffix}: pushed, ${plan.window_ms} ms, good bundle pushed back`);
    const refused = waitForLog(/policy refused; the last good policy keeps serving/, 30_000).then(
      (line) => ({ at: now(), line }),
      () => null,
    );
    start = now();
    push(corruptBundle, liveBundle);
    const r = await refused;
    const remaining = plan.window_ms - (now() - start);
    if (remaining > 0) await sleep(remaining);
    fault = add({ name: `corrupt bundle${suffix}`, kind: 'last-good', start, end: now() });
    push(goodBundle, liveBundle);
    fault.evidence = r
      ? { ok: true, refused_after_ms: Math.round(r.at - start), error: JSON.parse(r.line).err }
      : { ok: false, problem: 'the service never reported the corrupt bundle refused' };
    await after(fault);

    say(`restarted${suffix}: SIGTERM, exit, ${plan.restart_pause_ms} ms, started again`);
    const termAt = now();
    service.signal('SIGTERM');
    const exit = await service.exited;
    start = now();
    await sleep(plan.restart_pause_ms);
    fault = add({ name: `restarted${suffix}`, start, end: now() });
    fault.evidence = { drain_ms: Math.round(start - termAt), exit_code: exit.code };
    restartService(fault);
    await after(fault);
  }

  await load.stop();
  const loadSeconds = (now() - loadStart) / 1000;
  for (const r of raw) requests.push(envoyOutcome(r, upstream.seen));
  const envoyRequests = requests.filter((r) => r.path === 'envoy');
  const wrongPool = envoyRequests.filter((r) => r.outcome === 'allow' && r.snat_address !== SNAT_ADDRESS).length;
  run.envoy_load = {
    target_rps: plan.rate,
    rps_used: load.rate,
    achieved_rps: Math.round(load.stats.sent / loadSeconds),
    sent: load.stats.sent,
    missed_ticks: load.stats.missed,
    max_tick_gap_ms: Math.round(load.stats.maxLagMs),
    allows_not_from_the_snat_address: wrongPool,
  };
  await envoy.stop();
  await upstream.close();
}

function allStopped(pid) {
  let tasks;
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  return (
    tasks.length > 0 &&
    tasks.every((t) => /^\d+ \(.*\) [tT] /.test(readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8')))
  );
}

// --- iRule path ---------------------------------------------------------------------------------------------
async function iruleFaults() {
  const relay = await startRelay({ servicePort: httpPort });
  const raw = [];
  const load = startIruleLoad({
    root,
    relayPort: relay.port,
    pki,
    now,
    record(r) {
      raw.push(r);
      if (r.identity === 'allowed' && r.outcome === 'allow' && relay.servedBy.get(r.request_id) === 'healthy')
        allowedAllows.irule.push(r.answered);
    },
  });
  say(`iRule harness: 2 tclsh per identity against the relay on ${relay.port}`);
  if ((await recovery('irule', 0, 30_000)) === null)
    throw new Error(`no allow through the iRule at all: ${load.stats.last_failure}`);
  await sleep(plan.steady_ms);
  const modes = ['down', 'hung', 'garbage', 'half'];
  for (let round = 1; round <= plan.rounds; round++) {
    const suffix = plan.rounds > 1 ? ` #${round}` : '';
    for (const mode of modes) {
      // Hung: each iRule connection waits out its 1 s answer timeout, so the window is longer to see several.
      const windowMs = mode === 'hung' ? Math.max(plan.window_ms, 3000) : plan.window_ms;
      say(`sideband ${mode}${suffix}: ${windowMs} ms`);
      await relay.setMode(mode);
      const start = now();
      await sleep(windowMs);
      const fault = {
        name: `sideband ${mode}${suffix}`,
        path: 'irule',
        kind: 'outage',
        recovery_timeout_ms: plan.recovery_timeout_ms,
        start,
        end: now(),
      };
      faults.push(fault);
      await relay.setMode('healthy');
      const ms = await recovery('irule', fault.end, plan.recovery_timeout_ms);
      say(
        `  ${fault.name}: ${ms !== null ? `first allow ${(ms / 1000).toFixed(2)} s after` : 'NO allow after'} the fault ended`,
      );
      await sleep(plan.steady_ms);
    }
  }
  await load.stop();
  for (const r of raw) requests.push(iruleOutcome(r, relay.servedBy));
  // What the iRule said, per fault: the reader sees that each fault failed closed for the right reason.
  for (const f of faults.filter((x) => x.path === 'irule')) {
    const reasons = {};
    for (const r of requests)
      if (r.path === 'irule' && r.answered >= f.start && r.answered <= f.end && r.outcome !== 'allow')
        reasons[r.reason] = (reasons[r.reason] ?? 0) + 1;
    f.evidence = {
      iRule_reasons: Object.fromEntries(
        Object.entries(reasons)
          .sort((a, b) => b[1] - a[1])
          .slice(0, 4),
      ),
    };
  }
  run.irule_load = { harness_runs: load.stats.harness_runs, harness_failures: load.stats.harness_failures };
  await relay.close();
}

if (paths.includes('envoy')) await envoyFaults();
if (paths.includes('irule')) await iruleFaults();
await service.stop(3000);
run.duration_s = Math.round(now() / 100) / 10;

if (flags.samples) {
  mkdirSync(dirname(resolve(flags.samples)), { recursive: true });
  writeFileSync(flags.samples, JSON.stringify({ requests, faults }));
}
const code = report(judge(requests, faults), run);
killAll();
process.exit(code);
