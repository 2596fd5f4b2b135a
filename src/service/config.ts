// `serve`'s configuration: one table of options (flag, default, help) from which both the parser and
// the usage text are made, and one normaliser that turns the parsed strings into a checked ServeConfig.
// Parsing is pure (no files opened, nothing started), so every wrong value is a usage error before
// anything listens — and a test can check every flag without starting a service.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { errorMessage } from '../common/errors.js';
import { isBundleUrl } from '../lifecycle/bundle-source.js';
import { REDIRECT_POLICIES, type BundleServerAuth, type RedirectPolicy } from '../lifecycle/bundle-http.js';
import { DEFAULT_SIGNING_ALG, SIGNING_ALGORITHMS } from '../policy/bundle-signing.js';
import { fail, ok, type Result } from '../common/result.js';
import { DEFAULT_CHAIN_CACHE_ENTRIES } from '../identity/chain-verify.js';
import { DEFAULT_SVID_CACHE_ENTRIES } from '../identity/x509-svid.js';
import { DEFAULT_ENTRYPOINT } from '../policy/bundle.js';
import { DEFAULT_MAX_RECEIVE_MESSAGE_BYTES, type CheckTransport } from '../transport/grpc-server.js';
import { parseSpiffeId } from '../identity/spiffe-id.js';
import { XFCC_HEADER } from '../identity/xfcc.js';
import { parseAllowedCaller, type CallerPattern } from '../transport/tls.js';
import { parseWorkers } from './workers.js';
import type { SandboxBudget } from '../lifecycle/policy-sandbox.js';
import { SPIFFE_ENDPOINT_SOCKET, workloadApiTarget } from '../spiffe/workload-api.js';
import {
  parseTrustBundleFlag,
  parseTrustBundleUrlFlag,
  type TrustBundleEndpoint,
  type TrustBundleFile,
} from '../lifecycle/trust-bundles.js';

/** One command-line option. Every option takes a string value; `multiple` ones may repeat. */
export interface OptionRow {
  /** the value's placeholder in the usage text */
  arg: string;
  help: string;
  default?: string;
  multiple?: boolean;
}

/** Signed bundles: serve, eval and test take these (bundle-signing.ts). */
export const VERIFICATION_OPTIONS = {
  'verification-key': {
    arg: 'FILE',
    help: 'load only bundles signed with this key (PEM public key, or the HMAC secret for HS*)',
  },
  'verification-key-id': { arg: 'ID', help: 'the name of the key, as in OPA (default: default)' },
  'signing-alg': {
    arg: 'ALG',
    default: DEFAULT_SIGNING_ALG,
    help: `the key's algorithm: ${SIGNING_ALGORITHMS.join(' ')}`,
  },
  scope: { arg: 'S', help: 'the scope a bundle signature must carry (default: none)' },
} satisfies Record<string, OptionRow>;

/** How to reach an http(s) bundle server (bundle-http.ts), as OPA's `services` credentials. */
const BUNDLE_SERVER_OPTIONS = {
  'policy-bearer-token-file': { arg: 'FILE', help: 'bundle server bearer token (re-read on every request)' },
  'policy-client-cert': { arg: 'FILE', help: 'client certificate for a bundle server requiring client TLS' },
  'policy-client-key': { arg: 'FILE', help: 'its private key' },
  'policy-ca': { arg: 'FILE', help: "CA(s) the bundle server's certificate must chain to (instead of the system's)" },
  'policy-redirects': {
    arg: 'MODE',
    default: 'same-origin',
    help: 'bundle server redirects to follow: same-origin, any-host (never https to http), insecure',
  },
} satisfies Record<string, OptionRow>;

/** The verification flags as plain data (the key file is read when the command starts). */
export interface VerificationFlags {
  keyFile: string;
  alg: string;
  keyId?: string;
  scope?: string;
}

type FlagValues = Record<string, string | string[] | undefined>;

