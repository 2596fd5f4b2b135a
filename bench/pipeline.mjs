// In-process cost of one Check's pipeline (identity → input → policy → decision → log line), without
// gRPC: the part of the hot path this project owns. `npm run bench:pipeline [-- ROUNDS]` (rounds of 1 s; pin it with taskset for steadier figures).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { Authorizer } from '../dist/decision/authorizer.js';
import { loadPolicy } from '../dist/policy/policy.js';
import { defaultPolicyLocation } from '../dist/cli.js';
import { checkRequest } from './check-request.mjs';
import { makePki } from './pki.mjs';

const rounds = Number(process.argv[2] ?? 5);
// The benchmark's own CheckRequest (bookinfo SVID made with openssl now, under the git-ignored bench/work).
const pkiDir = join(import.meta.dirname, 'work', 'pki');
await makePki(pkiDir);
const request = checkRequest(readFileSync(join(pkiDir, 'bookinfo.pem'), 'utf8'));
const policy = await loadPolicy(defaultPolicyLocation());
const logger = pino({ timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ dest: '/dev/null', sync: false }));
const authorizer = new Authorizer({ policies: { current: policy }, sink: (entry) => logger.info(entry, 'decision') });
const first = authorizer.checkEnvoy(request);
if (!first.allow || first.snat_pool !== 'bookinfo_snat') throw new Error(`expected an allow: ${first.reason}`);
for (let i = 0; i < 5000; i++) authorizer.checkEnvoy(request);
// Best of several rounds: on a shared machine the minimum is the figure least disturbed by others.
let best = Infinity;
let total = 0;
for (let round = 0; round < rounds; round++) {
  let n = 0;
  const started = performance.now();
  const end = started + 1000;
  while (performance.now() < end) {
    for (let i = 0; i < 100; i++) authorizer.checkEnvoy(request);
    n += 100;
  }
  total += n;
  best = Math.min(best, ((performance.now() - started) * 1000) / n);
}
console.log(
  JSON.stringify({
    checks: total,
    best_us_per_check: Math.round(best * 100) / 100,
    checks_per_s: Math.round(1e6 / best),
  }),
);
logger.flush();
