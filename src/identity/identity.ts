// The caller's identity, from the evidence a transport collected about its peer. Syntax and shape
// only: which trust domains and namespaces are welcome is the policy's decision, so every valid
// identity of any trust domain is returned, and anything not provably valid is a reason to deny.
import { fail, ok, withCode, type Failure, type Result } from '../common/result.js';
import { parseSpiffeId, type SpiffeId } from './spiffe-id.js';
import { parseX509SvidIdPem } from './x509-svid.js';

export type IdentitySource = 'certificate' | 'principal' | 'header';

export interface Identity {
  spiffe_id: string;
  trust_domain: string;
  /** "" or "/seg/…" */
  path: string;
  /** only for Istio-shaped paths, /ns/<namespace>/sa/<service account> */
  namespace?: string;
  service_account?: string;
  /** the strongest evidence the identity came from */
  source: IdentitySource;
}

export interface PeerEvidence {
  /** the peer's certificate chain as PEM, leaf first (Envoy's URL-encoded form is accepted too) */
  certificatePem?: string;
  /** Envoy's `source.principal`: the URI SAN of a verified peer, or its subject DN when it has none */
  principal?: string;
  /** an identity header; the transport passes it only when the operator chose to trust such headers */
  headerSpiffeId?: string;
  /** the client certificate a trusted header carried (XFCC `Cert=`): validated like `certificatePem` */
  headerCertificatePem?: string;
  /** why the trusted header could not be read: a deny, whatever else the evidence says */
  headerError?: Failure;
}

const LABEL: Record<IdentitySource, string> = {
  certificate: 'certificate SPIFFE ID',
  principal: 'source principal',
  header: 'header SPIFFE ID',
};

/** Checks a certificate chain against trust bundles (ChainVerifier); the identity step only calls it. */
export interface ChainCheck {
  verifyPem(pem: string, trustDomain: string, now: Date): Result<unknown>;
}

export interface ResolveOptions {
  /**
   * When set, the certificate evidence must be present and its chain must verify against the bundle of
   * the leaf's trust domain; otherwise the certificate's shape is checked and its issuer is the
   * transport's business (a TLS terminator that already verified it).
   */
  verifyChain?: ChainCheck;
}

export function resolveIdentity(
  evidence: PeerEvidence,
  now: Date = new Date(),
  opts: ResolveOptions = {},
): Result<Identity> {
  for (const source of SOURCES) {
    const value = evidenceOf(evidence, source);
    // Typed callers cannot do this, but --input documents and other JSON can: fail closed.
    if (value !== undefined && value !== null && typeof value !== 'string')
      return fail(`${source} evidence is not a string`, 'malformed');
  }

  if (evidence.headerError !== undefined) return evidence.headerError;
  if (evidence.headerCertificatePem !== undefined && typeof evidence.headerCertificatePem !== 'string')
    return fail('header evidence is not a string', 'malformed');

  // One claim per source at most, strongest first: the first names the identity, every other one must
  // agree with it. Locals rather than an array of claims: this runs on every Check.
  let certificateId: SpiffeId | undefined;
  let principalId: SpiffeId | undefined;
  let headerId: SpiffeId | undefined;
  if (present(evidence.certificatePem)) {
    const id = parseX509SvidIdPem(evidence.certificatePem, now);
    if (!id.ok) return id;
    if (opts.verifyChain) {
      const chain = opts.verifyChain.verifyPem(evidence.certificatePem, id.value.trustDomain, now);
      if (!chain.ok) return withCode(chain, 'chain');
    }
    certificateId = id.value;
  }
  const principal = evidence.principal;
  if (present(principal)) {
    // Envoy's principal is the URI SAN of the very certificate: the same text was parsed by the same
    // parser (and refused as a trust domain ID) when the certificate was, so its ID is reused as is.
    if (certificateId !== undefined && principal === certificateId.uri) principalId = certificateId;
    else {
      const id = claimedId(principal, 'principal');
      if (!id.ok) return id;
      principalId = id.value;
    }
  }
  if (present(evidence.headerSpiffeId)) {
    const id = claimedId(evidence.headerSpiffeId, 'header');
    if (!id.ok) return id;
    headerId = id.value;
  }

  if (present(evidence.headerCertificatePem)) {
    const svid = parseX509SvidIdPem(evidence.headerCertificatePem, now);
    if (!svid.ok) return fail(`header certificate: ${svid.reason}`, svid.code);
    // The header's URI is what its proxy read off this very certificate: anything else is a forgery.
    if (headerId !== undefined && headerId.uri !== svid.value.uri)
      return fail('header SPIFFE ID does not match the header certificate', 'mismatch');
    headerId ??= svid.value;
  }

  if (opts.verifyChain && !present(evidence.certificatePem))
    return fail('certificate chain not verified: no peer certificate was sent', 'chain');
  const first = certificateId ?? principalId ?? headerId;
  if (first === undefined) return fail('no client identity', 'missing');
  const firstSource: IdentitySource =
    first === certificateId ? 'certificate' : first === principalId ? 'principal' : 'header';
  // Both sides were parsed strictly (canonical lowercase form), so byte equality is identity equality.
  const disagreeing =
    principalId !== undefined && principalId.uri !== first.uri
      ? 'principal'
      : headerId !== undefined && headerId.uri !== first.uri
        ? 'header'
        : undefined;
  if (disagreeing !== undefined) return fail(`${LABEL[firstSource]} and ${LABEL[disagreeing]} differ`, 'mismatch');
  return identityResult(first, firstSource);
}

