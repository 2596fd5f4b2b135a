// The one CheckRequest every gRPC run sends, shaped like what Envoy's ext_authz filter sends for a
// bookinfo productpage call over mTLS (include_peer_certificate on), and a probe that sends it once
// and says whether the answer is the expected allow.
import * as grpc from '@grpc/grpc-js';
import { BOOKINFO_ID, GATEWAY_ID } from './pki.mjs';
import { loadAuthorizationService } from './ext-authz-proto.mjs';

export const DESTINATION_HOST = 'legacy.bookinfo.example';
export const EXPECTED_POOL = 'bookinfo_snat';

/**
 * Field names as in the .proto (proto-loader keepCase; ghz's protojson reader accepts them too).
 * Defaults: the bookinfo productpage calling DESTINATION_HOST; the warm and cold workloads pass others.
 */
export function checkRequest(clientCertPem, { principal = BOOKINFO_ID, host = DESTINATION_HOST } = {}) {
  const path = '/api/v1/orders';
  return {
    attributes: {
      source: {
        address: { socket_address: { address: '127.0.0.1', port_value: 43718 } },
        principal,
        certificate: encodeURIComponent(clientCertPem),
      },
      destination: {
        address: { socket_address: { address: '127.0.0.1', port_value: 3128 } },
        principal: GATEWAY_ID,
      },
      request: {
        http: {
          id: '7733264120951513434',
          method: 'GET',
          headers: {
            ':authority': host,
            ':method': 'GET',
            ':path': path,
            ':scheme': 'http',
            'user-agent': 'curl/8.5.0',
            'x-request-id': '6f1c2d4e-9a7b-4c3d-8e2f-0a1b2c3d4e5f',
          },
          path,
          host,
          scheme: 'http',
          protocol: 'HTTP/1.1',
        },
      },
    },
  };
}

function headerValue(okResponse, name) {
  for (const h of okResponse?.headers ?? []) {
    if (h?.header?.key?.toLowerCase() === name) return h.header.value;
  }
  return undefined;
}

/** One Check; resolves to null when it is the expected allow, else to what was wrong. */
export function probeAllow(addr, request, timeoutMs = 2000) {
  const Authorization = loadAuthorizationService();
  const client = new Authorization(addr, grpc.credentials.createInsecure());
  return new Promise((resolve) => {
    client.Check(request, { deadline: Date.now() + timeoutMs }, (err, res) => {
      client.close();
      if (err) return resolve(`gRPC error ${err.code}: ${err.details}`);
      const code = res?.status?.code ?? 0;
      if (code !== 0) return resolve(`denied (status ${code}): ${JSON.stringify(res.denied_response ?? {})}`);
      const pool = headerValue(res.ok_response, 'x-egress-snat-pool');
      if (pool !== EXPECTED_POOL) return resolve(`allowed without x-egress-snat-pool: ${EXPECTED_POOL} (got ${pool})`);
      resolve(null);
    });
  });
}

/** Polls until the server answers the expected allow; throws with the last problem after timeoutMs. */
export async function waitForAllow(addr, request, timeoutMs = 30_000, isAlive = () => true) {
  const until = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < until) {
    if (!isAlive()) throw new Error(`server exited before it was ready (${last})`);
    last = (await probeAllow(addr, request)) ?? null;
    if (last === null) return;
    // A server that answers with a deny is up and wrong: waiting will not fix that.
    if (/^(denied|allowed without)/.test(last)) throw new Error(`readiness probe: ${last}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`not ready after ${timeoutMs} ms: ${last}`);
}
