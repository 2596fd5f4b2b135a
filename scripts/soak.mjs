#!/usr/bin/env node
// Soak: a bounded run of mixed allowed / denied / malformed checks against `egress-authz serve` (the
// built dist/cli.js, as a child process), on both callers: gRPC ext_authz, and the BIG-IP sideband when
// the service has it. Reports errors, decisions per second and the server's RSS over time, and fails
// (exit 1) on any error or when RSS has not levelled off: the last third's peak must stay within
// --rss-tolerance of the middle third's.
//
//   npm run soak                                 # 60 s
//   npm run soak -- --duration 10s --count 200000 --concurrency 32 --sample 1s
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { authorizationClient } = await import(join(root, 'dist', 'transport', 'envoy-protos.js'));

const { values: flags } = parseArgs({
  options: {
    duration: { type: 'string', default: '60s' },
    count: { type: 'string', default: '0' }, // 0: no limit but the duration
    concurrency: { type: 'string', default: '32' },
    sample: { type: 'string', default: '3s' },
    'rss-tolerance': { type: 'string', default: '0.10' },
    json: { type: 'boolean', default: false },
  },
});

function ms(text) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text);
  if (!m) throw new Error(`bad duration ${text}`);
  return Number(m[1]) * (m[2] === 'm' ? 60_000 : m[2] === 'ms' ? 1 : 1000);
}
const durationMs = ms(flags.duration);
const maxCount = Number(flags.count);
const concurrency = Number(flags.concurrency);
const sampleMs = ms(flags.sample);
const tolerance = Number(flags['rss-tolerance']);

// Certificates with openssl (a Debian package the project installs), made by the benchmark's PKI: a mesh
// CA, the bookinfo SVID (allowed) and an sm-apigw-a one (denied by the default policy).
const { makePki } = await import(join(root, 'bench', 'pki.mjs'));
const { startNodeFlags } = await import(join(root, 'bench', 'node-flags.mjs'));
const dir = mkdtempSync(join(tmpdir(), 'egress-authz-soak-'));
const pki = await makePki(dir, { extraClients: { apigw: 'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools' } });
const pems = { bookinfo: pki.clientCertPem, apigw: readFileSync(pki.clients.apigw.certFile, 'utf8') };
rmSync(dir, { recursive: true, force: true });

// The service under soak.
const server = spawn(
  process.execPath,
  [
    ...startNodeFlags(),
    join(root, 'dist', 'cli.js'),
    'serve',
    '--grpc-addr',
    '127.0.0.1:0',
    '--http-addr',
    '127.0.0.1:0',
    '--policy',
    join(root, 'policies'),
    '--log-level',
    'info',
  ],
  {
    cwd: root,
    stdio: ['ignore', 'pipe', 'inherit'],
  },
);
let logBytes = 0;
const ports = await new Promise((resolve, reject) => {
  let buffered = '';
  server.stdout.on('data', (chunk) => {
    logBytes += chunk.length; // the decision log is read and dropped, as a log shipper would
    if (buffered === null) return;
    buffered += chunk.toString();
    for (const line of buffered.split('\n')) {
      if (!line.includes('egress-authz serving')) continue;
      const parsed = JSON.parse(line);
      buffered = null;
      resolve({ grpc: parsed.grpc_port, http: parsed.http_port });
      return;
    }
  });
  server.on('exit', (code) => reject(new Error(`serve exited with ${code} before serving`)));
});

