// The warm and cold workloads' requests: every identity (bench/identities.mjs) × DESTINATIONS, in an
// order that interleaves identities and destinations, so consecutive Checks share neither; half of the
// identities are denied by the default policy (and by the peer's policies). For ghz: a JSON array of
// CheckRequests, which it sends round-robin.
import { writeFileSync } from 'node:fs';
import { checkRequest } from './check-request.mjs';

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

/** Writes the requests as ghz's data file; returns the path. */
export function writeGhzData(file, requests) {
  writeFileSync(file, JSON.stringify(requests.map((r) => r.request)));
  return file;
}
