// One GET of a bundle from an OPA bundle server, with what OPA's `services` credentials offer: a bearer
// token (re-read from its file on every request, so a rotated token is picked up), a client
// certificate, and a CA to trust instead of the system's. Redirects are followed by hand so that each
// hop is checked: by default only to the same origin (scheme, host and port), never from https to
// http, and credentials never leave the origin they were configured for.
import { readFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { errorMessage } from '../common/errors.js';

export type RedirectPolicy = 'same-origin' | 'any-host' | 'insecure';
export const REDIRECT_POLICIES: readonly RedirectPolicy[] = ['same-origin', 'any-host', 'insecure'];

export interface BundleServerAuth {
  /** file holding the bearer token (surrounding whitespace ignored) */
  bearerTokenFile?: string;
  /** PEM files of the client certificate (chain) and its key, for servers requiring client TLS */
  clientCertFile?: string;
  clientKeyFile?: string;
  /** PEM file of the CA(s) the server's certificate must chain to (instead of the system's) */
  caFile?: string;
  /** which redirects to follow: same-origin (default), any-host (still never https→http), insecure */
  redirects?: RedirectPolicy;
}

export interface BundleResponse {
  status: number;
  etag: string | undefined;
  /** the body of a 200 */
  body?: Uint8Array;
}

const MAX_REDIRECTS = 5;

/** GET `url`; resolves with the final response (after allowed redirects), rejects with the reason. */
export async function getBundle(
  url: string,
  opts: { headers: Record<string, string>; auth?: BundleServerAuth; timeoutMs: number; maxBytes: number },
): Promise<BundleResponse> {
  const auth = opts.auth ?? {};
  const tls = await tlsFiles(auth);
  const token = auth.bearerTokenFile === undefined ? undefined : await bearerToken(auth.bearerTokenFile);
  const origin = new URL(url);
  const deadline = Date.now() + opts.timeoutMs;
  let current = origin;
  for (let hop = 0; ; hop++) {
    // Credentials are for the origin they were configured for; a redirect elsewhere goes without them.
    const sameOrigin = current.origin === origin.origin;
    const headers = {
      ...opts.headers,
      ...(token !== undefined && sameOrigin ? { authorization: `Bearer ${token}` } : {}),
    };
    const res = await get(current, headers, sameOrigin ? tls : { ca: tls.ca }, deadline - Date.now());
    if (res.statusCode === undefined || res.statusCode < 300 || res.statusCode >= 400 || res.statusCode === 304) {
      const status = res.statusCode ?? 0;
      const etag = header(res, 'etag');
      if (status !== 200) {
        res.resume();
        return { status, etag };
      }
      return { status, etag, body: await readCapped(res, opts.maxBytes, url) };
    }
    res.resume();
    const location = header(res, 'location');
    if (location === undefined) throw new Error(`bundle server answered HTTP ${res.statusCode} without a Location`);
    if (hop + 1 > MAX_REDIRECTS) throw new Error(`bundle server ${url}: more than ${MAX_REDIRECTS} redirects`);
    const next = new URL(location, current);
    const refused = redirectRefusal(current, next, origin, auth.redirects ?? 'same-origin');
    if (refused) throw new Error(`bundle server ${url}: redirect to ${next.origin} refused: ${refused}`);
    current = next;
  }
}

/** Why a redirect may not be followed under the policy, or undefined when it may. */
function redirectRefusal(from: URL, to: URL, origin: URL, policy: RedirectPolicy): string | undefined {
  if (to.protocol !== 'http:' && to.protocol !== 'https:') return `scheme ${to.protocol} is not http(s)`;
  if (policy === 'insecure') return undefined;
  if (from.protocol === 'https:' && to.protocol === 'http:')
    return 'https to http is a downgrade (allowed only with --policy-redirects insecure)';
  if (policy === 'any-host') return undefined;
  if (to.origin !== origin.origin) return 'another origin (allowed with --policy-redirects any-host)';
  return undefined;
}

interface TlsMaterial {
  cert?: Buffer;
  key?: Buffer;
  ca?: Buffer;
}

async function tlsFiles(auth: BundleServerAuth): Promise<TlsMaterial> {
  const read = async (what: string, file: string | undefined) => {
    if (file === undefined) return undefined;
    try {
      return await readFile(file);
    } catch (e) {
      throw new Error(`${what} ${file}: ${errorMessage(e)}`);
    }
  };
  const out: TlsMaterial = {};
  const cert = await read('bundle server client certificate', auth.clientCertFile);
  const key = await read('bundle server client key', auth.clientKeyFile);
  const ca = await read('bundle server CA', auth.caFile);
  if (cert) out.cert = cert;
  if (key) out.key = key;
  if (ca) out.ca = ca;
  return out;
}

async function bearerToken(file: string): Promise<string> {
  let token: string;
  try {
    token = (await readFile(file, 'utf8')).trim();
  } catch (e) {
    throw new Error(`bundle server bearer token file ${file}: ${errorMessage(e)}`);
  }
  // A token that would split or extend the header line is an operator error, not something to send.
  if (token === '' || !/^[\x21-\x7e]+$/.test(token))
    throw new Error(`bundle server bearer token file ${file}: empty, or not one line of printable ASCII`);
  return token;
}

function get(url: URL, headers: Record<string, string>, tls: TlsMaterial, timeoutMs: number): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    if (timeoutMs <= 0) {
      reject(new Error(`bundle server ${url.origin}: timed out`));
      return;
    }
    const options = { method: 'GET', headers, timeout: timeoutMs, signal: AbortSignal.timeout(timeoutMs) };
    const req =
      url.protocol === 'https:'
        ? httpsRequest(url, { ...options, ...tls, ...(tls.ca ? { ca: tls.ca } : {}) })
        : httpRequest(url, options);
    req.on('response', resolve);
    req.on('timeout', () => req.destroy(new Error(`bundle server ${url.origin}: timed out`)));
    req.on('error', (e) => reject(new Error(`bundle server ${url.origin}: ${e.message}`)));
    req.end();
  });
}

function header(res: IncomingMessage, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

async function readCapped(res: IncomingMessage, max: number, where: string): Promise<Uint8Array> {
  const declared = Number(header(res, 'content-length') ?? NaN);
  if (declared > max) {
    res.destroy();
    throw new Error(`bundle from ${where} is larger than ${max} bytes`);
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    total += chunk.byteLength;
    if (total > max) {
      res.destroy();
      throw new Error(`bundle from ${where} is larger than ${max} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
