// Heap bytes and CPU of each step of one cached Envoy Check, in-process: which step makes the garbage
// the collector later pauses for. Each step runs 5 × 5,000 times with semi-spaces large enough that no
// scavenge runs inside a batch, so the growth of the used heap over a batch is what the step allocated;
// `buffers` is what it allocated outside the heap (Buffers' bytes, e.g. the decision log's batch copies).
// `npm run bench:alloc` (pin it with taskset for steadier µs figures). Prints one JSON line per step.
import { join } from 'node:path';
import { resolveIdentity } from '../dist/identity/identity.js';
import { buildEnvoyInput } from '../dist/decision/input.js';
import { decide } from '../dist/decision/decision.js';
import { decisionLogEntry } from '../dist/decision/decision-log.js';
import { correlationOf } from '../dist/decision/correlation.js';
import { loadPolicy } from '../dist/lifecycle/bundle-source.js';
import { defaultPolicyLocation } from '../dist/cli.js';
import { loadAuthorizationRoot, loadAuthorizationService } from '../dist/transport/envoy-protos.js';
import { checkRequestDeserializer } from '../dist/transport/check-request-wire.js';
import { encodeCheckResponse } from '../dist/transport/check-response-wire.js';
import { toCheckResponse } from '../dist/transport/envoy-response.js';
import { Authorizer } from '../dist/decision/authorizer.js';
import { ServiceMetrics, pipelineMetrics } from '../dist/service/metrics.js';
import { batchLines, byteDestination } from '../dist/service/log-lines.js';
import { createServiceLog } from '../dist/service/service-log.js';
import { checkRequest } from './check-request.mjs';
import { loadAuthorizationService as benchService } from './ext-authz-proto.mjs';
import { makePki } from './pki.mjs';

if (typeof globalThis.gc !== 'function') throw new Error('run with node --expose-gc (npm run bench:alloc does)');
const pki = await makePki(join(import.meta.dirname, 'work', 'pki'));
const check = loadAuthorizationService().Check;
const bytes = benchService().service.Check.requestSerialize(checkRequest(pki.clientCertPem));
const decodeRequest = checkRequestDeserializer(loadAuthorizationRoot(), check.requestDeserialize);
const req = decodeRequest(bytes);
// The serve command's logger (service-log.ts) over its batched destination, here into /dev/null: the
// decision log step includes the batching and the batches' copies handed to the destination.
const lines = batchLines(byteDestination({ dest: '/dev/null', sync: false, maxLength: 16 * 1024 * 1024 }));
const { logger, decisionLine } = createServiceLog({ level: 'info', destination: lines });
const policy = await loadPolicy(defaultPolicyLocation(), { memoize: true });
const policies = { current: policy };
const observer = pipelineMetrics(new ServiceMetrics(), policies);
const auth = new Authorizer({ policies, sink: decisionLine, observer, checkDeadlineMs: 1000 });
const source = req.attributes.source;
const now = new Date();
const identity = resolveIdentity({ principal: source.principal, certificatePem: source.certificate }, now).value;
const input = buildEnvoyInput(req, identity);
const decision = decide(input, policy);
const correlation = correlationOf(req.attributes.request.http.headers['x-request-id'], undefined);
const entry = decisionLogEntry(decision, correlation);
if (!decision.allow) throw new Error(`expected an allow: ${decision.reason}`);
// Another caller's decision: alternated with `entry`, no field repeats from one line to the next.
const other = {
  ...entry,
  spiffe_id: `${entry.spiffe_id}-other`,
  namespace: `${entry.namespace}-other`,
  caller: 'sideband',
  snat_pool: `${entry.snat_pool}-other`,
  reason: `${entry.reason} (other)`,
  reason_class: 'no_match',
  destination: `other.${entry.destination}`,
  policy_revision: `${entry.policy_revision}-other`,
};
let turn = 0;

const steps = {
  'request decode (check-request-wire)': () => decodeRequest(bytes),
  'request decode through proto-loader (the reference)': () => check.requestDeserialize(bytes),
  'identity (certificate cache hit)': () =>
    resolveIdentity({ principal: source.principal, certificatePem: source.certificate }, now),
  'input document': () => buildEnvoyInput(req, identity),
  'decision (policy memo hit)': () => decide(input, policy),
  'decision log line (service-log)': () => decisionLine(entry),
  'decision log line, two callers in turn': () => decisionLine(++turn % 2 === 0 ? entry : other),
  'decision log line through pino (the reference)': () => logger.info(entry, 'decision'),
  metrics: () => observer.onDecision(decision, { seconds: 0.0001 }),
  'whole pipeline (Authorizer.checkEnvoy)': () => auth.checkEnvoy(req),
  'answer (encodeCheckResponse)': () => encodeCheckResponse(decision),
  'answer through protobufjs (the reference)': () => check.responseSerialize(toCheckResponse(decision)),
};
const N = 5000;
for (const f of Object.values(steps)) for (let i = 0; i < 20000; i++) f();
for (const [step, f] of Object.entries(steps)) {
  const rounds = [];
  for (let round = 0; round < 5; round++) {
    globalThis.gc();
    await new Promise((r) => setImmediate(r));
    const before = process.memoryUsage();
    const cpu = process.cpuUsage();
    for (let i = 0; i < N; i++) f();
    // the lines' way to the destination's write counted too (before, its conversion of the batch's string)
    lines.flushSync();
    const used = process.cpuUsage(cpu);
    const after = process.memoryUsage();
    rounds.push({
      bytes: (after.heapUsed - before.heapUsed) / N,
      buffers: (after.arrayBuffers - before.arrayBuffers) / N,
      us: (used.user + used.system) / N,
    });
  }
  rounds.sort((a, b) => a.us - b.us);
  const med = rounds[2];
  console.log(
    JSON.stringify({
      step,
      bytes: Math.round(med.bytes),
      buffers: Math.round(med.buffers),
      us: Math.round(med.us * 100) / 100,
    }),
  );
}
logger.flush();
process.exit(0);
