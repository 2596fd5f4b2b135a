// A real bundle server: nginx (Debian's) on 127.0.0.1 serves a signed bundle over TLS, requiring a
// client certificate and a bearer token; `serve` (the built bin) polls it with --verification-key,
// --policy-bearer-token-file, --policy-ca and --policy-client-cert/--policy-client-key. A new signed
// bundle is taken; an unsigned one and one signed by another key are refused while the last good
// keeps serving. nginx and serve are started and stopped here.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { BOOKINFO, policyVariant, replaceFile, snatPool, waitFor } from '../lifecycle/support.js';
import { check, checkClient, checkRequest } from '../support/service.js';
import { makeTlsFiles, type TlsFiles } from './support.js';
import { spawnServe, type ServeProcess } from '../hardening/support.js';

const run = promisify(execFile);
const BIN = join(import.meta.dirname, '..', '..', 'dist', 'cli.js');

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

describe('serve against nginx serving signed bundles with TLS client auth and a bearer token', () => {
  const root = mkdtempSync(join(tmpdir(), 'nginx-bundles-'));
  const www = join(root, 'www');
  const token = randomBytes(24).toString('base64url');
  let tls: TlsFiles;
  let nginx: ChildProcess | undefined;
  let serve: ServeProcess | undefined;
  let url: string;
  const keys = { priv: join(root, 'sign.pem'), pub: join(root, 'verify.pem'), other: join(root, 'other.pem') };

  const build = async (name: string, pool: string, revision: string, signingKey?: string) => {
    const out = join(root, `${name}.tar.gz`);
    const sign = signingKey ? ['--signing-key', signingKey, '--signing-alg', 'ES256'] : [];
    await run('node', [
      BIN,
      'build',
      '--revision',
      revision,
      ...sign,
      '--out',
      out,
      policyVariant(root, name, { pool }),
    ]);
    return readFileSync(out);
  };

  beforeAll(async () => {
    tls = makeTlsFiles(join(root, 'tls'));
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(keys.priv, pair.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    writeFileSync(keys.pub, pair.publicKey.export({ type: 'spki', format: 'pem' }));
    writeFileSync(
      keys.other,
      generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }),
    );
    mkdirSync(www);
    mkdirSync(join(root, 'tmp'));
    writeFileSync(join(www, 'bundle.tar.gz'), await build('a', 'pool_a', 'signed-a', keys.priv));
    writeFileSync(join(root, 'token'), `${token}\n`);

    const port = await freePort();
    url = `https://127.0.0.1:${port}/bundle.tar.gz`;
    const t = (n: string) => join(root, 'tmp', n);
    writeFileSync(
      join(root, 'nginx.conf'),
      `daemon off;
master_process off;
worker_processes 1;
pid ${join(root, 'nginx.pid')};
error_log ${join(root, 'error.log')} warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path ${t('body')}; proxy_temp_path ${t('proxy')}; fastcgi_temp_path ${t('fastcgi')};
  uwsgi_temp_path ${t('uwsgi')}; scgi_temp_path ${t('scgi')};
  types { application/gzip gz; }
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${tls.serverCert};
    ssl_certificate_key ${tls.serverKey};
    ssl_client_certificate ${tls.ca};
    ssl_verify_client on;
    root ${www};
    location / {
      if ($http_authorization != "Bearer ${token}") { return 401; }
    }
  }
}
`,
    );
    nginx = spawn('nginx', ['-p', root, '-e', join(root, 'error.log'), '-c', join(root, 'nginx.conf')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let nginxErr = '';
    nginx.stderr!.on('data', (c: Buffer) => void (nginxErr += c.toString()));
    // nginx is up when it answers (401: no token, no client certificate: 400)
    await waitFor(
      async () => {
        if (nginx!.exitCode !== null) throw new Error(`nginx exited: ${nginxErr}`);
        const r = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', tls.ca, url]).catch(
          () => ({ stdout: '' }),
        );
        return r.stdout === '400';
      },
      10_000,
      'nginx to listen',
    );
  });
  afterAll(async () => {
    await serve?.stop();
    await stop(nginx);
    rmSync(root, { recursive: true, force: true });
  });

  test('nginx refuses a client without the token or the certificate (the premise)', async () => {
    const code = async (args: string[]) =>
      (await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', tls.ca, ...args, url])).stdout;
    const cert = ['--cert', tls.clientCert, '--key', tls.clientKey];
    expect(await code(cert)).toBe('401');
    expect(await code(['-H', `Authorization: Bearer ${token}`])).toBe('400');
    expect(await code([...cert, '-H', `Authorization: Bearer ${token}`])).toBe('200');
  });

  test('serve loads, takes a new signed bundle, refuses unsigned and foreign-signed ones', async () => {
    serve = await spawnServe([
      '--policy',
      url,
      '--policy-poll-interval',
      '300ms',
      '--verification-key',
      keys.pub,
      '--signing-alg',
      'ES256',
      '--policy-bearer-token-file',
      join(root, 'token'),
      '--policy-ca',
      tls.ca,
      '--policy-client-cert',
      tls.clientCert,
      '--policy-client-key',
      tls.clientKey,
    ]);
    const { lines, httpPort, grpcPort } = serve;
    const readyz = async () => {
      const r = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
      return { status: r.status, body: (await r.json()) as Record<string, any> };
    };
    await waitFor(async () => (await readyz()).body.policy_revision === 'signed-a', 10_000, 'the first bundle');
    expect((await readyz()).status).toBe(200);

    const served = join(www, 'bundle.tar.gz');
    replaceFile(served, await build('b', 'pool_b', 'signed-b', keys.priv), 'b');
    await waitFor(async () => (await readyz()).body.policy_revision === 'signed-b', 10_000, 'the signed update');

    for (const [name, bytes, reason] of [
      ['unsigned', await build('c', 'pool_c', 'unsigned-c'), /not signed/],
      ['foreign', await build('d', 'pool_d', 'foreign-d', keys.other), /signature is not valid/],
    ] as const) {
      const before = lines.filter((l) => l.msg === 'policy refused; the last good policy keeps serving').length;
      replaceFile(served, bytes, name);
      await waitFor(
        () => lines.filter((l) => l.msg === 'policy refused; the last good policy keeps serving').length > before,
        10_000,
        `the ${name} bundle to be refused`,
      );
      const refusal = lines.filter((l) => l.msg === 'policy refused; the last good policy keeps serving').at(-1)!;
      expect(JSON.stringify(refusal)).toMatch(reason);
      const ready = await readyz();
      expect(ready.status).toBe(200);
      expect(ready.body.policy_revision).toBe('signed-b');
    }
    // the decisions still come from the last good, signed bundle
    const client = checkClient(grpcPort);
    try {
      expect(snatPool(await check(client, checkRequest({ principal: BOOKINFO })))).toBe('pool_b');
    } finally {
      client.close();
    }
  });
});