const SOURCES = ['certificate', 'principal', 'header'] as const;

/** A principal or header SPIFFE ID: a workload's, or a reason to deny. */
function claimedId(text: string, source: 'principal' | 'header'): Result<SpiffeId> {
  const id = parseSpiffeId(text);
  if (!id.ok) {
    // A subject DN (what Envoy reports for a certificate without a URI SAN) lands here.
    return fail(
      text.startsWith('spiffe://') ? `${LABEL[source]}: ${id.reason}` : `${LABEL[source]} is not a SPIFFE ID`,
      'spiffe_id',
    );
  }
  // A trust domain's root ID names no workload; a certificate with one never gets here (x509-svid.ts).
  if (id.value.path === '') return fail(`${LABEL[source]} is a trust domain ID, not a workload identity`, 'spiffe_id');
  return id;
}

// The answer for a certificate's ID, built once while that ID is in use: a cached certificate hands out
// the same frozen SpiffeId every Check (x509-svid.ts), so its frozen Identity is reused rather than
// rebuilt. Weak keys: an entry lives no longer than the certificate cache's memo keeps its ID. Other
// sources parse a new SpiffeId each Check, so memoising on them would only churn the map.
const certificateIdentities = new WeakMap<SpiffeId, Result<Identity>>();

function identityResult(id: SpiffeId, source: IdentitySource): Result<Identity> {
  if (source !== 'certificate') return ok(toIdentity(id, source));
  let result = certificateIdentities.get(id);
  if (result === undefined) {
    result = Object.freeze(ok(toIdentity(id, source)));
    certificateIdentities.set(id, result);
  }
  return result;
}

/**
 * The policy's view of a SPIFFE ID; namespace and service account only for exactly /ns/<ns>/sa/<sa>.
 * Frozen: resolveIdentity may hand the same one to many Checks' policy inputs and decisions.
 */
export function toIdentity(id: SpiffeId, source: IdentitySource): Identity {
  const identity: Identity = { spiffe_id: id.uri, trust_domain: id.trustDomain, path: id.path, source };
  const segments = id.path.split('/');
  // "/ns/a/sa/b".split('/') → ['', 'ns', 'a', 'sa', 'b']; parseSpiffeId already refused empty segments.
  if (segments.length === 5 && segments[1] === 'ns' && segments[3] === 'sa') {
    identity.namespace = segments[2];
    identity.service_account = segments[4];
  }
  return Object.freeze(identity);
}

function evidenceOf(evidence: PeerEvidence, source: IdentitySource): unknown {
  if (source === 'certificate') return evidence.certificatePem;
  return source === 'principal' ? evidence.principal : evidence.headerSpiffeId;
}

function present(value: unknown): value is string {
  return typeof value === 'string' && value !== '';
}
