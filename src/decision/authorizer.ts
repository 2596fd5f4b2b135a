// The pipeline every caller runs: evidence → identity → input → policy → decision → log entry.
// Transports only translate their wire format to and from these calls.
import type { FailureCode } from '../common/result.js';
import { decide, policyFailure, type Decision, type PolicySource } from './decision.js';
import { correlationOf, REQUEST_ID_HEADER, TRACEPARENT_HEADER } from './correlation.js';
import { decisionLogEntry, type Correlation, type DecisionSink } from './decision-log.js';
import { resolveIdentity, type ChainCheck, type PeerEvidence } from '../identity/identity.js';
import { trustedHeaderEvidence } from '../identity/trusted-header.js';
import {
  buildCliInput,
  buildEnvoyInput,
  buildSidebandInput,
  parseDestination,
  requestHeaders,
  type CheckRequest,
  type Peer,
  type PolicyInput,
  type SidebandRequest,
  type Transport,
} from './input.js';

export interface AuthorizerOptions {
  policies: PolicySource;
  sink: DecisionSink;
  /**
   * A request header that carries the client's identity, trusted only because the operator says a
   * verifier in front of us sets it (e.g. `x-forwarded-client-cert` from an Envoy that terminated mTLS
   * and sanitises it). Off by default: a client can set any header.
   */
  trustedIdentityHeader?: string;
  /** with XFCC: the element must carry `By=` naming one of these proxies (their own SPIFFE IDs) */
  trustedProxies?: readonly string[];
  now?: () => Date;
  /**
   * Time one check may take from evidence to decision. An answer later than this is a deny, whatever
   * the policy said: a slow allow must not turn into an allow Envoy has already given up on.
   */
  checkDeadlineMs?: number;
  /**
   * Trust bundles to verify peer chains against (a ChainVerifier over an X509BundleSet). With it, every
   * sideband and CLI certificate must chain to the bundle of its leaf's trust domain; Envoy's only with
   * `verifyEnvoyChain`, since Envoy already verified the peer in its own TLS handshake.
   */
  chainVerifier?: ChainCheck;
  verifyEnvoyChain?: boolean;
  /** sees each input and its live decision after the answer is made (shadow policy); must not throw */
  shadow?: (input: PolicyInput, live: Decision) => void;
  /** told of every check as it ends (metrics); must not throw */
  observer?: PipelineObserver;
}

/** How long a check took, from when the transport read it (or from the call) to its decision. */
export interface CheckTiming {
  seconds: number;
}

/**
 * What the pipeline reports to whoever counts it (service/metrics.ts implements it): the counting sits
 * beside the pipeline, which knows nothing of Prometheus.
 */
export interface PipelineObserver {
  /** a decision was made and handed to the sink */
  onDecision(decision: Decision, timing: CheckTiming): void;
  /** the pipeline threw (a bug, never an input): the transport answers an internal error */
  onInternalError(transport: Transport, timing: CheckTiming): void;
}

export class Authorizer {
  private readonly trustedHeader: string | undefined;
  private readonly now: () => Date;

  constructor(private readonly opts: AuthorizerOptions) {
    this.trustedHeader = opts.trustedIdentityHeader?.toLowerCase();
    this.now = opts.now ?? (() => new Date());
  }

  /** receivedAt: performance.now() when the transport read the request (the deadline counts from there) */
  checkEnvoy(req: CheckRequest, receivedAt?: number): Decision {
    return this.run(
      'envoy',
      () => {
        const http = req.attributes?.request?.http;
        const headers = http ? requestHeaders(http) : {};
        const evidence = peerEvidence(req.attributes?.source);
        if (this.trustedHeader) {
          const value = headers[this.trustedHeader];
          if (value !== undefined)
            Object.assign(evidence, trustedHeaderEvidence(this.trustedHeader, value, this.opts.trustedProxies));
        }
        return {
          evidence,
          verifyChain: this.opts.verifyEnvoyChain === true,
          build: (id, err) => buildEnvoyInput(req, id, err),
          correlation: { requestId: headers[REQUEST_ID_HEADER], traceparent: headers[TRACEPARENT_HEADER] },
        };
      },
      receivedAt,
    );
  }

  /** receivedAt: as for checkEnvoy */
  checkSideband(req: SidebandRequest, receivedAt?: number): Decision {
    return this.run(
      'sideband',
      () => ({
        evidence: { certificatePem: req.certificatePem },
        verifyChain: true,
        build: (id, err) => buildSidebandInput(req, id, err),
        correlation: { requestId: req.requestId, traceparent: req.headers[TRACEPARENT_HEADER] },
      }),
      receivedAt,
    );
  }

