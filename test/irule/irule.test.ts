// Runs the shipped iRule file in tclsh (test/irule/harness.tcl stubs the BIG-IP commands) against the
// real egress-authz service, and against servers that fail in the ways a network does.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadPolicy } from '../../src/lifecycle/bundle-source.js';
import { startTestService, type TestService } from '../support/service.js';
import { makeBigipCerts, startSidebandService, type BigipCerts } from '../sideband/sideband-service.js';
import { IRULE, runHarness, type HarnessRun } from './harness.js';

function listenOn(handler: (s: Socket) => void): Promise<{ server: Server; port: number; sockets: Set<Socket> }> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    handler(s);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({ server, port: (server.address() as { port: number }).port, sockets }),
    ),
  );
}

function stop(s: { server: Server; sockets: Set<Socket> }): Promise<void> {
  for (const sock of s.sockets) sock.destroy();
  return new Promise((resolve) => s.server.close(() => resolve()));
}

let service: TestService;
let certs: BigipCerts;
let target: string;
let slow: Awaited<ReturnType<typeof listenOn>>;
let garbage: Awaited<ReturnType<typeof listenOn>>;
let closedPort: number;

beforeAll(async () => {
  [service, certs] = await Promise.all([startSidebandService(), makeBigipCerts()]);
  target = `127.0.0.1:${service.httpPort}`;
  // accepts, reads, never answers
  slow = await listenOn((s) => s.resume());
  // answers at once with something that is not HTTP, then closes
  garbage = await listenOn((s) => {
    s.once('data', () => s.end('220 smtp.example ESMTP ready\r\nX-Egress-Decision: allow\r\n\r\n'));
  });
  const probe = await listenOn(() => {});
  closedPort = probe.port;
  await stop(probe);
});

afterAll(async () => {
  await Promise.all([service?.close(100), slow && stop(slow), garbage && stop(garbage)]);
  certs?.cleanup();
});

const expectAllowed = (run: HarnessRun, pool: string) => {
  expect(run.errors).toEqual([]);
  expect(run.actions).toContain(`snatpool ${pool}`);
  expect(run.actions).toContain('release');
  expect(run.actions).not.toContain('reject');
  expect(run.connections[0]).toMatchObject({ verdict: 'allow', pool });
};

const expectRejected = (run: HarnessRun) => {
  expect(run.errors).toEqual([]);
  expect(run.actions).toContain('reject');
  expect(run.actions.some((a) => a.startsWith('snatpool'))).toBe(false);
  expect(run.actions).not.toContain('release');
  expect(run.connections[0]?.verdict).toBe('reject');
};

