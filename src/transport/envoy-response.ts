// Decision → CheckResponse, in the field names @grpc/proto-loader expects with keepCase off
// (google.protobuf.Value is `{stringValue}`: a snake_case object would silently encode an empty Value).
// The server writes its bytes with check-response-wire.ts; this object form is the reference those bytes
// are tested against, and what a reader of the contract can follow.
import type { Decision } from '../decision/decision.js';
import { GRPC_DECISION_ID_HEADER, GRPC_SNAT_POOL_HEADER } from './headers.js';

export const CHECK_OK = 0;
export const CHECK_PERMISSION_DENIED = 7;

interface HeaderValueOption {
  header: { key: string; value: string };
  append?: { value: boolean };
}

// `append: false` makes Envoy overwrite: a client that sends its own x-egress-snat-pool cannot pick
// another tenant's cluster.
function header(key: string, value: string): HeaderValueOption {
  return { header: { key, value }, append: { value: false } };
}

function stringValue(v: string): { stringValue: string } {
  return { stringValue: v };
}

export function toCheckResponse(d: Decision): Record<string, unknown> {
  const dynamicMetadata = {
    fields: {
      decision_id: stringValue(d.decision_id),
      spiffe_id: stringValue(d.identity?.spiffe_id ?? ''),
      snat_pool: stringValue(d.snat_pool),
      allow: { boolValue: d.allow },
      policy_revision: stringValue(d.policy_revision),
    },
  };
  const extra = Object.entries(d.headers).map(([k, v]) => header(k, v));
  if (d.allow) {
    const headers = [header(GRPC_DECISION_ID_HEADER, d.decision_id), ...extra];
    if (d.snat_pool) headers.unshift(header(GRPC_SNAT_POOL_HEADER, d.snat_pool));
    return {
      status: { code: CHECK_OK, message: '' },
      okResponse: { headers },
      dynamicMetadata,
    };
  }
  return {
    status: { code: CHECK_PERMISSION_DENIED, message: d.reason },
    deniedResponse: {
      status: { code: d.http_status },
      headers: [header(GRPC_DECISION_ID_HEADER, d.decision_id), header('content-type', 'text/plain'), ...extra],
      body: `${d.body}\n`,
    },
    dynamicMetadata,
  };
}