function rssMiB() {
  const status = readFileSync(`/proc/${server.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]) / 1024;
}

// The sideband is on this service when its route answers something else than 404.
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
function sideband(body) {
  return new Promise((resolve) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port: ports.http,
        method: 'POST',
        path: '/v1/sideband',
        agent,
        headers: {
          'content-type': 'application/x-pem-file',
          'content-length': Buffer.byteLength(body),
          'x-egress-destination': 'www.example.com:443',
        },
      },
      (res) => {
        res.resume();
        res.on('end', () =>
          resolve({
            status: res.statusCode,
            decision: res.headers['x-egress-decision'],
            pool: res.headers['x-egress-snat-pool'],
            reason: res.headers['x-egress-reason'],
          }),
        );
      },
    );
    req.on('error', (err) => resolve({ error: err.message }));
    req.end(body);
  });
}
const hasSideband = (await sideband('probe')).status !== 404;

const Client = authorizationClient();
const clients = Array.from(
  { length: 4 },
  (_, i) => new Client(`127.0.0.1:${ports.grpc}`, grpc.credentials.createInsecure(), { 'soak.channel': i }),
);
function checkRequest(source) {
  return {
    attributes: {
      source,
      request: {
        http: {
          method: 'CONNECT',
          host: 'www.example.com:443',
          path: '',
          protocol: 'HTTP/1.1',
          headers: { ':authority': 'www.example.com:443', 'x-request-id': 'soak' },
        },
      },
    },
  };
}
function grpcCheck(client, source) {
  return new Promise((resolve) => {
    client.Check(checkRequest(source), { deadline: Date.now() + 5000 }, (err, res) => {
      if (err) return resolve({ error: `${grpc.status[err.code]}: ${err.details}` });
      const pool = (res.okResponse?.headers ?? []).find((h) => h.header.key === 'x-egress-snat-pool')?.header.value;
      resolve({ allow: res.status.code === 0, pool, reason: res.deniedResponse?.body });
    });
  });
}

// The mix: expected outcome per kind. A wrong outcome counts as an error as much as a failed call.
const kinds = [
  {
    name: 'grpc allow (principal)',
    run: (c) => grpcCheck(c, { principal: 'spiffe://cluster.local/ns/bookinfo/sa/productpage' }),
    allow: true,
  },
  {
    name: 'grpc allow (certificate)',
    run: (c) => grpcCheck(c, { certificate: encodeURIComponent(pems.bookinfo) }),
    allow: true,
  },
  {
    name: 'grpc deny',
    run: (c) => grpcCheck(c, { principal: 'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools' }),
    allow: false,
  },
  {
    name: 'grpc malformed principal',
    run: (c) => grpcCheck(c, { principal: `CN=not-a-spiffe-id-${Math.random()}` }),
    allow: false,
  },
  {
    name: 'grpc malformed certificate',
    run: (c) =>
      grpcCheck(c, {
        certificate: encodeURIComponent(
          `-----BEGIN CERTIFICATE-----\n${Buffer.from(String(Math.random())).toString('base64')}\n-----END CERTIFICATE-----\n`,
        ),
      }),
    allow: false,
  },
];
if (hasSideband) {
  const viaSideband = (body) => async () => {
    const r = await sideband(body);
    return r.error
      ? r
      : {
          allow: r.decision === 'allow' && r.status === 200,
          pool: r.pool,
          reason: r.reason,
          bad: r.decision !== 'allow' && r.decision !== 'deny',
        };
  };
  kinds.push(
    { name: 'sideband allow', run: viaSideband(pems.bookinfo), allow: true },
    { name: 'sideband deny', run: viaSideband(pems.apigw), allow: false },
    { name: 'sideband malformed', run: () => viaSideband(`garbage ${Math.random()}`)(), allow: false },
  );
}

const stats = new Map(kinds.map((k) => [k.name, { sent: 0, ok: 0, errors: 0 }]));
const errors = new Map();
let done = 0;
const started = Date.now();
const deadline = started + durationMs;
const samples = [];
let lastDone = 0;
let lastAt = started;
const rssStart = rssMiB();
const sampler = setInterval(() => {
  const now = Date.now();
  const sample = {
    t: Math.round((now - started) / 100) / 10,
    rss_mib: Math.round(rssMiB() * 10) / 10,
    per_s: Math.round(((done - lastDone) * 1000) / (now - lastAt)),
  };
  samples.push(sample);
  lastDone = done;
  lastAt = now;
  if (!flags.json)
    process.stdout.write(
      `t=${sample.t}s rss=${sample.rss_mib}MiB rate=${sample.per_s}/s errors=${[...errors.values()].reduce((a, b) => a + b, 0)}\n`,
    );
}, sampleMs);

let next = 0;
async function worker(id) {
  const client = clients[id % clients.length];
  while (Date.now() < deadline && (maxCount === 0 || next < maxCount)) {
    const kind = kinds[next++ % kinds.length];
    const s = stats.get(kind.name);
    s.sent++;
    const r = await kind.run(client);
    done++;
    const wrong =
      r.error ??
      (r.bad
        ? 'answer without X-Egress-Decision'
        : r.allow !== kind.allow
          ? `expected allow=${kind.allow} (${r.reason ?? ''})`
          : kind.allow && r.pool !== 'bookinfo_snat'
            ? `pool ${r.pool}`
            : undefined);
    if (wrong) {
      s.errors++;
      const key = `${kind.name}: ${wrong}`;
      errors.set(key, (errors.get(key) ?? 0) + 1);
    } else s.ok++;
  }
}
await Promise.all(Array.from({ length: concurrency }, (_, i) => worker(i)));
clearInterval(sampler);
const elapsed = (Date.now() - started) / 1000;
const rssEnd = rssMiB();

server.kill('SIGTERM');
const exit = await new Promise((resolve) => server.on('exit', (code) => resolve(code)));
for (const c of clients) c.close();
agent.destroy();

const thirds = [0, 1, 2].map((i) =>
  samples.slice(Math.floor((i * samples.length) / 3), Math.floor(((i + 1) * samples.length) / 3)),
);
const peak = (xs) => Math.max(...xs.map((s) => s.rss_mib));
const middlePeak = peak(thirds[1]);
const lastPeak = peak(thirds[2]);
const plateau = samples.length >= 6 && lastPeak <= middlePeak * (1 + tolerance);
const errorCount = [...errors.values()].reduce((a, b) => a + b, 0);
const summary = {
  callers: hasSideband ? ['grpc', 'sideband'] : ['grpc'],
  sideband: hasSideband ? 'present' : 'absent on this service: gRPC only',
  seconds: Math.round(elapsed * 10) / 10,
  checks: done,
  decisions_per_s: Math.round(done / elapsed),
  errors: errorCount,
  error_kinds: Object.fromEntries(errors),
  per_kind: Object.fromEntries(stats),
  rss_mib: {
    start: Math.round(rssStart * 10) / 10,
    end: Math.round(rssEnd * 10) / 10,
    middle_third_peak: middlePeak,
    last_third_peak: lastPeak,
    tolerance,
  },
  rss_plateau: plateau,
  decision_log_mib: Math.round((logBytes / 1048576) * 10) / 10,
  server_exit_code: exit,
  samples,
};
process.stdout.write(`${JSON.stringify(flags.json ? summary : { ...summary, samples: undefined }, null, 2)}\n`);
if (!hasSideband) process.stdout.write('soak: the service has no /v1/sideband route; ran gRPC checks only\n');
const pass = errorCount === 0 && plateau && exit === 0 && done > 0;
process.stdout.write(
  `soak: ${pass ? 'PASS' : 'FAIL'}${plateau ? '' : ' (RSS still growing)'}${errorCount ? ` (${errorCount} errors)` : ''}\n`,
);
process.exit(pass ? 0 : 1);
