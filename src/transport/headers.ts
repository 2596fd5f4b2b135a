// The header names of the answers other people's code reads: the BIG-IP iRule reads the sideband's
// answer with plain string commands, Envoy's route and access log read the gRPC ones. They are contracts
// (docs/design.md), spelled once here (the correlation headers, which the decision step reads, in
// decision/correlation.ts). Node writes a header name as it is given, so the sideband's are
// spelled as the contract writes them; HTTP/2 (gRPC) names are lower case.
import { REQUEST_ID_HEADER } from '../decision/correlation.js';

/** allow | deny */
export const DECISION_HEADER = 'X-Egress-Decision';
/** the SNAT pool of an allow, empty on a deny */
export const SNAT_POOL_HEADER = 'X-Egress-Snat-Pool';
export const DECISION_ID_HEADER = 'X-Egress-Decision-Id';
/** the reason, on one printable line */
export const REASON_HEADER = 'X-Egress-Reason';
/** seconds the iRule may reuse the answer for the same request fields */
export const CACHE_TTL_HEADER = 'X-Egress-Cache-Ttl';

/** The optional request headers the iRule sends beside the certificate, as Node's `req.headers` keys. */
export const SIDEBAND_REQUEST_HEADERS = {
  virtualServer: 'x-egress-virtual-server',
  clientAddress: 'x-egress-client-address',
  destination: 'x-egress-destination',
  requestId: REQUEST_ID_HEADER,
} as const;

/** What gRPC (HTTP/2) carries: the same names, lower case. */
export const GRPC_SNAT_POOL_HEADER = SNAT_POOL_HEADER.toLowerCase();
export const GRPC_DECISION_ID_HEADER = DECISION_ID_HEADER.toLowerCase();
