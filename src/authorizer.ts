// The pipeline every caller runs: evidence → identity → input → policy → decision → log entry.
// Transports only translate their wire format to and from these calls.
import { decide, type Decision, type PolicySource } from './decision.js';
import { decisionLogEntry, type Correlation, type DecisionSink } from './decision-log.js';
import { resolveIdentity, type PeerEvidence } from './identity.js';
import { buildCliInput, buildEnvoyInput, buildSidebandInput, parseDestination, requestHeaders, type CheckRequest, type Peer, type PolicyInput, type SidebandRequest } from './input.js';

export interface AuthorizerOptions {
  policies: PolicySource;
  sink: DecisionSink;
  /**
   * A request header that carries the client's identity, trusted only because the operator says a
   * verifier in front of us sets it (e.g. `x-forwarded-client-cert` from an Envoy that terminated mTLS
   * and sanitises it). Off by default: a client can set any header.
   */
  trustedIdentityHeader?: string;
  now?: () => Date;
  /** sees each input and its live decision after the answer is made (shadow policy); must not throw */
  shadow?: (input: PolicyInput, live: Decision) => void;
}

export class Authorizer {
  private readonly trustedHeader: string | undefined;
  private readonly now: () => Date;

  constructor(private readonly opts: AuthorizerOptions) {
    this.trustedHeader = opts.trustedIdentityHeader?.toLowerCase();
    this.now = opts.now ?? (() => new Date());
  }

  checkEnvoy(req: CheckRequest): Decision {
    const http = req.attributes?.request?.http;
    const headers = http ? requestHeaders(http) : {};
    const { evidence, evidenceError } = peerEvidence(req.attributes?.source);
    if (this.trustedHeader) {
      const value = headers[this.trustedHeader];
      if (value !== undefined) evidence.headerSpiffeId = headerSpiffeId(this.trustedHeader, value);
    }
    return this.run(evidence, evidenceError, (id, err) => buildEnvoyInput(req, id, err), {
      request_id: headers['x-request-id'],
      traceparent: headers['traceparent'],
    });
  }

  checkSideband(req: SidebandRequest): Decision {
    return this.run({ certificatePem: req.certificatePem }, undefined, (id, err) => buildSidebandInput(req, id, err), {
      request_id: req.requestId,
      traceparent: req.headers['traceparent'],
    });
  }

  /** `eval`: a SPIFFE ID or certificate given by an operator, or a whole input document. */
  checkCli(q: { spiffeId?: string; certificatePem?: string; destination?: string; input?: Record<string, unknown> }): Decision {
    if (q.input) {
      // The identity in an input file is recomputed from its attributes, exactly as for Envoy, so an
      // input file cannot claim an identity that the certificate or principal does not prove.
      const check = { attributes: (q.input.attributes ?? {}) as CheckRequest['attributes'] };
      const decisionInput = (id: PolicyInput['identity'], err: string | undefined): PolicyInput => {
        const base = buildEnvoyInput(check, id, err);
        const input: PolicyInput = { ...q.input, ...base, caller: 'cli', attributes: q.input!.attributes ?? base.attributes };
        if (q.destination !== undefined) input.destination = parseDestination(q.destination);
        return input;
      };
      const { evidence, evidenceError } = peerEvidence(check.attributes?.source);
      return this.run(evidence, evidenceError, decisionInput, {});
    }
    const evidence: PeerEvidence = {};
    if (q.spiffeId !== undefined) evidence.principal = q.spiffeId;
    if (q.certificatePem !== undefined) evidence.certificatePem = q.certificatePem;
    return this.run(evidence, undefined, (id, err) => buildCliInput(q.destination ?? '', id, err), {});
  }

  private run(
    evidence: PeerEvidence,
    evidenceError: string | undefined,
    build: (identity: PolicyInput['identity'], error: string | undefined) => PolicyInput,
    correlation: Correlation,
  ): Decision {
    let input: PolicyInput;
    if (evidenceError) {
      input = build(null, evidenceError);
    } else {
      const identity = resolveIdentity(evidence, this.now());
      input = identity.ok ? build(identity.value, undefined) : build(null, identity.reason);
    }
    const decision = decide(input, this.opts.policies.current);
    this.opts.sink(decisionLogEntry(decision, correlation), decision);
    this.opts.shadow?.(input, decision);
    return decision;
  }
}

/** What Envoy says it verified about the downstream peer: its certificate (URL-encoded PEM) and principal. */
function peerEvidence(source: Peer | undefined): { evidence: PeerEvidence; evidenceError?: string } {
  const evidence: PeerEvidence = {};
  if (source?.principal) evidence.principal = source.principal;
  if (source?.certificate) {
    try {
      evidence.certificatePem = decodeURIComponent(source.certificate);
    } catch {
      return { evidence, evidenceError: 'source certificate is not valid URL-encoded PEM' };
    }
  }
  return { evidence };
}

/**
 * Envoy's x-forwarded-client-cert lists one element per hop, comma-separated, the last added by the
 * proxy closest to us; its URI= field is the client's URI SAN. Any other trusted header carries the
 * SPIFFE ID itself.
 */
function headerSpiffeId(name: string, value: string): string {
  if (name !== 'x-forwarded-client-cert') return value.trim();
  const elements = value.split(',');
  const last = elements[elements.length - 1] ?? '';
  for (const pair of last.split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0 && pair.slice(0, eq).trim().toLowerCase() === 'uri') return pair.slice(eq + 1).trim().replace(/^"|"$/g, '');
  }
  return '';
}
