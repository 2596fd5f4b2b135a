// Where trust bundles come from when the operator names them: files (`--trust-bundle TD=FILE`, PEM or
// SPIFFE bundle JSON, re-read when they change) and SPIFFE bundle endpoints (`--trust-bundle-url
// TD=URL[,spiffe=ID]`, the SPIFFE Federation protocol, polled at the bundle's refresh hint). Each
// configured trust domain feeds the shared X509BundleSet under its own origin `config:<td>`; a file and
// an endpoint for the same trust domain share it, so the latest retrieved bundle wins (Federation §4.2:
// the operator's file bootstraps a self-serving `https_spiffe` endpoint, later fetches replace it).
//
// A refresh that fails keeps the previous bundle and is logged; a file that is unusable at start is an
// error at start. An endpoint that cannot be reached at start leaves its trust domain without a bundle:
// its identities are denied ("no trust bundle for trust domain …") until a poll succeeds.
import { readFile, stat } from 'node:fs/promises';
import https from 'node:https';
import type { PeerCertificate } from 'node:tls';
import type { Logger } from 'pino';
import { errorMessage } from '../common/errors.js';
import { fail, ok, type Result } from '../common/result.js';
import { parseSpiffeId } from '../identity/spiffe-id.js';
import {
  MAX_BUNDLE_DOCUMENT_BYTES,
  parseSpiffeBundleJson,
  parseTrustDomain,
  parseX509Bundle,
  type X509Bundle,
  type X509BundleSet,
} from '../identity/x509-bundle.js';
import { parseX509Svid } from '../identity/x509-svid.js';
import { watchLocalFile } from './bundle-source.js';

export interface TrustBundleFile {
  trustDomain: string;
  path: string;
}

export type EndpointProfile = 'https_web' | 'https_spiffe';

export interface TrustBundleEndpoint {
  trustDomain: string;
  url: string;
  profile: EndpointProfile;
  /** https_spiffe: the SPIFFE ID the endpoint server must present, and its trust domain */
  endpointId?: string;
  endpointTrustDomain?: string;
}

/** Federation §4.1: without a refresh hint, poll every five minutes. */
const DEFAULT_REFRESH_MS = 5 * 60_000;
const MIN_REFRESH_MS = 1_000;
const MAX_REFRESH_MS = 24 * 3600_000;
const FETCH_TIMEOUT_MS = 10_000;
const MAX_REDIRECTS = 3;

// ------------------------------------------------------------------------------------------- flags

function splitAssignment(flag: string, text: string): Result<[string, string]> {
  const eq = text.indexOf('=');
  if (eq <= 0 || eq === text.length - 1) return fail(`${flag} "${text}": expected TRUST_DOMAIN=VALUE`);
  return ok([text.slice(0, eq), text.slice(eq + 1)]);
}

/** `--trust-bundle TD=FILE` */
export function parseTrustBundleFlag(text: string): Result<TrustBundleFile> {
  const parts = splitAssignment('--trust-bundle', text);
  if (!parts.ok) return parts;
  const td = parseTrustDomain(parts.value[0]);
  if (!td.ok) return fail(`--trust-bundle: ${td.reason}`);
  return ok({ trustDomain: td.value, path: parts.value[1] });
}

