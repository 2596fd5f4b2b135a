// mTLS on both listeners with real certificates made at test time: who may ask, who is refused before
// any decision, and certificate rotation while a client keeps calling.
import { matchesAny } from '../../src/identity/match.js';
import { writeFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseSpiffeId } from '../../src/identity/spiffe-id.js';
import { CertificateFiles, parseAllowedCaller, readTlsMaterial, type CallerPattern } from '../../src/transport/tls.js';
import { workloadSvid } from '../support/pki.js';
import {
  check,
  checkClient,
  checkRequest,
  startTestService,
  type CheckClient,
  type TestService,
} from '../support/service.js';
import { ALLOWED_CALLERS, grpcTls, httpsRequest, makeMtlsPki, type MtlsPki } from './support.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const FUZZ_RUNS = Number(process.env.FUZZ_RUNS ?? 300);

function patterns(entries: string[]): CallerPattern[] {
  return entries.map((e) => {
    const p = parseAllowedCaller(e);
    if (!p.ok) throw new Error(p.reason);
    return p.value;
  });
}

function allowed(id: string, entries: string[]): boolean {
  const parsed = parseSpiffeId(id);
  if (!parsed.ok) throw new Error(parsed.reason);
  return matchesAny(parsed.value, patterns(entries));
}

describe('--allowed-caller patterns', () => {
  it('match exact IDs and subtrees on segment boundaries only', () => {
    expect(allowed('spiffe://cluster.local/ns/bookinfo', ['spiffe://cluster.local/ns/bookinfo/*'])).toBe(true);
    expect(allowed('spiffe://cluster.local/ns/bookinfo/sa/x', ['spiffe://cluster.local/ns/bookinfo/*'])).toBe(true);
    expect(allowed('spiffe://cluster.local/ns/bookinfo-evil/sa/x', ['spiffe://cluster.local/ns/bookinfo/*'])).toBe(
      false,
    );
    expect(allowed('spiffe://cluster.local/ns/bookinfo-evil', ['spiffe://cluster.local/ns/bookinfo/*'])).toBe(false);
    expect(allowed('spiffe://cluster.local/ns/bookinfo/sa/x', ['spiffe://cluster.local/ns/bookinfo'])).toBe(false);
    expect(allowed('spiffe://cluster.local/ns/bookinfo', ['spiffe://cluster.local/ns/bookinfo'])).toBe(true);
    expect(allowed('spiffe://cluster.local/anything/at/all', ['spiffe://cluster.local/*'])).toBe(true);
    expect(allowed('spiffe://cluster.local.evil/ns/bookinfo', ['spiffe://cluster.local/*'])).toBe(false);
    expect(allowed('spiffe://other.domain/ns/bookinfo', ['spiffe://cluster.local/ns/bookinfo/*'])).toBe(false);
  });

  it('refuse entries that are not SPIFFE IDs (no wildcards inside, no trailing slash, canonical form)', () => {
    for (const bad of [
      '*',
      'spiffe://cluster.local/ns/*/sa/x',
      'spiffe://cluster.local/ns/',
      'SPIFFE://cluster.local/ns/a',
      'spiffe://cluster.local/ns/bookinfo*',
      'ns/bookinfo',
      '',
    ]) {
      expect(parseAllowedCaller(bad).ok, bad).toBe(false);
    }
  });

  it('property: a subtree pattern matches exactly the IDs whose segments start with its segments', () => {
    const segment = fc
      .string({ unit: fc.constantFrom('a', 'b', '-', '.', '_'), minLength: 1, maxLength: 3 })
      .filter((s) => s !== '.' && s !== '..');
    const path = fc.array(segment, { maxLength: 4 });
    fc.assert(
      fc.property(path, path, fc.boolean(), (base, candidate, subtree) => {
        const baseId = `spiffe://cluster.local${base.map((s) => `/${s}`).join('')}`;
        const id = `spiffe://cluster.local${candidate.map((s) => `/${s}`).join('')}`;
        const prefix = base.length <= candidate.length && base.every((s, i) => candidate[i] === s);
        const expected = subtree ? prefix : base.length === candidate.length && prefix;
        expect(allowed(id, [subtree ? `${baseId}/*` : baseId])).toBe(expected);
      }),
      { numRuns: FUZZ_RUNS },
    );
  });
});

