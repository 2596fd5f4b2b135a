// Finding 8 of issue 14 and bundle server credentials: the bundle client follows redirects only to
// the same origin and never from https to http (unless the operator says otherwise), sends its bearer
// token and client certificate only to the origin they were configured for, and trusts the CA it is
// given. Local HTTP(S) servers on 127.0.0.0/8, started and stopped here.
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { openBundleSource } from '../../src/lifecycle/bundle-source.js';
import type { BundleServerAuth } from '../../src/lifecycle/bundle-http.js';
import { makeTlsFiles, type TlsFiles } from './support.js';

const BODY = Buffer.from('bundle bytes');
const tmp = mkdtempSync(join(tmpdir(), 'bundle-client-'));
let tls: TlsFiles;
const servers: Server[] = [];
/** Authorization headers each server saw */
const seen: Record<string, (string | undefined)[]> = { plain: [], other: [], secure: [] };
let plain: string; // http://127.0.0.1:P
let other: string; // http://127.0.0.2:P (another origin)
let secure: string; // https://127.0.0.1:P, client certificates requested
let mtls: string; // https://127.0.0.1:P, client certificate required

function handler(name: string, redirects: () => Record<string, string>) {
  return (req: IncomingMessage, res: ServerResponse) => {
    seen[name]?.push(req.headers.authorization);
    const to = redirects()[req.url ?? ''];
    if (to) {
      res.writeHead(302, { location: to }).end();
      return;
    }
    if (req.url === '/token' && req.headers.authorization !== 'Bearer s3cret-token') {
      res.writeHead(401).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/gzip', etag: '"v1"' }).end(BODY);
  };
}

async function listen(server: Server, host: string): Promise<number> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return (server.address() as AddressInfo).port;
}

beforeAll(async () => {
  tls = makeTlsFiles(join(tmp, 'tls'));
  const routes = () => ({
    '/same': '/b',
    '/cross': `${other}/b`,
    '/cross-token': `${other}/b`,
    '/down': `${plain}/b`,
    '/loop': '/loop',
    '/file': 'file:///etc/passwd',
  });
  plain = `http://127.0.0.1:${await listen(createServer(handler('plain', routes)), '127.0.0.1')}`;
  other = `http://127.0.0.2:${await listen(createServer(handler('other', routes)), '127.0.0.2')}`;
  const tlsOpts = { cert: readFileSync(tls.serverCert), key: readFileSync(tls.serverKey), ca: readFileSync(tls.ca) };
  secure = `https://127.0.0.1:${await listen(createTlsServer(tlsOpts, handler('secure', routes)), '127.0.0.1')}`;
  const strict = createTlsServer({ ...tlsOpts, requestCert: true, rejectUnauthorized: true }, handler('mtls', routes));
  mtls = `https://127.0.0.1:${await listen(strict, '127.0.0.1')}`;
});
afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  rmSync(tmp, { recursive: true, force: true });
});

async function fetchOnce(url: string, auth?: BundleServerAuth): Promise<string> {
  const source = await openBundleSource(url, { fetchTimeoutMs: 5000, ...(auth ? { auth } : {}) });
  const v = await source.fetch({ force: true });
  return v?.version ?? '';
}

describe('redirects (finding 8)', () => {
  test('same origin: followed', async () => {
    expect(await fetchOnce(`${plain}/same`)).toBe('etag:"v1"');
  });
  test('another origin: refused by default, followed with any-host', async () => {
    await expect(fetchOnce(`${plain}/cross`)).rejects.toThrow(
      /redirect to http:\/\/127\.0\.0\.2:\d+ refused: another origin/,
    );
    expect(await fetchOnce(`${plain}/cross`, { redirects: 'any-host' })).toBe('etag:"v1"');
  });
  test('https to http: refused even with any-host, followed only with insecure', async () => {
    const ca = { caFile: tls.ca };
    await expect(fetchOnce(`${secure}/down`, ca)).rejects.toThrow(/downgrade/);
    await expect(fetchOnce(`${secure}/down`, { ...ca, redirects: 'any-host' })).rejects.toThrow(/downgrade/);
    expect(await fetchOnce(`${secure}/down`, { ...ca, redirects: 'insecure' })).toBe('etag:"v1"');
  });
  test('a redirect loop and a non-http scheme: refused', async () => {
    await expect(fetchOnce(`${plain}/loop`)).rejects.toThrow(/more than 5 redirects/);
    await expect(fetchOnce(`${plain}/file`, { redirects: 'insecure' })).rejects.toThrow(/scheme file:/);
  });
});

describe('bundle server credentials', () => {
  const tokenFile = join(tmp, 'token');
  beforeAll(() => writeFileSync(tokenFile, 's3cret-token\n'));

  test('bearer token from its file (re-read each time); 401 without it', async () => {
    await expect(fetchOnce(`${plain}/token`)).rejects.toThrow(/HTTP 401/);
    expect(await fetchOnce(`${plain}/token`, { bearerTokenFile: tokenFile })).toBe('etag:"v1"');
    writeFileSync(tokenFile, 'rotated');
    await expect(fetchOnce(`${plain}/token`, { bearerTokenFile: tokenFile })).rejects.toThrow(/HTTP 401/);
    writeFileSync(tokenFile, 's3cret-token\n');
  });

  test('the token is not sent to another origin a redirect leads to', async () => {
    seen.other = [];
    seen.plain = [];
    await fetchOnce(`${plain}/cross-token`, { bearerTokenFile: tokenFile, redirects: 'any-host' });
    expect(seen.plain).toEqual(['Bearer s3cret-token']);
    expect(seen.other).toEqual([undefined]);
  });

  test('a token file that would split the header is refused', async () => {
    const bad = join(tmp, 'bad-token');
    writeFileSync(bad, 'a\r\nx-injected: 1');
    await expect(fetchOnce(`${plain}/b`, { bearerTokenFile: bad })).rejects.toThrow(/printable ASCII/);
  });

  test('https: the server certificate must chain to --policy-ca', async () => {
    await expect(fetchOnce(`${secure}/b`)).rejects.toThrow(/certificate/);
    expect(await fetchOnce(`${secure}/b`, { caFile: tls.ca })).toBe('etag:"v1"');
  });

  test('client TLS: a server requiring a client certificate gets ours', async () => {
    await expect(fetchOnce(`${mtls}/b`, { caFile: tls.ca })).rejects.toThrow(/bundle server/);
    expect(
      await fetchOnce(`${mtls}/b`, { caFile: tls.ca, clientCertFile: tls.clientCert, clientKeyFile: tls.clientKey }),
    ).toBe('etag:"v1"');
  });
});