/** `--trust-bundle-url TD=URL[,spiffe=ID]`: `https_spiffe` with the endpoint's SPIFFE ID, else `https_web`. */
export function parseTrustBundleUrlFlag(text: string): Result<TrustBundleEndpoint> {
  const parts = splitAssignment('--trust-bundle-url', text);
  if (!parts.ok) return parts;
  const td = parseTrustDomain(parts.value[0]);
  if (!td.ok) return fail(`--trust-bundle-url: ${td.reason}`);
  const [urlText, ...params] = parts.value[1].split(',');
  let url: URL;
  try {
    url = new URL(urlText!);
  } catch {
    return fail(`--trust-bundle-url ${td.value}: "${urlText}" is not a URL`);
  }
  // §5.2.1.1 / §5.2.2.1: https only, no userinfo.
  if (url.protocol !== 'https:') return fail(`--trust-bundle-url ${td.value}: a bundle endpoint URL must be https`);
  if (url.username !== '' || url.password !== '')
    return fail(`--trust-bundle-url ${td.value}: a bundle endpoint URL must not contain userinfo`);
  const endpoint: TrustBundleEndpoint = { trustDomain: td.value, url: url.href, profile: 'https_web' };
  for (const param of params) {
    const [key, value] = [param.slice(0, param.indexOf('=')), param.slice(param.indexOf('=') + 1)];
    if (key !== 'spiffe' || param.indexOf('=') < 0)
      return fail(`--trust-bundle-url ${td.value}: unknown parameter "${param}" (expected spiffe=ID)`);
    const id = parseSpiffeId(value);
    if (!id.ok) return fail(`--trust-bundle-url ${td.value}: spiffe=${value}: ${id.reason}`);
    endpoint.profile = 'https_spiffe';
    endpoint.endpointId = id.value.uri;
    endpoint.endpointTrustDomain = id.value.trustDomain;
  }
  return ok(endpoint);
}

// ------------------------------------------------------------------------------------------ sources

export interface TrustBundlesOptions {
  log: Logger;
  /** stat poll interval behind fs.watch for bundle files */
  filePollMs?: number;
  /** for tests of `https_web` against a private CA; production uses the system's Web PKI roots */
  webCa?: string;
  /** bounds every endpoint poll interval from below (tests); default 1s */
  minRefreshMs?: number;
  /** after every refresh outcome (the statuses changed): the primary of `serve --workers` tells its workers */
  onStatus?: () => void;
}

export interface TrustBundleStatus {
  trust_domain: string;
  source: string;
  ok: boolean;
  error?: string;
  /** when the last good bundle was applied */
  updated_at?: string;
}

/** The configured trust bundle files and endpoints, feeding one bundle set. */
export class TrustBundles {
  private readonly stops: (() => void)[] = [];
  private readonly status = new Map<string, TrustBundleStatus>();
  private stopped = false;

  private constructor(
    private readonly set: X509BundleSet,
    private readonly files: TrustBundleFile[],
    private readonly endpoints: TrustBundleEndpoint[],
    private readonly opts: TrustBundlesOptions,
  ) {
    // Configured trust domains take precedence over whatever the Workload API later offers for them.
    for (const td of new Set([...files, ...endpoints].map((s) => s.trustDomain))) set.reserve(origin(td));
  }

  /**
   * Reads every file (an unusable one throws, so `serve` stops with the reason) and starts watching
   * them; starts polling every endpoint, whose first answer is not awaited.
   */
  static async open(
    set: X509BundleSet,
    files: TrustBundleFile[],
    endpoints: TrustBundleEndpoint[],
    opts: TrustBundlesOptions,
  ): Promise<TrustBundles> {
    const t = new TrustBundles(set, files, endpoints, opts);
    for (const f of files) {
      const bundle = await readBundleFile(f);
      if (!bundle.ok) throw new Error(`--trust-bundle ${f.trustDomain}=${f.path}: ${bundle.reason}`);
      t.apply(f.trustDomain, `file:${f.path}`, bundle.value);
    }
    return t;
  }

  /** Starts the file watches and endpoint polls. */
  start(): void {
    for (const f of this.files) {
      const reload = () => void this.reloadFile(f);
      this.stops.push(watchLocalFile(f.path, { pollMs: this.opts.filePollMs }, reload));
    }
    for (const e of this.endpoints) this.poll(e);
  }

  stop(): void {
    this.stopped = true;
    for (const s of this.stops.splice(0)) s();
  }

  /** One line per source, for /readyz and the log. */
  statuses(): TrustBundleStatus[] {
    return [...this.status.values()];
  }

  async reloadFile(f: TrustBundleFile): Promise<void> {
    const bundle = await readBundleFile(f);
    if (bundle.ok) this.apply(f.trustDomain, `file:${f.path}`, bundle.value);
    else this.failed(f.trustDomain, `file:${f.path}`, bundle.reason);
  }

