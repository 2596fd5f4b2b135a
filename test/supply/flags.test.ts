// The supply-chain flags of serve, eval, test and build: wrong combinations are usage errors before
// anything starts, and a key that does not fit its algorithm is refused at start, not at the first reload.
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, test } from 'vitest';
import { parseServeConfig } from '../../src/service/config.js';

const run = promisify(execFile);
const BIN = join(import.meta.dirname, '..', '..', 'dist', 'cli.js');
const tmp = mkdtempSync(join(tmpdir(), 'supply-flags-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('serve flags', () => {
  test.each<[string, string[], RegExp]>([
    ['credentials without a bundle server', ['--policy-bearer-token-file', 't'], /need an http\(s\) --policy/],
    ['a client certificate without its key', ['--policy', 'https://x/b', '--policy-client-cert', 'c'], /go together/],
    ['an unknown redirect mode', ['--policy-redirects', 'all'], /same-origin, any-host, insecure/],
    ['--scope without a key', ['--scope', 's'], /need --verification-key/],
    ['an unknown algorithm', ['--verification-key', 'k', '--signing-alg', 'none'], /--signing-alg "none"/],
  ])('%s is a usage error', (_name, argv, message) => {
    const r = parseServeConfig(argv);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toMatch(message);
  });

  test('the full set parses into plain data', () => {
    const r = parseServeConfig([
      '--policy',
      'https://bundles.example/b.tar.gz',
      '--verification-key',
      'pub.pem',
      '--verification-key-id',
      'k1',
      '--scope',
      'egress',
      '--policy-bearer-token-file',
      'tok',
      '--policy-ca',
      'ca.pem',
      '--policy-client-cert',
      'c.pem',
      '--policy-client-key',
      'k.pem',
      '--policy-redirects',
      'any-host',
    ]);
    expect(r).toMatchObject({
      ok: true,
      value: {
        verification: { keyFile: 'pub.pem', alg: 'RS256', keyId: 'k1', scope: 'egress' },
        bundleServer: {
          bearerTokenFile: 'tok',
          caFile: 'ca.pem',
          clientCertFile: 'c.pem',
          clientKeyFile: 'k.pem',
          redirects: 'any-host',
        },
      },
    });
  });
});

/** The CLI's exit code and stderr for a command that must fail. */
async function fails(argv: string[]): Promise<{ code: number; stderr: string }> {
  const err = await run('node', [BIN, ...argv]).then(
    () => ({ code: 0, stderr: '' }),
    (e: { code: number; stderr: string }) => e,
  );
  return { code: err.code, stderr: err.stderr };
}
describe('key files', () => {
  const ec = join(tmp, 'ec.pem');
  writeFileSync(
    ec,
    generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }),
  );
  test('serve refuses a key that does not fit --signing-alg, before serving', async () => {
    const err = await fails([
      'serve',
      '--grpc-addr',
      '127.0.0.1:0',
      '--http-addr',
      '127.0.0.1:0',
      '--verification-key',
      ec,
    ]);
    expect(err.code).toBe(2);
    expect(err.stderr).toMatch(/ec prime256v1 key does not fit RS256/);
  });

  test('eval refuses the unsigned embedded policy when a key is given', async () => {
    const err = await fails([
      'eval',
      '--spiffe-id',
      'spiffe://cluster.local/ns/bookinfo/sa/x',
      '--verification-key',
      ec,
      '--signing-alg',
      'ES256',
    ]);
    expect(err.code).toBe(1);
    expect(err.stderr).toMatch(/not signed/);
  });

  test('build refuses a missing signing key file', async () => {
    const err = await fails(['build', '--signing-key', join(tmp, 'none.pem'), '--out', join(tmp, 'b.tar.gz')]);
    expect(err.code).toBe(2);
    expect(err.stderr).toMatch(/--signing-key .*none\.pem/);
  });
});