  /** `eval`: a SPIFFE ID or certificate given by an operator, or a whole input document. */
  checkCli(request: {
    spiffeId?: string;
    certificatePem?: string;
    destination?: string;
    input?: Record<string, unknown>;
  }): Decision {
    return this.run('cli', () => {
      if (request.input) {
        // The identity in an input file is recomputed from its attributes, exactly as for Envoy, so an
        // input file cannot claim an identity that the certificate or principal does not prove.
        const check = { attributes: (request.input.attributes ?? {}) as CheckRequest['attributes'] };
        const decisionInput = (id: PolicyInput['identity'], err: string | undefined): PolicyInput => {
          const base = buildEnvoyInput(check, id, err);
          const input: PolicyInput = {
            ...request.input,
            ...base,
            caller: 'cli',
            attributes: request.input!.attributes ?? base.attributes,
          };
          if (request.destination !== undefined) input.destination = parseDestination(request.destination);
          return input;
        };
        return {
          evidence: peerEvidence(check.attributes?.source),
          verifyChain: check.attributes?.source?.certificate !== undefined,
          build: decisionInput,
          correlation: {},
        };
      }
      const evidence: PeerEvidence = {};
      if (request.spiffeId !== undefined) evidence.principal = request.spiffeId;
      if (request.certificatePem !== undefined) evidence.certificatePem = request.certificatePem;
      return {
        evidence,
        verifyChain: request.certificatePem !== undefined,
        build: (id, err) => buildCliInput(request.destination ?? '', id, err),
        correlation: {},
      };
    });
  }

  private run(transport: Transport, prepare: () => Prepared, receivedAt?: number): Decision {
    const started = receivedAt ?? performance.now();
    const observer = this.opts.observer;
    if (!observer) return this.decideOnce(transport, prepare, started);
    let decision: Decision;
    try {
      decision = this.decideOnce(transport, prepare, started);
    } catch (err) {
      observer.onInternalError(transport, { seconds: (performance.now() - started) / 1000 });
      throw err;
    }
    observer.onDecision(decision, { seconds: (performance.now() - started) / 1000 });
    return decision;
  }

  private decideOnce(transport: Transport, prepare: () => Prepared, started: number): Decision {
    let input: PolicyInput;
    let identityFailure: FailureCode | undefined;
    let correlation: Correlation = {};
    try {
      const prepared = prepare();
      correlation = correlationOf(prepared.correlation.requestId, prepared.correlation.traceparent);
      const verifier = prepared.verifyChain ? this.opts.chainVerifier : undefined;
      const identity = resolveIdentity(prepared.evidence, this.now(), verifier ? { verifyChain: verifier } : {});
      if (identity.ok) {
        input = prepared.build(identity.value, undefined);
      } else {
        input = prepared.build(null, identity.reason);
        identityFailure = identity.code;
      }
    } catch {
      // Decoded protos cannot get here; JSON documents (`eval --input`) with values of the wrong type
      // can. No identity, so decide() denies without asking the policy.
      input = {
        caller: transport,
        identity: null,
        identity_error: 'malformed request: a field has the wrong type',
        destination: { host: '' },
      };
      identityFailure = 'malformed';
    }
    const deadline = this.opts.checkDeadlineMs;
    const policy = this.opts.policies.current;
    let decision: Decision;
    if (deadline !== undefined && performance.now() - started > deadline) {
      // Already late (it waited behind a slow evaluation): the caller has given up, so the policy is not
      // run at all. Evaluating such a backlog is what kept a slow policy's service unavailable for
      // tens of seconds after the policy was fixed (npm run chaos, slow policy).
      decision = lateDeny(decide(input, undefined, identityFailure), deadline);
      decision.policy_revision = policy?.revision ?? '';
    } else {
      decision = decide(input, policy, identityFailure);
      if (deadline !== undefined && performance.now() - started > deadline) decision = lateDeny(decision, deadline);
    }
    this.opts.sink(decisionLogEntry(decision, correlation), decision);
    this.opts.shadow?.(input, decision);
    return decision;
  }
}

/** What a transport collected, and how to build its input document once the identity is known. */
interface Prepared {
  evidence: PeerEvidence;
  /** whether this caller's certificate must chain to a trust bundle (when bundles are configured) */
  verifyChain: boolean;
  build: (identity: PolicyInput['identity'], error: string | undefined) => PolicyInput;
  /** raw values as the transport found them: correlationOf() bounds and checks them */
  correlation: { requestId?: unknown; traceparent?: unknown };
}

function lateDeny(d: Decision, deadlineMs: number): Decision {
  const reason = `check exceeded its deadline of ${deadlineMs}ms`;
  return policyFailure(d, reason, reason);
}

/**
 * What Envoy says it verified about the downstream peer: its certificate and principal. The certificate
 * stays URL-encoded as Envoy sends it: the SVID parser decodes it, and its cache is keyed on these exact
 * bytes, so a repeat caller costs no decoding at all.
 */
function peerEvidence(source: Peer | undefined): PeerEvidence {
  const evidence: PeerEvidence = {};
  if (source?.principal) evidence.principal = source.principal;
  if (source?.certificate) evidence.certificatePem = source.certificate;
  return evidence;
}
