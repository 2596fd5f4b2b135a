// The real server on an ephemeral port, called by a real gRPC client built from Envoy's protos.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadPolicy } from '../../src/lifecycle/bundle-source.js';
import { createCa, workloadSvid, type CertAuthority } from '../support/pki.js';
import {
  check,
  checkClient,
  checkRequest,
  startTestService,
  type CheckClient,
  type TestService,
} from '../support/service.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const NETTOOLS = 'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools';

function header(res: Record<string, any>, name: string): string | undefined {
  const list = (res.okResponse ?? res.deniedResponse)?.headers ?? [];
  return list.find((h: any) => h.header.key === name)?.header.value;
}

describe('ext_authz v3 Check', () => {
  let svc: TestService;
  let client: CheckClient;
  let ca: CertAuthority;

  beforeAll(async () => {
    ca = await createCa();
    svc = await startTestService();
    client = checkClient(svc.grpcPort);
  });
  afterAll(async () => {
    client?.close();
    await svc?.close(1000);
  });

  it('allows bookinfo by principal with its SNAT pool in headers and dynamic metadata', async () => {
    const res = await check(client, checkRequest({ principal: BOOKINFO }));
    expect(res.status.code).toBe(0);
    expect(header(res, 'x-egress-snat-pool')).toBe('bookinfo_snat');
    const id = header(res, 'x-egress-decision-id');
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    // decoded from the wire: proves the Values are not silently empty
    const fields = res.dynamicMetadata.fields;
    expect(fields.snat_pool.stringValue).toBe('bookinfo_snat');
    expect(fields.decision_id.stringValue).toBe(id);
    expect(fields.spiffe_id.stringValue).toBe(BOOKINFO);
    const entry = svc.decisions.find((d) => d.decision_id === id);
    expect(entry).toMatchObject({
      allow: true,
      snat_pool: 'bookinfo_snat',
      spiffe_id: BOOKINFO,
      namespace: 'bookinfo',
      x_request_id: 'req-1',
      caller: 'envoy',
    });
  });

  it('denies sm-apigw-a with PERMISSION_DENIED, 403, a reason body and the decision id', async () => {
    const res = await check(client, checkRequest({ principal: NETTOOLS }));
    expect(res.status.code).toBe(7);
    expect(res.okResponse).toBeUndefined();
    expect(res.deniedResponse.status.code).toBe('Forbidden');
    expect(res.deniedResponse.body).toMatch(/sm-apigw-a/);
    const id = header(res, 'x-egress-decision-id');
    expect(id).toBeTruthy();
    expect(header(res, 'x-egress-snat-pool')).toBeUndefined();
    expect(svc.decisions.find((d) => d.decision_id === id)).toMatchObject({
      allow: false,
      snat_pool: '',
      namespace: 'sm-apigw-a',
    });
  });

  it('takes the identity from the peer certificate Envoy forwards', async () => {
    const svid = await workloadSvid(ca, BOOKINFO, { dns: ['productpage.bookinfo.svc'] });
    const res = await check(client, checkRequest({ certificatePem: svid.certPem }));
    expect(res.status.code).toBe(0);
    expect(header(res, 'x-egress-snat-pool')).toBe('bookinfo_snat');
    const entry = svc.decisions.at(-1)!;
    expect(JSON.stringify(entry)).not.toContain('BEGIN CERTIFICATE');
  });

  it('denies a certificate and a principal that name different identities', async () => {
    const svid = await workloadSvid(ca, NETTOOLS);
    const res = await check(client, checkRequest({ certificatePem: svid.certPem, principal: BOOKINFO }));
    expect(res.status.code).toBe(7);
    expect(res.deniedResponse.body).toMatch(/differ/);
  });

  it('denies a request without identity, a malformed certificate, an X.509 subject as principal', async () => {
    for (const req of [
      checkRequest({}),
      checkRequest({ certificatePem: '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n' }),
      { attributes: { source: { certificate: '%E0%A4%A' } } },
      checkRequest({ principal: 'CN=productpage,O=bookinfo' }),
      {},
    ]) {
      const res = await check(client, req);
      expect(res.status.code).toBe(7);
      expect(res.deniedResponse.body.trim().length).toBeGreaterThan(0);
      expect(header(res, 'x-egress-decision-id')).toBeTruthy();
    }
  });

  it('denies look-alikes of bookinfo: never a gRPC error, never an allow', async () => {
    const lookalikes = [
      'spiffe://cluster.local/ns/bookinfo-evil/sa/x',
      'spiffe://cluster.local/ns/bookinfoo/sa/x',
      'spiffe://cluster.local.evil/ns/bookinfo/sa/x',
      'spiffe://evil.local/ns/bookinfo/sa/x',
      'spiffe://Cluster.local/ns/bookinfo/sa/x',
      'spiffe://cluster.local/ns/bookinfo/sa/x/../../sm-apigw-a',
      'spiffe://cluster.local/ns/bookinfo/sa/x?y',
      'spiffe://cluster.local/ns/BookInfo/sa/x',
      'spiffe://cluster.local:443/ns/bookinfo/sa/x',
      'spiffe://cluster.local/ns/%62ookinfo/sa/x',
      ' spiffe://cluster.local/ns/bookinfo/sa/x',
      'spiffe://cluster.local/ns/bookinfo/sa/x\n',
    ];
    for (const principal of lookalikes) {
      const res = await check(client, checkRequest({ principal }));
      expect(res.status.code, principal).toBe(7);
    }
  });

  it('ignores x-forwarded-client-cert unless the operator trusts it', async () => {
    const xfcc = `By=spiffe://cluster.local/ns/egress/sa/gw;URI=${BOOKINFO}`;
    const res = await check(client, checkRequest({ headers: { 'x-forwarded-client-cert': xfcc } }));
    expect(res.status.code).toBe(7);

    const trusting = await startTestService({ trustedIdentityHeader: 'x-forwarded-client-cert' });
    const c2 = checkClient(trusting.grpcPort);
    try {
      const ok = await check(c2, checkRequest({ headers: { 'x-forwarded-client-cert': xfcc } }));
      expect(ok.status.code).toBe(0);
      // even when trusted, the header must agree with the peer the verifier saw
      const bad = await check(c2, checkRequest({ principal: NETTOOLS, headers: { 'x-forwarded-client-cert': xfcc } }));
      expect(bad.status.code).toBe(7);
    } finally {
      c2.close();
      await trusting.close(500);
    }
  });
});