describe('the shipped iRule against the live service', () => {
  it('bookinfo certificate → snatpool bookinfo_snat, one log line correlated with the decision log', async () => {
    const f = certs.files.bookinfo!;
    const run = await runHarness({ pem: f.path, hash: f.md5, target });
    expectAllowed(run, 'bookinfo_snat');
    expect(run.logs).toHaveLength(1);
    const log = run.logs[0]!;
    expect(log).toMatch(/^local0\.info egress_authz decision=allow /);
    expect(log).toContain(`cert_md5=${f.md5}`);
    const id = /id=(\S+)/.exec(log)![1];
    const requestId = /request_id=(\S+)/.exec(log)![1];
    const entry = service.decisions.find((d) => d.decision_id === id);
    expect(entry).toMatchObject({
      caller: 'sideband',
      allow: true,
      snat_pool: 'bookinfo_snat',
      x_request_id: requestId,
      spiffe_id: 'spiffe://cluster.local/ns/bookinfo/sa/default',
    });
    // the SPIFFE ID is the service's business; the BIG-IP log carries only the certificate hash
    expect(log).not.toContain('spiffe://');
  });

  it('sm-apigw-a certificate → reject', async () => {
    const f = certs.files.apigw!;
    const run = await runHarness({ pem: f.path, hash: f.md5, target });
    expectRejected(run);
    expect(run.logs[0]).toMatch(/decision=deny id=[0-9a-f-]{36} .*status=403 /);
  });

  it("DNS SAN before the URI SAN → still allowed (the seed's findstr rule would deny it)", async () => {
    const f = certs.files.dnsFirst!;
    expectAllowed(await runHarness({ pem: f.path, hash: f.md5, target }), 'bookinfo_snat');
  });

  it('two URI SANs → reject', async () => {
    const f = certs.files.twoUris!;
    expectRejected(await runHarness({ pem: f.path, hash: f.md5, target }));
  });

  it('bookinfo-evil (passes a prefix test without the trailing slash) → reject', async () => {
    const f = certs.files.evilPrefix!;
    expectRejected(await runHarness({ pem: f.path, hash: f.md5, target }));
  });

  it('reuses one sideband connection, and the decision cache answers a repeated certificate', async () => {
    const f = certs.files.bookinfo!;
    const before = service.decisions.length;
    const run = await runHarness({ pem: f.path, hash: f.md5, target, connections: 3 });
    expect(run.connections.map((c) => c.verdict)).toEqual(['allow', 'allow', 'allow']);
    expect(run.logs.filter((l) => l.includes('cached=1'))).toHaveLength(2);
    expect(service.decisions.length - before).toBe(1);
  });

  it('renegotiation reuses the keep-alive sideband connection: one connect, three requests', async () => {
    const f = certs.files.bookinfo!;
    const run = await runHarness({
      pem: f.path,
      hash: f.md5,
      target,
      handshakes: 3,
      sets: { egress_authz_cache_s: '0' },
    });
    expect(run.errors).toEqual([]);
    expect(run.lines.filter((l) => / connect connected /.test(l))).toHaveLength(1);
    expect(run.lines.filter((l) => / send sent /.test(l))).toHaveLength(3);
    expect(run.logs.filter((l) => l.includes('decision=allow') && l.includes('status=200'))).toHaveLength(3);
  });

  it('cache off: every connection asks the service', async () => {
    const f = certs.files.apigw!;
    const before = service.decisions.length;
    const run = await runHarness({
      pem: f.path,
      hash: f.md5,
      target,
      connections: 2,
      sets: { egress_authz_cache_s: '0' },
    });
    expect(run.connections.map((c) => c.verdict)).toEqual(['reject', 'reject']);
    expect(service.decisions.length - before).toBe(2);
  });
});

