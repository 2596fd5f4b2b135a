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
import { bestOfRounds } from './rounds.mjs';

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
console.log(JSON.stringify(bestOfRounds(rounds, () => authorizer.checkEnvoy(request))));
logger.flush();
