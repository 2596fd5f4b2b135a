// grpc.health.v1 agreeing with /readyz, and the limits: message size, check deadline, bounded caches.
import http from 'node:http';
import http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { afterEach, describe, expect, it } from 'vitest';
import type { LoadedPolicy } from '../../src/policy/policy.js';
import { loadAuthorizationService } from '../../src/transport/envoy-protos.js';
import { clearX509SvidCache, parseX509SvidPem, x509SvidCacheStats } from '../../src/identity/x509-svid.js';
import {
  check,
  checkClient,
  checkRequest,
  loadDefaultPolicy,
  slowDefaultPolicy,
  startTestService,
  type TestService,
} from '../support/service.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';

type HealthClient = grpc.Client & {
  check(req: { service: string }, cb: (err: grpc.ServiceError | null, res: { status: string }) => void): void;
  watch(req: { service: string }): grpc.ClientReadableStream<{ status: string }>;
};

function healthClient(port: number): HealthClient {
  const Client = grpc.makeGenericClientConstructor(healthService, 'Health');
  return new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as HealthClient;
}

function healthCheck(c: HealthClient, service: string): Promise<string> {
  return new Promise((resolve, reject) =>
    c.check({ service }, (err, res) => (err ? reject(err) : resolve(res.status))),
  );
}

/**
 * Sends `count` identical Checks as raw HTTP/2 streams written in one go, so they reach the (in-process)
 * server together, as a backlog does; grpc-js' client would start each call on its own turn.
 */
async function checksInOneWrite(port: number, req: unknown, count: number): Promise<Record<string, any>[]> {
  const method = loadAuthorizationService()['Check']!;
  const message = method.requestSerialize(req);
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  message.copy(frame, 5);
  const session = http2.connect(`http://127.0.0.1:${port}`);
  await new Promise<void>((ready, failed) => session.once('connect', () => ready()).once('error', failed));
  const answers = Array.from({ length: count }, () => {
    const stream = session.request({
      ':method': 'POST',
      ':path': method.path,
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    stream.end(frame);
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    return new Promise<Record<string, any>>((done, failed) => {
      stream.once('error', failed);
      stream.once('end', () => {
        const body = Buffer.concat(chunks);
        done(method.responseDeserialize(body.subarray(5)) as Record<string, any>);
      });
    });
  });
  try {
    return await Promise.all(answers);
  } finally {
    session.close();
  }
}

function readyz(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/readyz', agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      })
      .on('error', reject);
  });
}

let svc: TestService | undefined;
afterEach(async () => {
  await svc?.close(500);
  svc = undefined;
});