describe('the shipped iRule fails closed', () => {
  it('service down (closed port) → reject within the connect timeout', async () => {
    const f = certs.files.bookinfo!;
    const run = await runHarness({ pem: f.path, hash: f.md5, target: `127.0.0.1:${closedPort}` });
    expectRejected(run);
    expect(run.connections[0]!.ms).toBeLessThan(300 + 200);
    expect(run.logs[0]).toContain('reason="egress-authz unavailable: connect');
  });

  it('service accepts but never answers → reject after the answer timeout', async () => {
    const f = certs.files.bookinfo!;
    const run = await runHarness({
      pem: f.path,
      hash: f.md5,
      target: `127.0.0.1:${slow.port}`,
      sets: { egress_authz_answer_timeout_ms: '400' },
    });
    expectRejected(run);
    expect(run.connections[0]!.ms).toBeGreaterThanOrEqual(390);
    expect(run.connections[0]!.ms).toBeLessThan(400 + 300);
    expect(run.logs[0]).toContain('answer timeout');
  });

  it('garbage answer → reject', async () => {
    const f = certs.files.bookinfo!;
    const run = await runHarness({ pem: f.path, hash: f.md5, target: `127.0.0.1:${garbage.port}` });
    expectRejected(run);
  });

  it('client-ssl verification failed → reject without asking the service', async () => {
    const f = certs.files.bookinfo!;
    const before = service.decisions.length;
    const run = await runHarness({ pem: f.path, hash: f.md5, target, verify: 19 });
    expectRejected(run);
    expect(run.logs[0]).toContain('no verified client certificate');
    expect(service.decisions.length).toBe(before);
  });

  it('the harness catches an iRule changed to fail open', async () => {
    // Mutant: on any sideband failure, carry on as if allowed, through a fallback pool.
    const source = readFileSync(IRULE, 'utf8');
    const mutated = source.replace(
      /if \{ \$failure ne "" \} \{\n(\s+)set decision "deny"\n\s+set pool ""/,
      'if { $failure ne "" } {\n$1set decision "allow"\n$1set pool "fallback_snat"',
    );
    expect(mutated).not.toBe(source);
    const path = join(certs.dir, 'fail-open.irule.tcl');
    writeFileSync(path, mutated);
    const f = certs.files.bookinfo!;
    const run = await runHarness({ irule: path, pem: f.path, hash: f.md5, target: `127.0.0.1:${closedPort}` });
    expect(() => expectRejected(run)).toThrow();
  });
});

// Issue 11, findings 2 and 3: the iRule's cache and its SNAT on an allow.
describe('the shipped iRule reuses an answer only for the same question, and never releases unSNATed', () => {
  const policies: Record<string, TestService> = {};
  let dir = '';

  async function serviceWith(rego: string): Promise<TestService> {
    const folder = mkdtempSync(join(dir, 'policy-'));
    writeFileSync(join(folder, 'policy.rego'), `package egress.authz\n\n${rego}\n`);
    return startTestService({ policy: await loadPolicy(folder) });
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egress-irule-policies-'));
    [policies.internetOnly, policies.noPool, policies.headers] = await Promise.all([
      // bookinfo may leave through /Common/vs_internet only
      serviceWith(`default decision := {"allow": false, "snat_pool": "", "reason": "not through vs_internet"}
decision := {"allow": true, "snat_pool": "bookinfo_snat", "reason": "bookinfo via vs_internet"} if {
	input.identity.namespace == "bookinfo"
	input.sideband.virtual_server == "/Common/vs_internet"
}`),
      // opa-envoy-plugin's boolean form: an allow that names no pool
      serviceWith(`default decision := false
decision if input.identity.namespace == "bookinfo"`),
      // reads a request header, which the iRule's cache key does not cover: its answers must not be reused
      serviceWith(`default decision := {"allow": false, "snat_pool": "", "reason": "no"}
decision := {"allow": true, "snat_pool": "bookinfo_snat", "reason": "yes"} if {
	input.identity.namespace == "bookinfo"
	input.attributes.request.http.headers["content-type"] != ""
}`),
    ]);
  }, 60_000);

  afterAll(async () => {
    await Promise.all(Object.values(policies).map((p) => p.close(100)));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const addressOf = (s: TestService) => `127.0.0.1:${s.httpPort}`;

  it('an allow on /Common/vs_internet is not reused on /Common/vs_partner (one connection per virtual server)', async () => {
    const f = certs.files.bookinfo!;
    const run = await runHarness({
      pem: f.path,
      hash: f.md5,
      target: addressOf(policies.internetOnly!),
      connections: 3,
      virtuals: ['/Common/vs_internet', '/Common/vs_partner', '/Common/vs_internet'],
    });
    expect(run.errors).toEqual([]);
    expect(run.connections.map((c) => c.verdict)).toEqual(['allow', 'reject', 'allow']);
    expect(run.logs[1]).toContain('cached=0');
    // The third asks nothing: the first answer, for the same virtual server, is reused.
    expect(run.logs[2]).toContain('cached=1');
  });

  it('the client address is part of the key as well', async () => {
    const f = certs.files.bookinfo!;
    const before = service.decisions.length;
    const run = await runHarness({
      pem: f.path,
      hash: f.md5,
      target,
      connections: 3,
      clients: ['10.1.1.10', '10.1.1.11'],
    });
    expect(run.connections.map((c) => c.verdict)).toEqual(['allow', 'allow', 'allow']);
    expect(run.logs.map((l) => /cached=(\d)/.exec(l)![1])).toEqual(['0', '0', '1']);
    expect(service.decisions.length - before).toBe(2);
  });

  it('obeys X-Egress-Cache-Ttl: 0 from a policy that reads more than the cache key covers (every connection asks)', async () => {
    const f = certs.files.bookinfo!;
    const s = policies.headers!;
    const before = s.decisions.length;
    const run = await runHarness({ pem: f.path, hash: f.md5, target: addressOf(s), connections: 3 });
    expect(
      run.connections.map((c) => c.verdict),
      run.logs.join('\n'),
    ).toEqual(['allow', 'allow', 'allow']);
    expect(run.logs.filter((l) => l.includes('cached=1'))).toHaveLength(0);
    expect(s.decisions.length - before).toBe(3);
  });

  it('an allow without a SNAT pool is rejected, with one log line saying why', async () => {
    const f = certs.files.bookinfo!;
    const run = await runHarness({ pem: f.path, hash: f.md5, target: addressOf(policies.noPool!), connections: 2 });
    expectRejected(run);
    expect(run.connections.map((c) => c.verdict)).toEqual(['reject', 'reject']);
    expect(run.logs).toHaveLength(2);
    expect(run.logs[0]).toMatch(/decision=deny .*status=200 .*reason="allow without a snat pool/);
    expect(run.logs.every((l) => l.includes('cached=0'))).toBe(true);
  });
});