/** The verification flags, checked; undefined without --verification-key. Throws ConfigError. */
export function verificationFlags(v: FlagValues): VerificationFlags | undefined {
  const keyFile = v['verification-key'] as string | undefined;
  const alg = (v['signing-alg'] as string | undefined) ?? DEFAULT_SIGNING_ALG;
  const keyId = v['verification-key-id'] as string | undefined;
  const scope = v.scope as string | undefined;
  if (!SIGNING_ALGORITHMS.includes(alg))
    throw new ConfigError(`--signing-alg ${JSON.stringify(alg)}: one of ${SIGNING_ALGORITHMS.join(', ')}`);
  if (keyFile === undefined) {
    if (keyId !== undefined || scope !== undefined)
      throw new ConfigError('--verification-key-id and --scope need --verification-key');
    return undefined;
  }
  return { keyFile, alg, ...defined('keyId', keyId), ...defined('scope', scope) };
}

function bundleServerAuth(v: Values, urls: (string | undefined)[]): BundleServerAuth | undefined {
  const redirects = v['policy-redirects'] as RedirectPolicy;
  if (!REDIRECT_POLICIES.includes(redirects))
    throw new ConfigError(`--policy-redirects takes ${REDIRECT_POLICIES.join(', ')}`);
  const cert = v['policy-client-cert'];
  const key = v['policy-client-key'];
  if ((cert === undefined) !== (key === undefined))
    throw new ConfigError('--policy-client-cert and --policy-client-key go together');
  const auth: BundleServerAuth = {
    redirects,
    ...defined('bearerTokenFile', v['policy-bearer-token-file']),
    ...defined('clientCertFile', cert),
    ...defined('clientKeyFile', key),
    ...defined('caFile', v['policy-ca']),
  };
  const credentials = Object.keys(auth).filter((k) => k !== 'redirects');
  if (credentials.length > 0 && !urls.some((u) => u !== undefined && isBundleUrl(u)))
    throw new ConfigError(
      'bundle server credentials (--policy-bearer-token-file, --policy-client-*, --policy-ca) need an http(s) --policy or --shadow-policy',
    );
  return auth;
}

/**
 * Every `serve` option. To add one: a row here, a field in ServeConfig, one line in normalise().
 * The usage text lists them in this order.
 */
