// deploy/bigip/make-bigip-cert.sh against a CA made at test time: openssl must accept the result, and so
// must the service's own X.509-SVID validation (through `inspect`).
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inspectCertificate } from '../../src/identity/inspect.js';
import { createCa } from '../support/pki.js';

const SCRIPT = join(import.meta.dirname, '..', '..', 'deploy', 'bigip', 'make-bigip-cert.sh');
let dir: string;

function run(cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) =>
    execFile(cmd, args, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    ),
  );
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'egress-authz-bigip-cert-'));
  const ca = await createCa('Example Org Mesh CA');
  writeFileSync(join(dir, 'ca.pem'), ca.certPem);
  writeFileSync(join(dir, 'ca-key.pem'), ca.keyPem, { mode: 0o600 });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('make-bigip-cert.sh', () => {
  it('makes an X.509-SVID for the service account that openssl and the service both accept', async () => {
    const out = join(dir, 'out');
    const r = await run('bash', [
      SCRIPT,
      '--ca-cert',
      join(dir, 'ca.pem'),
      '--ca-key',
      join(dir, 'ca-key.pem'),
      '--trust-domain',
      'cluster.local',
      '--namespace',
      'bookinfo',
      '--service-account',
      'bigip-proxy',
      '--out-dir',
      out,
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('spiffe://cluster.local/ns/bookinfo/sa/bigip-proxy');
    expect(r.stdout).toContain('tmsh install sys crypto cert');
    const crt = join(out, 'bigip-proxy-svc.crt');
    expect(statSync(join(out, 'bigip-proxy-svc.key')).mode & 0o077).toBe(0);

    const verify = await run('openssl', ['verify', '-CAfile', join(dir, 'ca.pem'), '-purpose', 'sslserver', crt]);
    expect(verify.stdout).toContain(': OK');
    const text = (await run('openssl', ['x509', '-in', crt, '-noout', '-text'])).stdout;
    expect(text).toMatch(
      /Subject Alternative Name: critical\s+URI:spiffe:\/\/cluster\.local\/ns\/bookinfo\/sa\/bigip-proxy\s/,
    );
    expect(text).toMatch(/Key Usage: critical\s+Digital Signature, Key Encipherment/);
    expect(text).toMatch(/TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(text).toMatch(/CA:FALSE/);
    expect(text).toMatch(/Subject: *\n/);

    const report = inspectCertificate(readFileSync(crt, 'utf8'));
    expect(report).toMatchObject({
      valid: true,
      spiffe_id: 'spiffe://cluster.local/ns/bookinfo/sa/bigip-proxy',
      uri_sans: ['spiffe://cluster.local/ns/bookinfo/sa/bigip-proxy'],
      subject: '',
    });
    // the same through the built CLI, as the script's "next steps" tell the operator (npm test builds first)
    const cli = await run('node', [join(import.meta.dirname, '..', '..', 'dist', 'cli.js'), 'inspect', crt]);
    expect(cli.code).toBe(0);
    expect(cli.stdout).toContain('valid X.509-SVID');
    expect(cli.stdout).toContain('spiffe id:  spiffe://cluster.local/ns/bookinfo/sa/bigip-proxy');
    const chain = inspectCertificate(readFileSync(join(out, 'bigip-proxy-svc-chain.crt'), 'utf8'));
    expect(chain.chain_length).toBe(2);
    expect(chain.valid).toBe(true);
  });

  it('refuses a path segment that is not a SPIFFE ID segment', async () => {
    const r = await run('bash', [
      SCRIPT,
      '--ca-cert',
      join(dir, 'ca.pem'),
      '--ca-key',
      join(dir, 'ca-key.pem'),
      '--namespace',
      '..',
      '--out-dir',
      join(dir, 'bad'),
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('invalid path segment');
  });
});

describe('inspectCertificate', () => {
  it('shows why a certificate is not an X.509-SVID, with its facts', async () => {
    const { issue } = await import('../support/pki.js');
    const ca = await createCa();
    const two = await issue({
      issuer: ca,
      uris: ['spiffe://cluster.local/ns/a/sa/x', 'spiffe://cluster.local/ns/b/sa/y'],
    });
    const r = inspectCertificate(two.certPem);
    expect(r.valid).toBe(false);
    expect(r.spiffe_id).toBeUndefined();
    expect(r.reason).toMatch(/URI/i);
    expect(r.uri_sans).toHaveLength(2);
    expect(r.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(inspectCertificate('not a pem')).toMatchObject({ valid: false, chain_length: 0 });
    const path = join(dir, 'two-uris.pem');
    writeFileSync(path, two.certPem);
    const cli = await run('node', [join(import.meta.dirname, '..', '..', 'dist', 'cli.js'), 'inspect', '--json', path]);
    expect(cli.code).toBe(1);
    expect(JSON.parse(cli.stdout)).toMatchObject({
      valid: false,
      uri_sans: ['spiffe://cluster.local/ns/a/sa/x', 'spiffe://cluster.local/ns/b/sa/y'],
    });
  });
});