describe('policy failures fail closed', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'egress-authz-policy-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('a policy that errors at evaluation denies, logged at error level', async () => {
    // two complete definitions of `decision` with different values: a runtime conflict error in OPA
    writeFileSync(
      join(dir, 'broken.rego'),
      `package egress.authz\n\ndecision := {"allow": true, "snat_pool": "bookinfo_snat", "reason": "a"} if input.identity.namespace == "bookinfo"\n\ndecision := {"allow": false, "snat_pool": "", "reason": "b"} if input.identity.trust_domain == "cluster.local"\n`,
    );
    const svc = await startTestService({ policy: await loadPolicy(dir) });
    const client = checkClient(svc.grpcPort);
    try {
      const res = await check(client, checkRequest({ principal: BOOKINFO }));
      expect(res.status.code).toBe(7);
      expect(res.deniedResponse.body).toMatch(/policy error/);
      const line = svc.logLines.find((l) => l.msg === 'decision' && l.policy_error);
      expect(line?.level).toBe(50);
    } finally {
      client.close();
      await svc.close(500);
    }
  });

  it('an undefined policy result denies', async () => {
    writeFileSync(
      join(dir, 'broken.rego'),
      `package egress.authz\n\ndecision := {"allow": true, "snat_pool": "p", "reason": "r"} if input.never\n`,
    );
    const svc = await startTestService({ policy: await loadPolicy(dir) });
    const client = checkClient(svc.grpcPort);
    try {
      const res = await check(client, checkRequest({ principal: BOOKINFO }));
      expect(res.status.code).toBe(7);
      expect(res.deniedResponse.body).toMatch(/undefined/);
    } finally {
      client.close();
      await svc.close(500);
    }
  });
});

describe('health endpoints', () => {
  it('/healthz and /readyz answer with the policy revision', async () => {
    const svc = await startTestService();
    try {
      const live = await fetch(`http://127.0.0.1:${svc.httpPort}/healthz`);
      expect(live.status).toBe(200);
      const ready = await fetch(`http://127.0.0.1:${svc.httpPort}/readyz`);
      expect(ready.status).toBe(200);
      expect(((await ready.json()) as { policy_revision: string }).policy_revision).toBe(
        svc.policies.current!.revision,
      );
      svc.policies.current = undefined;
      expect((await fetch(`http://127.0.0.1:${svc.httpPort}/readyz`)).status).toBe(503);
    } finally {
      await svc.close(500);
    }
  });
});

