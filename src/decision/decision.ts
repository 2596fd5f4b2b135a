// The decision step: one function for every caller (gRPC, sideband, CLI). It turns the policy's answer
// into a Decision and enforces the invariants that no policy may break: no identity, no allow; a SNAT
// pool name is something a BIG-IP or an Envoy cluster name can carry safely; a deny is never a 2xx.
import type { FailureCode } from '../common/result.js';
import { randomUuid } from '../common/uuid.js';
import type { Identity } from '../identity/identity.js';
import type { PolicyInput, Transport } from './input.js';
import type { LoadedPolicy, PolicyResult } from '../policy/policy.js';

/** What kind of answer a decision is: the label metrics count by, and what statuses are chosen from. */
export const REASON_CLASSES = ['allowed', 'identity', 'policy_deny', 'policy_error', 'internal'] as const;
export type ReasonClass = (typeof REASON_CLASSES)[number];

export interface Decision {
  decision_id: string;
  caller: Transport;
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
  reason_class: ReasonClass;
  /** why a deny that is not the policy's own answer happened (identity refused, policy failed, …) */
  failure_code?: FailureCode;
  /**
   * Set only when this answer is the policy's and a function of these input fields and its data alone
   * (a deterministic policy with a known footprint, input-footprint.ts): a caller may then reuse it for
   * the same fields, e.g. the iRule's cache. Absent: do not reuse.
   */
  input_keys?: readonly string[];
}

/** Where the live policy is read from; hot reload swaps `current` atomically. */
export interface PolicySource {
  readonly current: LoadedPolicy | undefined;
}

const SNAT_POOL = /^[A-Za-z0-9_.\-/]{1,128}$/;
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$/;
const MAX_HEADER_VALUE = 1024;
const MAX_BODY = 4096;
const PRINTABLE_LINE = /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/;

/**
 * `identityFailure`: the code of the identity step's refusal when `input.identity` is null (its reason
 * is `input.identity_error`).
 */
export function decide(
  input: PolicyInput,
  policy: LoadedPolicy | undefined,
  identityFailure: FailureCode = 'missing',
): Decision {
  const d = newDecision(input, policy);
  if (!input.identity) return deny(d, input.identity_error ?? 'no client identity', 'identity', identityFailure);
  if (!policy) return policyFailure(d, 'no policy loaded', 'no policy loaded');
  const started = performance.now();
  const result = policy.evaluate(input);
  d.eval_ms = performance.now() - started;
  if (!result.ok) return policyFailure(d, `policy error: ${result.reason}`, result.reason);
  const footprint = policy.inputFootprint;
  if (footprint?.deterministic && footprint.keys) d.input_keys = footprint.keys;
  return applyPolicyResult(d, result.value);
}

/** A decision the policy could not give (error, undefined result, too slow): a deny logged as an error. */
export function policyFailure(d: Decision, reason: string, policyError: string): Decision {
  d.headers = NO_HEADERS;
  delete d.input_keys;
  d.policy_error = policyError;
  return deny(d, reason, 'policy_error', 'policy');
}

/** The answer when the pipeline itself failed (a bug, never an input): deny, with no decision id. */
export function internalErrorDecision(transport: Transport): Decision {
  const d = newDecision({ caller: transport, identity: null, destination: { host: '' } }, undefined);
  d.decision_id = '';
  return deny(d, 'internal error', 'internal', 'invalid');
}

// Decisions are built as one literal and then filled in: object spread of a partly built decision
// costs microseconds per Check in V8, which the profile showed on the hot path.
function newDecision(input: PolicyInput, policy: LoadedPolicy | undefined): Decision {
  return {
    decision_id: randomUuid(),
    caller: input.caller,
    allow: false,
    snat_pool: '',
    reason: '',
    http_status: 403,
    headers: NO_HEADERS,
    body: '',
    identity: input.identity,
    destination: formatDestination(input),
    policy_revision: policy?.revision ?? '',
    eval_ms: 0,
    reason_class: 'policy_deny',
  };
}

const NO_HEADERS: Record<string, string> = Object.freeze({});

function applyPolicyResult(d: Decision, r: PolicyResult): Decision {
  if (r.headers) d.headers = safeHeaders(r.headers);
  if (!r.allow) {
    d.reason_class = 'policy_deny';
    d.reason = oneLine(r.reason) || 'denied by policy';
    d.http_status = r.http_status !== undefined && r.http_status >= 400 && r.http_status <= 599 ? r.http_status : 403;
    d.body = clip(r.body ?? d.reason, MAX_BODY);
    return d;
  }
  if (r.snat_pool !== '' && !SNAT_POOL.test(r.snat_pool)) {
    return policyFailure(d, 'policy returned an invalid snat_pool name', 'invalid snat_pool');
  }
  d.allow = true;
  d.reason_class = 'allowed';
  d.snat_pool = r.snat_pool;
  d.reason = oneLine(r.reason) || 'allowed by policy';
  d.http_status = 200;
  return d;
}

// The one way a decision becomes a deny that the policy did not write itself.
function deny(d: Decision, reason: string, reasonClass: ReasonClass, code: FailureCode): Decision {
  d.allow = false;
  d.snat_pool = '';
  d.reason = oneLine(reason);
  d.http_status = 403;
  d.body = d.reason;
  d.reason_class = reasonClass;
  d.failure_code = code;
  return d;
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
  if (PRINTABLE_LINE.test(text)) return clip(text, 256);
  return clip(text.replace(/[^\x20-\x7e]+/g, ' ').trim(), 256);
}

function clip(s: string, n: number): string {
  return s.length <= n ? s : s.slice(0, n);
}