describe('grpc.health.v1.Health', () => {
  it('Check: SERVING for "" and the ext_authz service while a policy is loaded; NOT_FOUND for others', async () => {
    svc = await startTestService();
    const c = healthClient(svc.grpcPort);
    expect(await healthCheck(c, '')).toBe('SERVING');
    expect(await healthCheck(c, 'envoy.service.auth.v3.Authorization')).toBe('SERVING');
    await expect(healthCheck(c, 'some.other.Service')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    expect(await readyz(svc.httpPort)).toBe(200);

    // No policy: not ready on both ports.
    const policy = svc.policies.current;
    svc.policies.current = undefined;
    expect(await healthCheck(c, '')).toBe('NOT_SERVING');
    expect(await readyz(svc.httpPort)).toBe(503);
    svc.policies.current = policy;
    expect(await healthCheck(c, 'envoy.service.auth.v3.Authorization')).toBe('SERVING');
    c.close();
  });

  it('Watch: streams SERVING, then NOT_SERVING when shutdown starts, and ends so shutdown does not wait on it', async () => {
    svc = await startTestService();
    const c = healthClient(svc.grpcPort);
    const seen: string[] = [];
    const stream = c.watch({ service: 'envoy.service.auth.v3.Authorization' });
    const ended = new Promise<void>((resolve) => {
      stream.on('data', (m: { status: string }) => seen.push(m.status));
      stream.on('end', () => resolve());
      stream.on('error', () => resolve());
    });
    while (seen.length === 0) await new Promise((r) => setTimeout(r, 10));
    expect(seen).toEqual(['SERVING']);
    const started = Date.now();
    await svc.close(5000);
    svc = undefined;
    await ended;
    expect(seen).toEqual(['SERVING', 'NOT_SERVING']);
    expect(Date.now() - started).toBeLessThan(2000);
    c.close();
  });
});

describe('limits', () => {
  it('an oversized CheckRequest gets RESOURCE_EXHAUSTED, and the server keeps answering', async () => {
    svc = await startTestService({ maxReceiveMessageBytes: 8 * 1024 });
    const c = checkClient(svc.grpcPort);
    const big = checkRequest({ principal: BOOKINFO, headers: { 'x-padding': 'a'.repeat(16 * 1024) } });
    await expect(check(c, big)).rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED });
    expect(svc.decisions).toHaveLength(0);
    expect((await check(c, checkRequest({ principal: BOOKINFO }))).status.code).toBe(0);
    c.close();
  });

  it('a check slower than its deadline is answered deny, and logged as that deny', async () => {
    const real = await loadDefaultPolicy();
    const slow: LoadedPolicy = {
      ...real,
      revision: 'slow',
      evaluate(input) {
        const until = performance.now() + 30;
        while (performance.now() < until); // Wasm cannot be interrupted either
        return real.evaluate(input);
      },
    };
    svc = await startTestService({ policy: slow, checkDeadlineMs: 10 });
    const c = checkClient(svc.grpcPort);
    const res = await check(c, checkRequest({ principal: BOOKINFO }));
    expect(res.status.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(res.deniedResponse.body).toMatch(/deadline of 10ms/);
    expect(svc.decisions.at(-1)).toMatchObject({
      allow: false,
      snat_pool: '',
      policy_error: 'check exceeded its deadline of 10ms',
    });
    c.close();
  });

  it('checks that waited past their deadline behind a slow evaluation are denied without evaluating', async () => {
    // A backlog: 8 checks arrive together, each evaluation takes 150 ms, the deadline is 200 ms.
    // Evaluating them all (what kept the service unavailable for tens of seconds under npm run chaos's
    // slow policy) would take 1.2 s and answer the last ones long after Envoy gave up.
    const { policy: slow, evaluations } = await slowDefaultPolicy(150);
    svc = await startTestService({ policy: slow, checkDeadlineMs: 200 });
    const answers = await checksInOneWrite(svc.grpcPort, checkRequest({ principal: BOOKINFO }), 8);
    // The first one or two start within the deadline; every later one is already late when its turn comes.
    expect(evaluations()).toBeLessThanOrEqual(3);
    const late = answers.filter((a) => a.status.code === grpc.status.PERMISSION_DENIED);
    expect(late.length).toBeGreaterThanOrEqual(5);
    for (const a of late) expect(a.deniedResponse.body).toMatch(/deadline of 200ms/);
    const logged = svc.decisions.filter((d) => d.policy_error === 'check exceeded its deadline of 200ms');
    expect(logged).toHaveLength(late.length);
    expect(logged.every((d) => d.policy_revision === 'slow' && d.allow === false)).toBe(true);
  });

  it('the parsed-certificate cache stays bounded whatever callers send', () => {
    clearX509SvidCache();
    for (let i = 0; i < 1500; i++) {
      const body = Buffer.from(`not a certificate ${i}`).toString('base64').replace(/=+$/, '');
      const pem = `-----BEGIN CERTIFICATE-----\n${body.padEnd(Math.ceil(body.length / 4) * 4, 'A')}\n-----END CERTIFICATE-----\n`;
      expect(parseX509SvidPem(pem, new Date()).ok).toBe(false);
    }
    const stats = x509SvidCacheStats();
    expect(stats.entries).toBeGreaterThan(0);
    expect(stats.entries).toBeLessThanOrEqual(stats.maxEntries);
    expect(stats.bytes).toBeLessThanOrEqual(stats.maxBytes);
  });
});