  /** One fetch of an endpoint; resolves to the delay before the next one. */
  async fetchEndpoint(e: TrustBundleEndpoint): Promise<number> {
    const source = `${e.profile}:${e.url}`;
    const minMs = this.opts.minRefreshMs ?? MIN_REFRESH_MS;
    const bundle = await fetchEndpointBundle(e, this.set, this.opts.webCa);
    if (!bundle.ok) {
      this.failed(e.trustDomain, source, bundle.reason);
      // §6.2: retry at the next polling interval, not aggressively.
      const hint = this.set.bundleFor(e.trustDomain)?.refreshHintSeconds;
      return clamp(hint === undefined ? DEFAULT_REFRESH_MS : hint * 1000, minMs);
    }
    const current = this.set.bundleFor(e.trustDomain);
    // §4.2: an older sequence number than the bundle we hold is a stale copy; keep ours.
    if (
      current?.sequenceNumber !== undefined &&
      bundle.value.sequenceNumber !== undefined &&
      bundle.value.sequenceNumber < current.sequenceNumber
    ) {
      this.failed(e.trustDomain, source, 'endpoint served an older bundle sequence number; kept the current bundle');
    } else {
      this.apply(e.trustDomain, source, bundle.value);
    }
    const hint = bundle.value.refreshHintSeconds;
    return clamp(hint === undefined ? DEFAULT_REFRESH_MS : hint * 1000, minMs);
  }

  private poll(e: TrustBundleEndpoint): void {
    const run = async () => {
      if (this.stopped) return;
      const delay = await this.fetchEndpoint(e);
      if (this.stopped) return;
      const timer = setTimeout(() => void run(), delay);
      timer.unref();
      this.stops.push(() => clearTimeout(timer));
    };
    void run();
  }

  private apply(td: string, source: string, bundle: X509Bundle): void {
    const change = this.set.set(origin(td), bundle);
    this.status.set(`${td} ${source}`, {
      trust_domain: td,
      source,
      ok: true,
      updated_at: new Date().toISOString(),
    });
    if (change.changed.length > 0)
      this.opts.log.info(
        { trust_domain: td, source, authorities: bundle.authorities.length, bundle_generation: change.generation },
        'trust bundle updated',
      );
    this.opts.onStatus?.();
  }

  private failed(td: string, source: string, reason: string): void {
    const previous = this.status.get(`${td} ${source}`);
    this.status.set(`${td} ${source}`, { ...previous, trust_domain: td, source, ok: false, error: reason });
    const kept = this.set.bundleFor(td) !== undefined;
    this.opts.log.error(
      { trust_domain: td, source, reason },
      kept
        ? 'trust bundle refresh failed; keeping the previous bundle'
        : 'trust bundle not available; denying its identities',
    );
    this.opts.onStatus?.();
  }
}

function origin(td: string): string {
  return `config:${td}`;
}

function clamp(ms: number, minMs: number): number {
  return Math.min(Math.max(ms, minMs), MAX_REFRESH_MS);
}

async function readBundleFile(f: TrustBundleFile): Promise<Result<X509Bundle>> {
  try {
    const info = await stat(f.path);
    if (!info.isFile()) return fail('not a file');
    if (info.size > MAX_BUNDLE_DOCUMENT_BYTES) return fail(`larger than ${MAX_BUNDLE_DOCUMENT_BYTES} bytes`);
    return parseX509Bundle(f.trustDomain, await readFile(f.path, 'utf8'));
  } catch (err) {
    return fail(errorMessage(err));
  }
}

// --------------------------------------------------------------------------------- bundle endpoint

/**
 * GET the bundle. `https_web`: ordinary Web PKI TLS (Node's roots, plus NODE_EXTRA_CA_CERTS). `https_spiffe`:
 * the server's chain must verify against the current bundle of the endpoint ID's trust domain (the
 * operator's bootstrap bundle the first time, the latest fetched one after, for a self-serving endpoint)
 * and its leaf must be an X.509-SVID of exactly the configured endpoint ID. Redirects are followed a few
 * times, each hop under the same rules (§5.2.2.4).
 */