export const SERVE_OPTIONS = {
  'grpc-addr': { arg: 'H:P', default: '0.0.0.0:9191', help: 'gRPC ext_authz v3 listener' },
  'http-addr': { arg: 'H:P', default: '0.0.0.0:8181', help: 'HTTP listener: BIG-IP sideband, health, /metrics' },
  'health-addr': { arg: 'H:P', help: 'plain-HTTP probe listener (/healthz, /readyz, /metrics; no decisions)' },
  policy: {
    arg: 'PATH|URL',
    help: 'bundle (.tar.gz), policy folder, or http(s) bundle server URL (default: the embedded policy)',
  },
  entrypoint: { arg: 'E', default: DEFAULT_ENTRYPOINT, help: 'the policy rule that decides' },
  'policy-poll-interval': { arg: 'DUR', help: 'how often to poll the bundle URL (or stat the file) for a change' },
  'policy-cases': { arg: 'PATH', help: 'case file or folder every new policy version must pass' },
  'policy-memo': { arg: 'on|off', default: 'on', help: "remember a deterministic policy's answers" },
  'policy-load-timeout': {
    arg: 'DUR',
    default: '30s',
    help: 'time a new policy version may take to load and pass its cases (in a worker thread)',
  },
  'policy-load-memory': { arg: 'MiB', default: '128', help: "that worker thread's JS heap bound" },
  'shadow-policy': { arg: 'PATH|URL', help: 'a candidate evaluated beside the live policy, never answering' },
  'trusted-identity-header': { arg: 'NAME', help: 'a header a verifier in front of us sets (off by default)' },
  'trusted-proxy-id': {
    arg: 'ID',
    multiple: true,
    help: 'with x-forwarded-client-cert: its By= must be one of these proxy SPIFFE IDs (repeatable)',
  },
  'sideband-cache-ttl': {
    arg: 'DUR',
    default: '10s',
    help: "longest the iRule may reuse an answer (X-Egress-Cache-Ttl; 0 when the policy isn't deterministic)",
  },
  'log-level': { arg: 'LEVEL', default: 'info', help: 'pino level: trace, debug, info, warn, error, fatal' },
  'tls-cert': { arg: 'FILE', help: "the service's own certificate (both listeners; re-read on change)" },
  'tls-key': { arg: 'FILE', help: 'its private key' },
  'tls-client-ca': { arg: 'FILE', help: 'require client certificates from this CA (mTLS)' },
  'allowed-caller': {
    arg: 'ID',
    multiple: true,
    help: 'SPIFFE ID allowed to ask (repeatable; ID/* for a subtree); needs --tls-client-ca or --spiffe-socket',
  },
  'spiffe-socket': {
    arg: 'PATH',
    help: `own SVID and caller CA from the SPIFFE Workload API, rotated live (or $${SPIFFE_ENDPOINT_SOCKET})`,
  },
  'spiffe-wait': { arg: 'DUR', default: '30s', help: 'how long serve waits at start for the first SVID' },
  'trust-bundle': {
    arg: 'TD=FILE',
    multiple: true,
    help: "a trust domain's X.509 bundle, PEM or SPIFFE bundle JSON (repeatable; re-read on change)",
  },
  'trust-bundle-url': {
    arg: 'TD=URL[,spiffe=ID]',
    multiple: true,
    help: 'its SPIFFE bundle endpoint: https_web, or https_spiffe with the server ID (repeatable)',
  },
  'verify-peer-chain': {
    arg: 'on|off',
    default: 'off',
    help: "verify Envoy's peer certificate against the bundles too (the sideband always is)",
  },
  ...VERIFICATION_OPTIONS,
  ...BUNDLE_SERVER_OPTIONS,
  'shutdown-grace': { arg: 'DUR', default: '10s', help: 'how long SIGTERM waits for accepted checks' },
  'check-deadline': { arg: 'DUR', default: '200ms', help: 'a check slower than this is a deny' },
  'check-transport': {
    arg: 'stream|grpc-js',
    default: 'stream',
    help: "who answers Check calls: the HTTP/2 stream path, or grpc-js's call objects (same answers, slower)",
  },
  'grpc-max-message-bytes': {
    arg: 'N',
    default: String(DEFAULT_MAX_RECEIVE_MESSAGE_BYTES),
    help: 'largest CheckRequest accepted',
  },
  workers: {
    arg: 'N',
    help: 'processes answering Checks on the shared ports (default: the CPUs available, cgroup-aware; 1: one process)',
  },
  'svid-cache-entries': {
    arg: 'N',
    default: String(DEFAULT_SVID_CACHE_ENTRIES),
    help: 'certificate outcomes remembered, byte-bounded (0: parse every certificate)',
  },
  'chain-cache-entries': {
    arg: 'N',
    default: String(DEFAULT_CHAIN_CACHE_ENTRIES),
    help: 'verified peer chains remembered per worker, byte-bounded (0: verify every chain); with trust bundles',
  },
} satisfies Record<string, OptionRow>;

type OptionName = keyof typeof SERVE_OPTIONS;
type Values = {
  [K in OptionName]: (typeof SERVE_OPTIONS)[K] extends { multiple: true } ? string[] : string | undefined;
};

export interface TlsFiles {
  certFile: string;
  keyFile: string;
  clientCaFile?: string;
}

