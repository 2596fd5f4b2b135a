#!/usr/bin/env node
// What metrics and a shadow policy cost per Check. Run after `npm run build`:
//   node scripts/bench-lifecycle.mjs [iterations]
// 1. in-process: Authorizer.checkEnvoy without metrics, with metrics, with metrics + shadow
//    (the shadow comparison is deferred; its cost is measured by draining the queue);
// 2. over gRPC on loopback: 8 concurrent callers, p50/p99 latency and throughput, without and with shadow.
import { join } from 'node:path';
import pino from 'pino';
import { Authorizer } from '../dist/decision/authorizer.js';
import { authorizationClient } from '../dist/transport/envoy-protos.js';
import { MeteredAuthorizer, ServiceMetrics } from '../dist/service/metrics.js';
import { loadPolicy } from '../dist/lifecycle/bundle-source.js';
import { MutablePolicySource, startService } from '../dist/service/service.js';
import { ShadowEvaluator } from '../dist/lifecycle/shadow-policy.js';
import * as grpc from '@grpc/grpc-js';

const N = Number(process.argv[2] ?? 100_000);
const root = join(import.meta.dirname, '..');
const policy = await loadPolicy(join(root, 'policies'));
const request = (principal) => ({
  attributes: {
    source: { principal },
    request: {
      http: {
        method: 'CONNECT',
        host: 'www.example.com:443',
        headers: { ':authority': 'www.example.com:443', 'x-request-id': 'r' },
      },
    },
  },
});
const principals = [
  'spiffe://cluster.local/ns/bookinfo/sa/productpage',
  'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools',
];
const silent = pino({ level: 'silent' });

function perCheck(authorizer) {
  for (let i = 0; i < 5000; i++) authorizer.checkEnvoy(request(principals[i % 2]));
  const started = performance.now();
  for (let i = 0; i < N; i++) authorizer.checkEnvoy(request(principals[i % 2]));
  const sync = ((performance.now() - started) * 1000) / N;
  return { sync };
}

const policies = new MutablePolicySource(policy);
const plain = new Authorizer({ policies, sink: () => {} });
const metrics = new ServiceMetrics();
const metered = new MeteredAuthorizer(
  { policies, sink: (_e, d) => metrics.observeDecision(d, policies.current) },
  metrics,
);
// The shadow's cost is one more decision on the same input, paid after the answer: measure it directly.
const shadow = new ShadowEvaluator(new MutablePolicySource(policy), { log: silent, metrics });
const captured = [];
const capturing = new Authorizer({ policies, sink: () => {}, shadow: (input, live) => captured.push([input, live]) });
for (let i = 0; i < Math.min(N, 20_000); i++) capturing.checkEnvoy(request(principals[i % 2]));

const rows = [];
// alternated, best of 3, so JIT warm-up and GC do not favour whichever runs last
const best = { plain: Infinity, metrics: Infinity, shadow: Infinity };
for (let round = 0; round < 3; round++) {
  best.plain = Math.min(best.plain, perCheck(plain).sync);
  best.metrics = Math.min(best.metrics, perCheck(metered).sync);
  const started = performance.now();
  for (const [input, live] of captured) shadow.compare(input, live);
  best.shadow = Math.min(best.shadow, ((performance.now() - started) * 1000) / captured.length);
}
// The metric updates of one check on their own (what MeteredAuthorizer and the sink add).
{
  const decisions = captured.map(([, live]) => live);
  let bestUpdates = Infinity;
  for (let round = 0; round < 3; round++) {
    const started = performance.now();
    for (let i = 0; i < N; i++) {
      const t = performance.now();
      metrics.observeDecision(decisions[i % decisions.length], policy);
      metrics.observeCheckSeconds((performance.now() - t) / 1000);
    }
    bestUpdates = Math.min(bestUpdates, ((performance.now() - started) * 1000) / N);
  }
  rows.push(['metric updates alone', bestUpdates]);
}
rows.push(
  ['checkEnvoy, no metrics', best.plain],
  ['checkEnvoy, with metrics', best.metrics],
  ['shadow comparison (deferred, per check)', best.shadow],
);
console.log(`in-process, ${N} iterations, best of 3, µs per check:`);
for (const [name, us] of rows) console.log(`  ${name.padEnd(42)} ${us.toFixed(2)}`);

async function grpcRun(withShadow) {
  const svc = await startService({
    grpcAddr: '127.0.0.1:0',
    httpAddr: '127.0.0.1:0',
    policy,
    logger: silent,
    ...(withShadow ? { shadowPolicies: new MutablePolicySource(policy) } : {}),
  });
  const Client = authorizationClient();
  const client = new Client(`127.0.0.1:${svc.grpcPort}`, grpc.credentials.createInsecure());
  const call = (req) => new Promise((res, rej) => client.Check(req, (e, r) => (e ? rej(e) : res(r))));
  for (let i = 0; i < 2000; i++) await call(request(principals[i % 2]));
  const latencies = [];
  const total = Math.min(N, 40_000);
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < total) {
        const i = next++;
        const t = performance.now();
        await call(request(principals[i % 2]));
        latencies.push(performance.now() - t);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  client.close();
  await svc.close(1000);
  latencies.sort((a, b) => a - b);
  const q = (p) => latencies[Math.floor(latencies.length * p)].toFixed(3);
  return `${withShadow ? 'with shadow   ' : 'without shadow'}: ${(total / seconds).toFixed(0)} checks/s, p50 ${q(0.5)} ms, p99 ${q(0.99)} ms`;
}
console.log('gRPC Check on loopback, 8 concurrent callers, one connection (metrics always on):');
for (const withShadow of [false, true, false, true, false, true]) console.log(`  ${await grpcRun(withShadow)}`);
