// The CLI as a user runs it: the built bin (npm test builds first), as a child process.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, workloadSvid } from '../support/pki.js';

const run = promisify(execFile);
const BIN = join(import.meta.dirname, '..', '..', 'dist', 'cli.js');

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('node', [BIN, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

describe('egress-authz eval', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'egress-authz-cli-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('allows bookinfo with bookinfo_snat (--spiffe-id)', async () => {
    const r = await cli('eval', '--spiffe-id', 'spiffe://cluster.local/ns/bookinfo/sa/default');
    expect(r.code).toBe(0);
    const d = JSON.parse(r.stdout);
    expect(d).toMatchObject({
      allow: true,
      snat_pool: 'bookinfo_snat',
      spiffe_id: 'spiffe://cluster.local/ns/bookinfo/sa/default',
    });
    expect(d.decision_id).toBeTruthy();
  });

  it('denies sm-apigw-a with a reason', async () => {
    const d = JSON.parse((await cli('eval', '--spiffe-id', 'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools')).stdout);
    expect(d).toMatchObject({ allow: false, snat_pool: '' });
    expect(d.reason).toMatch(/sm-apigw-a/);
  });

  it('validates a certificate file as an X.509-SVID (--cert)', async () => {
    const ca = await createCa();
    const good = await workloadSvid(ca, 'spiffe://cluster.local/ns/bookinfo/sa/productpage');
    const ca2 = await workloadSvid(ca, 'spiffe://cluster.local/ns/bookinfo/sa/productpage', { ca: true });
    writeFileSync(join(dir, 'good.pem'), good.certPem);
    writeFileSync(join(dir, 'ca.pem'), ca2.certPem);
    expect(JSON.parse((await cli('eval', '--cert', join(dir, 'good.pem'))).stdout)).toMatchObject({
      allow: true,
      snat_pool: 'bookinfo_snat',
    });
    const bad = JSON.parse((await cli('eval', '--cert', join(dir, 'ca.pem'))).stdout);
    expect(bad.allow).toBe(false);
    expect(bad.reason).toMatch(/CA/i);
  });

  it('recomputes identity from an input document (--input)', async () => {
    const input = {
      attributes: {
        source: { principal: 'spiffe://cluster.local/ns/bookinfo/sa/ratings' },
        request: { http: { host: 'www.example.com:443' } },
      },
      identity: { spiffe_id: 'forged', namespace: 'bookinfo' },
    };
    writeFileSync(join(dir, 'input.json'), JSON.stringify(input));
    expect(JSON.parse((await cli('eval', '--input', join(dir, 'input.json'))).stdout)).toMatchObject({
      allow: true,
      spiffe_id: 'spiffe://cluster.local/ns/bookinfo/sa/ratings',
    });
    writeFileSync(
      join(dir, 'forged.json'),
      JSON.stringify({
        identity: { spiffe_id: BOOKINFO_FORGED, namespace: 'bookinfo', trust_domain: 'cluster.local' },
      }),
    );
    expect(JSON.parse((await cli('eval', '--input', join(dir, 'forged.json'))).stdout).allow).toBe(false);
  });

  it('rejects bad usage with exit code 2 and a message', async () => {
    const none = await cli('eval');
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/exactly one of/);
    const unknown = await cli('frobnicate');
    expect(unknown.code).toBe(2);
    const missing = await cli('eval', '--cert', join(dir, 'nope.pem'));
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/nope\.pem/);
  });
});

const BOOKINFO_FORGED = 'spiffe://cluster.local/ns/bookinfo/sa/forged';

describe('egress-authz test', () => {
  it('runs the default policy cases and opa test, reporting like a test runner', async () => {
    const r = await cli('test');
    expect(r.stdout).toMatch(/\d+ passed, 0 failed/);
    expect(r.code).toBe(0);
  });
});
