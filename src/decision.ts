// The decision step: one function for every caller (gRPC, sideband, CLI). It turns the policy's answer
// into a Decision and enforces the invariants that no policy may break: no identity, no allow; a SNAT
// pool name is something a BIG-IP or an Envoy cluster name can carry safely; a deny is never a 2xx.
import { randomUUID } from 'node:crypto';
import type { Identity } from './identity.js';
import type { Caller, PolicyInput } from './input.js';
import type { LoadedPolicy, PolicyResult } from './policy.js';

export interface Decision {
  decision_id: string;
  caller: Caller;
  allow: boolean;
  /** "" when denied */
  snat_pool: string;
  reason: string;
  /** 200 on allow; the policy's 4xx/5xx or 403 on deny */
  http_status: number;
  /** extra headers the policy asked for (on the upstream request when allowed, on the answer when denied) */
  headers: Record<string, string>;
  /** body for a denied answer */
  body: string;
  identity: Identity | null;
  destination: string;
  policy_revision: string;
  eval_ms: number;
  /** set when the policy could not give an answer (error, undefined, too slow): logged at error level */
  policy_error?: string;
}

/** Where the live policy is read from; hot reload swaps `current` atomically. */
export interface PolicySource {
  readonly current: LoadedPolicy | undefined;
}

const SNAT_POOL = /^[A-Za-z0-9_.\-/]{1,128}$/;
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$/;
const MAX_HEADER_VALUE = 1024;
const MAX_BODY = 4096;

export function decide(input: PolicyInput, policy: LoadedPolicy | undefined): Decision {
  const base = {
    decision_id: randomUUID(),
    caller: input.caller,
    identity: input.identity,
    destination: formatDestination(input),
    policy_revision: policy?.revision ?? '',
  };
  if (!input.identity) {
    return deny(base, input.identity_error ?? 'no client identity', 0);
  }
  if (!policy) {
    return deny(base, 'no policy loaded', 0, { policy_error: 'no policy loaded' });
  }
  const started = performance.now();
  const result = policy.evaluate(input);
  const evalMs = performance.now() - started;
  if (!result.ok) {
    return deny(base, `policy error: ${result.reason}`, evalMs, { policy_error: result.reason });
  }
  return fromPolicyResult(base, result.value, evalMs);
}

type Base = Pick<Decision, 'decision_id' | 'caller' | 'identity' | 'destination' | 'policy_revision'>;

function fromPolicyResult(base: Base, r: PolicyResult, evalMs: number): Decision {
  const headers = safeHeaders(r.headers);
  if (!r.allow) {
    const status = r.http_status !== undefined && r.http_status >= 400 && r.http_status <= 599 ? r.http_status : 403;
    const reason = oneLine(r.reason) || 'denied by policy';
    return { ...base, allow: false, snat_pool: '', reason, http_status: status, headers, body: clip(r.body ?? reason, MAX_BODY), eval_ms: evalMs };
  }
  if (r.snat_pool !== '' && !SNAT_POOL.test(r.snat_pool)) {
    return deny(base, 'policy returned an invalid snat_pool name', evalMs, { policy_error: 'invalid snat_pool' });
  }
  return { ...base, allow: true, snat_pool: r.snat_pool, reason: oneLine(r.reason) || 'allowed by policy', http_status: 200, headers, body: '', eval_ms: evalMs };
}

function deny(base: Base, reason: string, evalMs: number, extra: Partial<Decision> = {}): Decision {
  const r = oneLine(reason);
  return { ...base, allow: false, snat_pool: '', reason: r, http_status: 403, headers: {}, body: r, eval_ms: evalMs, ...extra };
}

function formatDestination(input: PolicyInput): string {
  const d = input.destination;
  if (!d || !d.host) return '';
  const host = d.host.includes(':') ? `[${d.host}]` : d.host;
  return d.port === undefined ? host : `${host}:${d.port}`;
}

function safeHeaders(h: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!h) return out;
  for (const [k, v] of Object.entries(h)) {
    // Our own headers are set by the transports from the decision; a policy cannot forge them.
    if (!HEADER_NAME.test(k) || k.toLowerCase().startsWith('x-egress-')) continue;
    out[k.toLowerCase()] = clip(oneLine(String(v)), MAX_HEADER_VALUE);
  }
  return out;
}

/** Reasons travel in headers (X-Egress-Reason) and log lines: printable ASCII on one line, bounded. */
export function oneLine(text: string | undefined): string {
  if (!text) return '';
  return clip(text.replace(/[^\x20-\x7e]+/g, ' ').trim(), 256);
}

function clip(s: string, n: number): string {
  return s.length <= n ? s : s.slice(0, n);
}
