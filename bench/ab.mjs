// An interleaved A/B of Check servers over gRPC, for changes too small for the full benchmark's spread:
// each variant is started once (on core 0) and paused (SIGSTOP) while the others are measured; every
// round measures each variant in turn, the order rotating, with the load generator on core 1 (50
// concurrent, 1 s of warm-up then the measured seconds). Reports Checks/s per round and their mean,
// and the server's CPU per Check (from /proc, user + system).
//
// Usage: npm run bench:ab -- SPEC.json
// SPEC: {"workload": "hot" | "warm", "rounds": 8, "seconds": 4, "identities": 3000,
//        "loadGenerator": "loadgen" (the default) | "ghz",
//        "variants": [{"label": "...", "args": ["node", "dist/cli.js", "serve", "--grpc-addr", "$GRPC",
//                      "--http-addr", "$HTTP"], "env": {}}]}
// $GRPC and $HTTP are replaced by free loopback addresses; args run from the repository root.
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkRequest, waitForAllow } from './check-request.mjs';
import { runLoad } from './load.mjs';
import { makeIdentities } from './identities.mjs';
import { makePki } from './pki.mjs';
import { cpuTicksOf, freePort, startProcess, stopProcess } from './processes.mjs';
import { workloadRequests, writeRequestFiles } from './workloads.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const work = join(root, 'bench', 'work', 'ab');
const spec = JSON.parse(readFileSync(process.argv[2] ?? '', 'utf8'));
mkdirSync(work, { recursive: true });

const pki = await makePki(join(work, 'pki'));
const hot = checkRequest(pki.clientCertPem);
let requests = writeRequestFiles(join(work, 'check-request'), [hot]);
let warmCount = 0;
if (spec.workload === 'warm') {
  // Identities are shared with the full benchmark's (bench/work/identities), made once while valid.
  const many = workloadRequests(
    await makeIdentities(join(root, 'bench', 'work', 'identities'), spec.identities ?? 3000),
  );
  requests = writeRequestFiles(
    join(work, 'check-requests-many'),
    many.map((r) => r.request),
  );
  warmCount = many.length;
}

const tools = join(root, '.tools', 'bin');
const cpuMs = (pid) => cpuTicksOf(pid) * 10; // clock ticks of 10 ms
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

const started = [];
try {
  for (const variant of spec.variants) {
    const grpcAddr = `127.0.0.1:${await freePort()}`;
    const httpAddr = `127.0.0.1:${await freePort()}`;
    const args = variant.args.map((a) => a.replace('$GRPC', grpcAddr).replace('$HTTP', httpAddr));
    const child = startProcess('taskset', ['-c', '0', ...args], { env: { ...process.env, ...variant.env }, cwd: root });
    await waitForAllow(grpcAddr, hot, 30_000, () => child.exitCode === null);
    const loadArgs = {
      tool: spec.loadGenerator ?? 'loadgen',
      tools,
      core: 1,
      addr: grpcAddr,
      requests,
      concurrency: 50,
      outFile: join(work, 'load.json'),
    };
    // Warm: every request once, so the caches hold the working set before any round.
    if (warmCount) await runLoad({ ...loadArgs, total: warmCount });
    child.kill('SIGSTOP');
    started.push({ label: variant.label, child, loadArgs, rps: [], cpuUs: [] });
  }
  for (let round = 0; round < spec.rounds; round++) {
    for (let k = 0; k < started.length; k++) {
      const s = started[(round + k) % started.length];
      s.child.kill('SIGCONT');
      await runLoad({ ...s.loadArgs, seconds: 1 });
      const before = cpuMs(s.child.pid);
      const m = await runLoad({ ...s.loadArgs, seconds: spec.seconds });
      s.cpuUs.push(((cpuMs(s.child.pid) - before) * 1000) / m.requests);
      s.child.kill('SIGSTOP');
      s.rps.push(m.rps);
    }
  }
  for (const s of started) {
    console.log(
      JSON.stringify({
        label: s.label,
        rps: s.rps.map(Math.round),
        mean_rps: Math.round(mean(s.rps)),
        cpu_us_per_check: Math.round(mean(s.cpuUs)),
      }),
    );
  }
} finally {
  for (const s of started) {
    s.child.kill('SIGCONT');
    await stopProcess(s.child);
  }
}