describe('an answer that cannot be encoded', () => {
  it('is a deny, and the server keeps answering', async () => {
    const { createGrpcServer, bindGrpcServer } = await import('../../src/transport/grpc-server.js');
    const { decide } = await import('../../src/decision/decision.js');
    // A decision of the wrong shape (a bug below the transport): encoding it throws inside the answer.
    const broken = { ...decide({ caller: 'envoy', identity: null, destination: { host: '' } }, undefined) };
    (broken as unknown as { reason: unknown }).reason = Symbol('not a string');
    const errors: unknown[] = [];
    let calls = 0;
    const server = createGrpcServer({
      authorizer: {
        checkEnvoy: () =>
          calls++ === 0 ? broken : decide({ caller: 'envoy', identity: null, destination: { host: '' } }, undefined),
      } as never,
      onInternalError: (err) => errors.push(err),
    });
    const port = await bindGrpcServer(server, '127.0.0.1:0');
    const client = checkClient(port);
    try {
      const first = await check(client, checkRequest({ principal: BOOKINFO }));
      expect(first.status.code).toBe(7);
      expect(errors).toHaveLength(1);
      const second = await check(client, checkRequest({ principal: BOOKINFO }));
      expect(second.status.code).toBe(7);
    } finally {
      client.close();
      server.forceShutdown();
    }
  });
});

describe('--check-transport', () => {
  it('grpc-js: grpc-js answers every Check, with the same decision; the serving log says which path answers', async () => {
    const { checksAnsweredByGrpcJs } = await import('../../src/transport/grpc-server.js');
    for (const transport of ['stream', 'grpc-js'] as const) {
      const svc = await startTestService({ checkTransport: transport });
      const client = checkClient(svc.grpcPort);
      try {
        const before = checksAnsweredByGrpcJs();
        const res = await check(client, checkRequest({ principal: BOOKINFO }));
        expect(res.status.code).toBe(0);
        expect(header(res, 'x-egress-snat-pool')).toBe('bookinfo_snat');
        expect(checksAnsweredByGrpcJs() - before).toBe(transport === 'grpc-js' ? 1 : 0);
        expect(svc.logLines.find((l) => l.msg === 'egress-authz serving')?.check_transport).toBe(transport);
      } finally {
        client.close();
        await svc.close(500);
      }
    }
  });
});

describe('a server bound to two addresses', () => {
  it('answers Checks on the stream path on both, and grpc.health.v1 through grpc-js', async () => {
    const grpc = await import('@grpc/grpc-js');
    const { createGrpcServer, bindGrpcServer, checkTransportOf, checksAnsweredByGrpcJs } =
      await import('../../src/transport/grpc-server.js');
    const { addGrpcHealth } = await import('../../src/transport/grpc-health.js');
    const { decide } = await import('../../src/decision/decision.js');
    const server = createGrpcServer({
      authorizer: {
        checkEnvoy: () => decide({ caller: 'envoy', identity: null, destination: { host: '' } }, undefined),
      } as never,
    });
    addGrpcHealth(server, () => true).shutdown();
    const ports = [await bindGrpcServer(server, '127.0.0.1:0'), await bindGrpcServer(server, '127.0.0.1:0')];
    expect(checkTransportOf(server)).toBe('stream');
    const before = checksAnsweredByGrpcJs();
    try {
      for (const port of ports) {
        const client = checkClient(port);
        try {
          expect((await check(client, checkRequest({ principal: BOOKINFO }))).status.code).toBe(7);
        } finally {
          client.close();
        }
        // Not a Check: grpc-js answers it (NOT_SERVING: the health above was shut down).
        const health = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
        const status = await new Promise<Buffer>((resolve, reject) =>
          health.makeUnaryRequest(
            '/grpc.health.v1.Health/Check',
            (b: Buffer) => b,
            (b: Buffer) => b,
            Buffer.alloc(0),
            (err, res) => (err ? reject(err) : resolve(res!)),
          ),
        );
        health.close();
        expect([...status]).toEqual([0x08, 0x02]); // status: NOT_SERVING
      }
      expect(checksAnsweredByGrpcJs()).toBe(before);
    } finally {
      server.forceShutdown();
    }
  });
});