export interface ServeConfig {
  grpcAddr: string;
  httpAddr: string;
  healthAddr?: string;
  /** undefined: the embedded default policy */
  policy?: string;
  entrypoint: string;
  pollMs?: number;
  policyCases?: string;
  memoize: boolean;
  /** budget of a policy candidate in the sandbox */
  sandbox: SandboxBudget;
  shadowPolicy?: string;
  trustedIdentityHeader?: string;
  trustedProxies: string[];
  /** whole seconds; 0 turns the iRule's cache off */
  sidebandCacheTtlS: number;
  logLevel: string;
  tls?: TlsFiles;
  /** own SVID from the Workload API (instead of `tls`): both listeners mTLS with the SVID's bundle */
  spiffe?: { socket: string; waitMs: number };
  allowedCallers: CallerPattern[];
  /** trust bundles: with any, sideband chains are verified against the leaf's trust domain's bundle */
  trustBundleFiles: TrustBundleFile[];
  trustBundleEndpoints: TrustBundleEndpoint[];
  verifyPeerChain: boolean;
  /** only bundles signed with this key are loaded */
  verification?: VerificationFlags;
  /** bundle server credentials and redirect policy */
  bundleServer?: BundleServerAuth;
  graceMs: number;
  checkDeadlineMs: number;
  maxReceiveMessageBytes: number;
  checkTransport: CheckTransport;
  /** undefined: one per CPU available (workers.ts availableCpus, which reads the cgroup: not done here) */
  workers?: number;
  svidCacheEntries: number;
  chainCacheEntries: number;
}

/** The usage lines of a table's options: `--flag ARG  help (default: D)`, aligned. */
export function optionsUsage(table: Record<string, OptionRow>, indent = '          '): string {
  const heads = Object.entries(table).map(([name, row]) => `--${name} ${row.arg}${row.multiple ? '...' : ''}`);
  const width = Math.max(...heads.map((h) => h.length)) + 2;
  return Object.values(table)
    .map((row, i) => {
      const help = row.default === undefined ? row.help : `${row.help} (default: ${row.default})`;
      return `${indent}${heads[i]!.padEnd(width)}${help}`;
    })
    .join('\n');
}

/** parseArgs' option table from ours. */
export function parseArgsOptions(table: Record<string, OptionRow>): NonNullable<ParseArgsConfig['options']> {
  const out: NonNullable<ParseArgsConfig['options']> = {};
  for (const [name, row] of Object.entries(table)) {
    out[name] = {
      type: 'string',
      ...(row.multiple ? { multiple: true } : {}),
      ...(row.default !== undefined ? { default: row.default } : {}),
    };
  }
  return out;
}

/** `env`: where SPIFFE_ENDPOINT_SOCKET is read from (the CLI passes process.env). */
export function parseServeConfig(argv: string[], env: Record<string, string | undefined> = {}): Result<ServeConfig> {
  let values: Values;
  try {
    values = parseArgs({ args: argv, options: parseArgsOptions(SERVE_OPTIONS), strict: true }).values as Values;
  } catch (err) {
    return fail(errorMessage(err));
  }
  try {
    return ok(normalise(values, env));
  } catch (err) {
    if (err instanceof ConfigError) return fail(err.message);
    throw err;
  }
}

export class ConfigError extends Error {}

