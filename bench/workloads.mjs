// The warm and cold workloads' requests: every identity (bench/identities.mjs) × DESTINATIONS, in an
// order that interleaves identities and destinations, so consecutive Checks share neither; half of the
// identities are denied by the default policy (and by the peer's policies). Written for both load
// generators (bench/load.mjs), which send them round-robin: for ghz a JSON array of CheckRequests, for
// bench/loadgen the same requests encoded once.
import { writeFileSync } from 'node:fs';
import { checkRequest } from './check-request.mjs';
import { loadAuthorizationService } from './ext-authz-proto.mjs';

export const DESTINATIONS = ['legacy.bookinfo.example', 'api.partner.example', 'reports.internal.example'];

/** [{request, allowed}] for every identity × destination. */
export function workloadRequests(ids) {
  const out = [];
  for (const host of DESTINATIONS) {
    for (const id of ids) {
      out.push({ request: checkRequest(id.certPem, { principal: id.spiffeId, host }), allowed: id.allowed });
    }
  }
  return out;
}

/**
 * Writes CheckRequests (plain objects, field names as in the .proto) for both load generators:
 * `${base}.json` for ghz, `${base}.bin` for loadgen (each request a 4-byte big-endian length and the
 * request encoded by proto-loader, as a grpc-js client would send it). Returns {json, bin, count}.
 */
export function writeRequestFiles(base, requests) {
  const serialize = loadAuthorizationService().service.Check.requestSerialize;
  const records = requests.flatMap((request) => {
    const body = serialize(request);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length);
    return [head, body];
  });
  const files = { json: `${base}.json`, bin: `${base}.bin`, count: requests.length };
  writeFileSync(files.json, JSON.stringify(requests));
  writeFileSync(files.bin, Buffer.concat(records));
  return files;
}
