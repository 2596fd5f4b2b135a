// One JSON line per decision, shared by every transport (the logger adds `time`). The entry names the identity, never the
// certificate; the correlation fields let an Envoy access log or a BIG-IP log line be joined to it.
import type { Decision } from './decision.js';

export interface Correlation {
  /** x-request-id from Envoy or the iRule (logged as `x_request_id`) */
  requestId?: string;
  traceparent?: string;
}

export interface DecisionLogEntry {
  decision_id: string;
  caller: string;
  spiffe_id: string;
  namespace: string;
  allow: boolean;
  snat_pool: string;
  reason: string;
  /** allowed | identity | policy_deny | policy_error | internal */
  reason_class: string;
  destination: string;
  x_request_id: string;
  traceparent: string;
  policy_revision: string;
  eval_ms: number;
  policy_error?: string;
  /** the class of a refusal that was not the policy's own deny: pem, svid, validity, mismatch, … */
  failure_code?: string;
}

export function decisionLogEntry(d: Decision, c: Correlation): DecisionLogEntry {
  const entry: DecisionLogEntry = {
    decision_id: d.decision_id,
    caller: d.caller,
    spiffe_id: d.identity?.spiffe_id ?? '',
    namespace: d.identity?.namespace ?? '',
    allow: d.allow,
    snat_pool: d.snat_pool,
    reason: d.reason,
    reason_class: d.reason_class,
    destination: d.destination,
    x_request_id: c.requestId ?? '',
    traceparent: c.traceparent ?? '',
    policy_revision: d.policy_revision,
    eval_ms: Math.round(d.eval_ms * 1000) / 1000,
  };
  if (d.policy_error !== undefined) entry.policy_error = d.policy_error;
  if (d.failure_code !== undefined) entry.failure_code = d.failure_code;
  return entry;
}

/** Where decision log entries go; the serve command binds it to pino, tests to an array. */
export type DecisionSink = (entry: DecisionLogEntry, decision: Decision) => void;