export async function fetchEndpointBundle(
  e: TrustBundleEndpoint,
  bundles: X509BundleSet,
  webCa?: string,
): Promise<Result<X509Bundle>> {
  let tls: https.RequestOptions;
  if (e.profile === 'https_spiffe') {
    const id = parseSpiffeId(e.endpointId ?? '');
    if (!id.ok) return fail(`endpoint SPIFFE ID: ${id.reason}`);
    const serverBundle = bundles.bundleFor(id.value.trustDomain);
    if (serverBundle === undefined)
      return fail(`no trust bundle for trust domain ${id.value.trustDomain} to authenticate the endpoint with`);
    tls = {
      ca: serverBundle.authorities.map((c) => c.toString()),
      checkServerIdentity: (_host: string, cert: PeerCertificate) => endpointIdentityError(cert, id.value.uri),
    };
  } else {
    tls = webCa === undefined ? {} : { ca: webCa };
  }
  let url = e.url;
  for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
    const answer = await get(url, tls);
    if (!answer.ok) return answer;
    const { status, location, body } = answer.value;
    if (status >= 300 && status < 400 && location !== undefined) {
      let next: URL;
      try {
        next = new URL(location, url);
      } catch {
        return fail('endpoint redirected to an invalid URL');
      }
      if (next.protocol !== 'https:' || next.username !== '' || next.password !== '')
        return fail('endpoint redirected to a URL that is not a valid bundle endpoint URL');
      url = next.href;
      continue;
    }
    if (status !== 200) return fail(`endpoint answered HTTP ${status}`);
    return parseSpiffeBundleJson(e.trustDomain, body);
  }
  return fail(`endpoint redirected more than ${MAX_REDIRECTS} times`);
}

/** checkServerIdentity for `https_spiffe`: no host name check, the SVID's SPIFFE ID instead. */
function endpointIdentityError(cert: PeerCertificate, expected: string): Error | undefined {
  const svid = parseX509Svid([new Uint8Array(cert.raw)], new Date());
  if (!svid.ok) return new Error(`endpoint certificate is not a valid X.509-SVID: ${svid.reason}`);
  if (svid.value.spiffeId.uri !== expected)
    return new Error(`endpoint presented ${svid.value.spiffeId.uri}, expected ${expected}`);
  return undefined;
}

function get(
  url: string,
  tls: https.RequestOptions,
): Promise<Result<{ status: number; location?: string; body: string }>> {
  return new Promise((resolve) => {
    let settled = false;
    const done = (r: Result<{ status: number; location?: string; body: string }>) => {
      if (settled) return;
      settled = true;
      resolve(r);
    };
    let req;
    try {
      req = https.get(url, {
        ...tls,
        headers: { accept: 'application/json' },
        timeout: FETCH_TIMEOUT_MS,
        agent: false,
      });
    } catch (err) {
      return done(fail(`endpoint request failed: ${errorMessage(err)}`));
    }
    req.on('timeout', () => req.destroy(new Error(`no answer within ${FETCH_TIMEOUT_MS}ms`)));
    req.on('error', (err) => done(fail(`endpoint not reached: ${errorMessage(err)}`)));
    req.on('response', (res) => {
      const status = res.statusCode ?? 0;
      const location = res.headers.location;
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_BUNDLE_DOCUMENT_BYTES) {
          res.destroy();
          done(fail(`endpoint bundle is larger than ${MAX_BUNDLE_DOCUMENT_BYTES} bytes`));
          return;
        }
        chunks.push(chunk);
      });
      res.on('error', (err) => done(fail(`endpoint answer not read: ${errorMessage(err)}`)));
      res.on('end', () =>
        done(
          ok({ status, ...(location !== undefined ? { location } : {}), body: Buffer.concat(chunks).toString('utf8') }),
        ),
      );
    });
  });
}
