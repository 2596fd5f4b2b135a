// In-process cost of one Check's pipeline (identity → input → policy → decision → log line), without
// gRPC: the part of the hot path this project owns. Three workloads, as in `npm run bench`:
//   hot:  one workload's CheckRequest over and over (everything cached);
//   warm: N distinct workloads (--identities, default 3000) × 3 destinations, half denied, round-robin,
//         after a warm-up pass (certificates and decisions cached);
//   cold: the same distinct workloads with the certificate cache off and the policy memo off, so every
//         Check parses its certificate and evaluates the policy (after a restart, a rotation storm).
// `npm run bench:pipeline [-- ROUNDS] [--identities N] [--workload hot|warm|cold]` (rounds of 1 s; pin
// it with taskset for steadier figures). Prints one JSON line per workload: the median of per-Check
// times and the best round's mean, in µs.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { Authorizer } from '../dist/decision/authorizer.js';
import { loadPolicy } from '../dist/lifecycle/bundle-source.js';
import * as svidModule from '../dist/identity/x509-svid.js';
import { defaultPolicyLocation } from '../dist/cli.js';
import { checkRequest } from './check-request.mjs';
import { makeIdentities } from './identities.mjs';
import { makePki } from './pki.mjs';
import { workloadRequests } from './workloads.mjs';

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    identities: { type: 'string', default: '3000' },
    workload: { type: 'string', multiple: true },
  },
});
const rounds = Number(positionals[0] ?? 5);
const identities = Number(opts.identities);
const workloads = opts.workload ?? ['hot', 'warm', 'cold'];

const work = join(import.meta.dirname, 'work');
const pkiDir = join(work, 'pki');
await makePki(pkiDir);
const hotRequest = checkRequest(readFileSync(join(pkiDir, 'bookinfo.pem'), 'utf8'));
const ids = await makeIdentities(join(work, 'identities'), identities);
const manyRequests = workloadRequests(ids);
const logger = pino({ timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ dest: '/dev/null', sync: false }));

async function authorizer({ memoize }) {
  const policy = await loadPolicy(defaultPolicyLocation(), { memoize });
  return new Authorizer({ policies: { current: policy }, sink: (entry) => logger.info(entry, 'decision') });
}

/** Per-Check times (µs) over `rounds` rounds of 1 s, cycling through `requests`. */
function measure(auth, requests) {
  const samples = [];
  let best = Infinity;
  let i = 0;
  for (let round = 0; round < rounds; round++) {
    let n = 0;
    const started = performance.now();
    const end = started + 1000;
    while (performance.now() < end) {
      for (let k = 0; k < 50; k++) {
        const t = performance.now();
        auth.checkEnvoy(requests[i]);
        samples.push(performance.now() - t);
        i = (i + 1) % requests.length;
      }
      n += 50;
    }
    best = Math.min(best, ((performance.now() - started) * 1000) / n);
  }
  samples.sort((a, b) => a - b);
  const q = (p) => Math.round(samples[Math.floor(p * (samples.length - 1))] * 1000 * 100) / 100;
  return {
    checks: samples.length,
    median_us: q(0.5),
    p99_us: q(0.99),
    best_round_mean_us: Math.round(best * 100) / 100,
  };
}

/** One pass over the requests: every decision must be the expected one (a deny for want of time aside). */
function checkDecisions(workload, auth, requests) {
  let late = 0;
  for (const { request, allowed } of requests) {
    const d = auth.checkEnvoy(request);
    if (d.allow === allowed) continue;
    // On a loaded machine an evaluation may overrun its budget: that is a deny, never a wrong allow.
    if (!d.allow && /exceeded|deadline/.test(d.reason)) late++;
    else throw new Error(`${workload}: ${request.attributes.source.principal}: ${d.allow ? 'allowed' : d.reason}`);
  }
  return late;
}

for (const workload of workloads) {
  if (workload === 'hot') {
    const auth = await authorizer({ memoize: true });
    const first = auth.checkEnvoy(hotRequest);
    if (!first.allow || first.snat_pool !== 'bookinfo_snat') throw new Error(`expected an allow: ${first.reason}`);
    for (let i = 0; i < 5000; i++) auth.checkEnvoy(hotRequest);
    report(workload, measure(auth, [hotRequest]), { identities: 1 });
  } else if (workload === 'warm' || workload === 'cold') {
    const cold = workload === 'cold';
    // Older builds have no cache switch: more distinct certificates than their cache holds misses too.
    if (svidModule.configureX509SvidCache) {
      svidModule.configureX509SvidCache({ entries: cold ? 0 : svidModule.DEFAULT_SVID_CACHE_ENTRIES });
    }
    const auth = await authorizer({ memoize: !cold });
    const requests = manyRequests.map((r) => r.request);
    const late = checkDecisions(workload, auth, manyRequests);
    report(workload, measure(auth, requests), { identities, requests: requests.length, over_budget_in_check: late });
  } else throw new Error(`unknown workload ${workload}`);
}
logger.flush();

function report(workload, figures, extra) {
  console.log(JSON.stringify({ workload, ...extra, ...figures }));
}