function normalise(v: Values, env: Record<string, string | undefined>): ServeConfig {
  const memo = v['policy-memo'];
  if (memo !== 'on' && memo !== 'off') throw new ConfigError('--policy-memo takes on or off');
  const svidCacheEntries = cacheEntries('--svid-cache-entries', v['svid-cache-entries']);
  const chainCacheEntries = cacheEntries('--chain-cache-entries', v['chain-cache-entries']);
  const checkTransport = v['check-transport'];
  if (checkTransport !== 'stream' && checkTransport !== 'grpc-js')
    throw new ConfigError('--check-transport takes stream or grpc-js');
  const maxMessage = Number(v['grpc-max-message-bytes']);
  if (!Number.isSafeInteger(maxMessage) || maxMessage < 1024)
    throw new ConfigError('--grpc-max-message-bytes must be an integer of at least 1024');
  const interval = v['policy-poll-interval'];
  const pollMs = interval === undefined ? undefined : duration('--policy-poll-interval', interval);
  if (pollMs !== undefined && pollMs < 100) throw new ConfigError('--policy-poll-interval must be at least 100ms');
  const allowedCallers = (v['allowed-caller'] ?? []).map((entry) => {
    const p = parseAllowedCaller(entry);
    if (!p.ok) throw new ConfigError(`--allowed-caller: ${p.reason}`);
    return p.value;
  });
  const spiffe = spiffeSource(v, env);
  const tls = spiffe ? undefined : tlsFiles(v, allowedCallers);
  const workers = v.workers === undefined ? undefined : parseWorkers(v.workers);
  if (v.workers !== undefined && workers === undefined)
    throw new ConfigError(`--workers "${v.workers}": expected a count from 1 to 256`);
  const trust = trustBundles(v, spiffe !== undefined);
  const verification = verificationFlags(v);
  const bundleServer = bundleServerAuth(v, [v.policy, v['shadow-policy']]);
  return {
    grpcAddr: v['grpc-addr']!,
    httpAddr: v['http-addr']!,
    ...defined('healthAddr', v['health-addr']),
    ...defined('policy', v.policy),
    entrypoint: v.entrypoint!,
    ...defined('pollMs', pollMs),
    ...defined('policyCases', v['policy-cases']),
    memoize: memo === 'on',
    sandbox: {
      timeoutMs: duration('--policy-load-timeout', v['policy-load-timeout']!),
      heapMb: integer('--policy-load-memory', v['policy-load-memory']!, 16),
    },
    ...defined('shadowPolicy', v['shadow-policy']),
    ...defined('trustedIdentityHeader', v['trusted-identity-header']),
    trustedProxies: trustedProxies(v),
    sidebandCacheTtlS:
      v['sideband-cache-ttl'] === '0'
        ? 0
        : Math.floor(duration('--sideband-cache-ttl', v['sideband-cache-ttl']!) / 1000),
    logLevel: v['log-level']!,
    ...defined('tls', tls),
    ...defined('spiffe', spiffe),
    allowedCallers,
    ...trust,
    ...defined('verification', verification),
    ...defined('bundleServer', bundleServer),
    graceMs: duration('--shutdown-grace', v['shutdown-grace']!),
    checkDeadlineMs: duration('--check-deadline', v['check-deadline']!),
    maxReceiveMessageBytes: maxMessage,
    checkTransport,
    ...defined('workers', workers),
    svidCacheEntries,
    chainCacheEntries,
  };
}

function cacheEntries(flag: string, text: string | undefined): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0 || n > 10_000_000)
    throw new ConfigError(`${flag} must be an integer from 0 to 10000000`);
  return n;
}

/**
 * The Workload API replaces the certificate files: --spiffe-socket with any of them is refused. The
 * standard variable applies only when no TLS file flag was given: explicit files win over the
 * environment a SPIRE node may export to every process.
 */
function spiffeSource(v: Values, env: Record<string, string | undefined>): ServeConfig['spiffe'] {
  const fileFlags = (['tls-cert', 'tls-key', 'tls-client-ca'] as const).filter((f) => v[f] !== undefined);
  const flag = v['spiffe-socket'];
  if (flag !== undefined && fileFlags.length > 0)
    throw new ConfigError(`--spiffe-socket replaces --${fileFlags.join(', --')}: give one or the other`);
  const fromEnv = fileFlags.length === 0 ? env[SPIFFE_ENDPOINT_SOCKET] : undefined;
  const address = flag ?? (fromEnv === '' ? undefined : fromEnv);
  if (address === undefined) return undefined;
  const source = flag !== undefined ? '--spiffe-socket' : SPIFFE_ENDPOINT_SOCKET;
  const target = workloadApiTarget(address);
  if (!target.ok) throw new ConfigError(`${source}: ${target.reason}`);
  return { socket: address, waitMs: duration('--spiffe-wait', v['spiffe-wait']!) };
}

function trustedProxies(v: Values): string[] {
  const ids = v['trusted-proxy-id'] ?? [];
  for (const id of ids) {
    const parsed = parseSpiffeId(id);
    if (!parsed.ok) throw new ConfigError(`--trusted-proxy-id: ${parsed.reason}`);
  }
  if (ids.length > 0 && v['trusted-identity-header']?.toLowerCase() !== XFCC_HEADER)
    throw new ConfigError(`--trusted-proxy-id needs --trusted-identity-header ${XFCC_HEADER}`);
  return ids;
}

