// Every parser at the security boundary returns a Result instead of throwing, so a bad input can only
// ever become a deny with a reason. A failure carries a code from a closed set besides its sentence:
// metrics, status codes and logs read the code, people read the reason.
export type Result<T> = { readonly ok: true; readonly value: T } | Failure;

export interface Failure {
  readonly ok: false;
  readonly reason: string;
  readonly code: FailureCode;
}

/**
 * Why something was refused, as a class (go-spiffe's sentinel errors, opa-envoy-plugin's error codes).
 * The identity classes are also the `class` label of `egress_authz_identity_rejections_total`.
 */
export const FAILURE_CODES = [
  /** no evidence of an identity at all */
  'missing',
  /** two pieces of evidence name different identities */
  'mismatch',
  /** outside the certificate's validity period */
  'validity',
  /** the certificate text: PEM blocks, base64, URL encoding */
  'pem',
  /** a SPIFFE ID that breaks the SPIFFE ID standard, or is no workload's */
  'spiffe_id',
  /** a certificate that is not an X.509-SVID (DER, extensions, SANs, key usage) */
  'svid',
  /** the chain does not verify against the trust bundle of the leaf's trust domain */
  'chain',
  /** a request field of the wrong type or shape */
  'malformed',
  /** the policy failed to give a usable answer */
  'policy',
  /** anything else: configuration, files */
  'invalid',
] as const;

export type FailureCode = (typeof FAILURE_CODES)[number];

export function ok<T>(value: T): Result<T> {
  return { ok: true, value };
}

export function fail<T = never>(reason: string, code: FailureCode = 'invalid'): Result<T> {
  return { ok: false, reason, code };
}

/** The same failure under another code: a stage names the class of whatever its helpers refused. */
export function withCode<T>(failure: Failure, code: FailureCode): Result<T> {
  return failure.code === code ? failure : { ok: false, reason: failure.reason, code };
}