describe('TLS files', () => {
  let pki: MtlsPki;
  beforeAll(async () => {
    pki = await makeMtlsPki();
  });
  afterAll(() => pki?.cleanup());

  it('refuse a key that does not match the certificate, and keep the previous pair on a bad rotation', () => {
    const files = { certFile: pki.files.cert, keyFile: pki.files.key, clientCaFile: pki.files.clientCa };
    expect(readTlsMaterial(files).ok).toBe(true);
    const errors: string[] = [];
    const watched = new CertificateFiles(files, { pollMs: 60_000, onError: (r) => errors.push(r) });
    try {
      const before = watched.current.cert;
      writeFileSync(pki.files.key, pki.gateway.keyPem); // the wrong key
      expect(readTlsMaterial(files)).toMatchObject({ ok: false });
      expect(watched.reload()).toBe(false);
      expect(errors.at(-1)).toMatch(/usable/);
      expect(watched.current.cert.equals(before)).toBe(true);
      writeFileSync(pki.files.cert, 'not a certificate');
      expect(watched.reload()).toBe(false);
      expect(watched.current.cert.equals(before)).toBe(true);
    } finally {
      watched.close();
      writeFileSync(pki.files.key, pki.server.keyPem, { mode: 0o600 });
      writeFileSync(pki.files.cert, pki.server.certPem);
    }
  });
});