function tlsFiles(v: Values, allowedCallers: CallerPattern[]): TlsFiles | undefined {
  const cert = v['tls-cert'];
  const key = v['tls-key'];
  const ca = v['tls-client-ca'];
  if ((cert === undefined) !== (key === undefined)) throw new ConfigError('--tls-cert and --tls-key go together');
  if (cert === undefined || key === undefined) {
    if (ca !== undefined) throw new ConfigError('--tls-client-ca needs --tls-cert and --tls-key');
    if (allowedCallers.length > 0)
      throw new ConfigError('--allowed-caller needs mTLS: --tls-cert, --tls-key and --tls-client-ca');
    return undefined;
  }
  if (ca === undefined && allowedCallers.length > 0)
    throw new ConfigError(
      '--allowed-caller needs --tls-client-ca: without client certificates no caller has an identity',
    );
  return { certFile: cert, keyFile: key, ...defined('clientCaFile', ca) };
}

/** `workloadApi`: bundles also come from --spiffe-socket (its own and federated trust domains). */
function trustBundles(
  v: Values,
  workloadApi: boolean,
): Pick<ServeConfig, 'trustBundleFiles' | 'trustBundleEndpoints' | 'verifyPeerChain'> {
  const files = (v['trust-bundle'] ?? []).map((text) => {
    const f = parseTrustBundleFlag(text);
    if (!f.ok) throw new ConfigError(f.reason);
    return f.value;
  });
  const endpoints = (v['trust-bundle-url'] ?? []).map((text) => {
    const e = parseTrustBundleUrlFlag(text);
    if (!e.ok) throw new ConfigError(e.reason);
    return e.value;
  });
  for (const [flag, list] of [
    ['--trust-bundle', files],
    ['--trust-bundle-url', endpoints],
  ] as const) {
    const seen = new Set<string>();
    for (const { trustDomain } of list) {
      if (seen.has(trustDomain)) throw new ConfigError(`${flag}: trust domain ${trustDomain} given twice`);
      seen.add(trustDomain);
    }
  }
  const configured = new Set([...files, ...endpoints].map((b) => b.trustDomain));
  for (const e of endpoints) {
    const serverTd = e.endpointTrustDomain;
    if (serverTd !== undefined && !configured.has(serverTd) && !workloadApi)
      throw new ConfigError(
        `--trust-bundle-url ${e.trustDomain}: https_spiffe needs a bundle for ${serverTd} to authenticate ` +
          `${e.endpointId} (add --trust-bundle ${serverTd}=FILE, or --spiffe-socket)`,
      );
  }
  const verify = v['verify-peer-chain'];
  if (verify !== 'on' && verify !== 'off') throw new ConfigError('--verify-peer-chain takes on or off');
  if (verify === 'on' && configured.size === 0 && !workloadApi)
    throw new ConfigError(
      '--verify-peer-chain on needs trust bundles: --trust-bundle, --trust-bundle-url or --spiffe-socket',
    );
  return { trustBundleFiles: files, trustBundleEndpoints: endpoints, verifyPeerChain: verify === 'on' };
}

/** `{ [key]: value }` when the value is there, `{}` otherwise (exactOptionalPropertyTypes-friendly). */
function defined<K extends string, T>(key: K, value: T | undefined): { [P in K]?: T } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: T };
}

/** "250ms", "10s", "1m", or a bare number of milliseconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  if (!m) return undefined;
  const n = Number(m[1]) * (m[2] === 's' ? 1000 : m[2] === 'm' ? 60_000 : 1);
  return Number.isFinite(n) ? Math.round(n) : undefined;
}

function duration(flag: string, text: string): number {
  const ms = parseDuration(text);
  if (ms === undefined || ms <= 0)
    throw new ConfigError(`${flag} "${text}": expected a duration such as 500ms, 10s or 1m`);
  return ms;
}

function integer(flag: string, text: string, min: number): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min) throw new ConfigError(`${flag} must be an integer of at least ${min}`);
  return n;
}

/** SIGTERM's default grace period, for callers of the service that do not pass one. */
export const DEFAULT_GRACE_MS = parseDuration(SERVE_OPTIONS['shutdown-grace'].default)!;