describe('mTLS on both listeners', () => {
  let pki: MtlsPki;
  let files: CertificateFiles;
  let svc: TestService;
  let workload: string;
  const reloads: number[] = [];

  beforeAll(async () => {
    pki = await makeMtlsPki();
    files = new CertificateFiles(
      { certFile: pki.files.cert, keyFile: pki.files.key, clientCaFile: pki.files.clientCa },
      { pollMs: 250, onReload: () => reloads.push(Date.now()) },
    );
    svc = await startTestService({
      tls: { files, allowedCallers: patterns(ALLOWED_CALLERS) },
      healthAddr: '127.0.0.1:0',
    });
    workload = (await workloadSvid(pki.ca, BOOKINFO)).certPem;
  });
  afterAll(async () => {
    await svc?.close(1000);
    files?.close();
    pki?.cleanup();
  });

  function grpcClient(client: MtlsPki['gateway'] | undefined, seen: string[] = []): CheckClient {
    const { creds, options } = grpcTls(pki, client, seen);
    return checkClient(svc.grpcPort, creds, options);
  }

  async function grpcOutcome(
    client: MtlsPki['gateway'] | undefined,
  ): Promise<{ decided: boolean; code?: number; details?: string }> {
    const c = grpcClient(client);
    try {
      const res = await check(c, checkRequest({ principal: BOOKINFO }));
      return { decided: res.status !== undefined };
    } catch (err) {
      const e = err as grpc.ServiceError;
      return { decided: false, code: e.code, details: e.details };
    } finally {
      c.close();
    }
  }

  it('the plain probe listener (--health-addr) answers health and metrics, and never a decision', async () => {
    const base = `http://127.0.0.1:${svc.healthPort}`;
    const ready = await fetch(`${base}/readyz`);
    expect(ready.status).toBe(200);
    expect(((await ready.json()) as { policy_revision: string }).policy_revision).toBe(svc.policies.current!.revision);
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect(await (await fetch(`${base}/metrics`)).text()).toMatch(/egress_authz_checks_total/);
    const before = svc.decisions.length;
    const sideband = await fetch(`${base}/v1/sideband`, {
      method: 'POST',
      body: workload,
      headers: { 'content-type': 'application/x-pem-file' },
    });
    expect(sideband.status).toBe(404);
    expect(svc.decisions.length).toBe(before);
  });

  it('gRPC: an allowed caller gets decisions (exact ID and subtree pattern)', async () => {
    for (const client of [pki.gateway, pki.bigip]) {
      const c = grpcClient(client);
      const res = await check(c, checkRequest({ principal: BOOKINFO }));
      c.close();
      expect(res.status.code).toBe(0);
    }
  });

  it('gRPC: no client certificate, or one from another CA, fails the handshake; no decision is made', async () => {
    const before = svc.decisions.length;
    for (const client of [undefined, pki.stranger]) {
      const outcome = await grpcOutcome(client);
      expect(outcome.decided).toBe(false);
      expect(outcome.code).toBe(grpc.status.UNAVAILABLE);
    }
    expect(svc.decisions.length).toBe(before);
  });

  it('gRPC: a verified caller whose SPIFFE ID is not allowed gets PERMISSION_DENIED before any decision', async () => {
    const before = svc.decisions.length;
    const outcome = await grpcOutcome(pki.evil);
    expect(outcome).toMatchObject({ decided: false, code: grpc.status.PERMISSION_DENIED });
    expect(outcome.details).toContain('istio-system-evil');
    expect(svc.decisions.length).toBe(before);
    expect(svc.logLines.some((l) => l.msg === 'caller refused before any decision')).toBe(true);
  });

  it('gRPC: a plain-text client gets no answer', async () => {
    const c = checkClient(svc.grpcPort);
    await expect(check(c, checkRequest({ principal: BOOKINFO }))).rejects.toMatchObject({
      code: grpc.status.UNAVAILABLE,
    });
    c.close();
  });

  it('HTTPS sideband: allowed callers get decisions; not allowed get 403 before any decision; no certificate fails TLS', async () => {
    const sideband = { method: 'POST', path: '/v1/sideband', body: workload };
    const ok = await httpsRequest(svc.httpPort, pki, pki.bigip, sideband);
    expect(ok.status).toBe(200);
    expect(ok.headers['x-egress-snat-pool']).toBe('bookinfo_snat');
    const before = svc.decisions.length;
    const evil = await httpsRequest(svc.httpPort, pki, pki.evil, sideband);
    expect(evil.status).toBe(403);
    expect(evil.headers['x-egress-decision']).toBe('deny');
    expect(evil.headers['x-egress-decision-id']).toBeUndefined();
    expect(evil.body).toContain('not allowed');
    await expect(httpsRequest(svc.httpPort, pki, undefined, sideband)).rejects.toThrow();
    await expect(httpsRequest(svc.httpPort, pki, pki.stranger, sideband)).rejects.toThrow();
    expect(svc.decisions.length).toBe(before);
    // Health needs a verified client certificate, not an allowed caller ID.
    expect((await httpsRequest(svc.httpPort, pki, pki.evil, { path: '/readyz' })).status).toBe(200);
  });

  it('picks up a rotated server certificate for new connections without dropping a calling client', async () => {
    const seenByLongLived: string[] = [];
    const longLived = grpcClient(pki.gateway, seenByLongLived);
    await check(longLived, checkRequest({ principal: BOOKINFO }));
    const original = seenByLongLived[0];
    expect(original).toBeTruthy();

    let calling = true;
    let calls = 0;
    const failures: unknown[] = [];
    const loop = (async () => {
      while (calling) {
        try {
          await check(longLived, checkRequest({ principal: BOOKINFO }));
          calls++;
        } catch (err) {
          failures.push(err);
        }
      }
    })();

    const reloadsBefore = reloads.length;
    const rotated = await pki.rotateServer();
    const deadline = Date.now() + 5000;
    while (reloads.length === reloadsBefore && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    expect(reloads.length).toBeGreaterThan(reloadsBefore);

    // New connections, on both listeners, see the new certificate.
    const seenByNew: string[] = [];
    const fresh = grpcClient(pki.gateway, seenByNew);
    expect((await check(fresh, checkRequest({ principal: BOOKINFO }))).status.code).toBe(0);
    fresh.close();
    const https = await httpsRequest(svc.httpPort, pki, pki.bigip, { path: '/readyz' });
    const { X509Certificate } = await import('node:crypto');
    const rotatedFingerprint = new X509Certificate(rotated.certPem).fingerprint256;
    expect(seenByNew[0]).toBe(rotatedFingerprint);
    expect(https.serverFingerprint).toBe(rotatedFingerprint);
    expect(rotatedFingerprint).not.toBe(original);

    await new Promise((r) => setTimeout(r, 200));
    calling = false;
    await loop;
    longLived.close();
    // The long-lived connection was never dropped: it handshook once, and every call was answered.
    expect(failures).toEqual([]);
    expect(calls).toBeGreaterThan(10);
    expect(seenByLongLived).toEqual([original]);
  });
});
