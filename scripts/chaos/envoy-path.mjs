// The Envoy path of the chaos run: an egress gateway listener (mTLS, ext_authz over gRPC to
// egress-authz with failure_mode_allow: false) whose route is the SNAT pool ext_authz names, leading to
// a local HTTP server that plays the forward proxy; and a load generator that sends a steady rate of
// requests as two workloads (one allowed, one denied), over HTTP/1.1 keep-alive.
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { mtlsListenerSocket } from '../../bench/envoy.mjs';

export const SNAT_POOL = 'bookinfo_snat';
export const SNAT_ADDRESS = '127.0.0.10';
const SNAT_POOL_HEADER = 'x-egress-snat-pool';
const DECISION_ID_HEADER = 'x-egress-decision-id';
const SEQ_HEADER = 'x-chaos-seq';

const typed = (type, rest = {}) => ({ '@type': `type.googleapis.com/${type}`, ...rest });
const socket = (address, port) => ({ socket_address: { address, port_value: port } });
const staticCluster = (name, address, port, extra = {}) => ({
  name,
  type: 'STATIC',
  connect_timeout: '0.25s',
  load_assignment: {
    cluster_name: name,
    endpoints: [{ lb_endpoints: [{ endpoint: { address: socket(address, port) } }] }],
  },
  ...extra,
});

/** Envoy bootstrap: the seed's gateway (deploy/envoy/egress-gateway.yaml) reduced to what the faults need. */
export function gatewayBootstrap({ adminPort, listenPort, authzPort, authzTimeoutMs, upstreamPort, pki }) {
  const route = { cluster_header: SNAT_POOL_HEADER, timeout: '2s' };
  return {
    admin: { address: socket('127.0.0.1', adminPort) },
    static_resources: {
      listeners: [
        {
          name: 'egress_gateway',
          address: socket('127.0.0.1', listenPort),
          filter_chains: [
            {
              transport_socket: mtlsListenerSocket(pki),
              filters: [
                {
                  name: 'envoy.filters.network.http_connection_manager',
                  typed_config: typed(
                    'envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
                    {
                      stat_prefix: 'egress',
                      http_filters: [
                        {
                          // A client must not choose its own SNAT pool.
                          name: 'envoy.filters.http.header_mutation',
                          typed_config: typed('envoy.extensions.filters.http.header_mutation.v3.HeaderMutation', {
                            mutations: {
                              request_mutations: [{ remove: SNAT_POOL_HEADER }, { remove: DECISION_ID_HEADER }],
                            },
                          }),
                        },
                        {
                          name: 'envoy.filters.http.ext_authz',
                          typed_config: typed('envoy.extensions.filters.http.ext_authz.v3.ExtAuthz', {
                            transport_api_version: 'V3',
                            grpc_service: {
                              envoy_grpc: { cluster_name: 'egress_authz' },
                              timeout: `${authzTimeoutMs / 1000}s`,
                            },
                            include_peer_certificate: true,
                            failure_mode_allow: false,
                            clear_route_cache: true,
                            status_on_error: { code: 'Forbidden' },
                          }),
                        },
                        {
                          name: 'envoy.filters.http.router',
                          typed_config: typed('envoy.extensions.filters.http.router.v3.Router'),
                        },
                      ],
                      route_config: {
                        name: 'egress',
                        virtual_hosts: [
                          { name: 'egress', domains: ['*'], routes: [{ match: { prefix: '/' }, route }] },
                        ],
                      },
                    },
                  ),
                },
              ],
            },
          ],
        },
      ],
      clusters: [
        staticCluster('egress_authz', '127.0.0.1', authzPort, {
          typed_extension_protocol_options: {
            'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': typed(
              'envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
              { explicit_http_config: { http2_protocol_options: {} } },
            ),
          },
        }),
        staticCluster(SNAT_POOL, '127.0.0.1', upstreamPort, {
          upstream_bind_config: { source_address: { address: SNAT_ADDRESS, port_value: 0 } },
        }),
      ],
    },
  };
}

/**
 * The forward proxy stand-in: every request that reaches it has left the gateway. It records when each
 * sequence number arrived and from which source address (the SNAT pool's).
 */
export function startUpstream(now) {
  const seen = new Map(); // seq -> { at, from }
  const server = http.createServer((req, res) => {
    const seq = Number(req.headers[SEQ_HEADER]);
    if (Number.isSafeInteger(seq)) seen.set(seq, { at: now(), from: req.socket.remoteAddress });
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('egress ok\n');
  });
  server.keepAliveTimeout = 30_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: server.address().port,
        seen,
        close: () => new Promise((done) => (server.closeAllConnections(), server.close(() => done()))),
      }),
    );
  });
}

/**
 * A steady rate through the gateway, alternating the two identities. Open loop: each tick sends what
 * is due by the clock, but never more than maxInFlight at once; what cannot be sent (a stalled loop, a
 * full pipe) is counted as missed rather than sent later in a burst, so a loaded machine lowers the
 * rate instead of distorting the fault windows.
 */
export function startLoad({ rate, listenPort, pki, now, maxInFlight = 200, timeoutMs = 3000, record }) {
  const agents = {};
  for (const identity of ['allowed', 'denied']) {
    const svid = pki.clients[identity];
    agents[identity] = new https.Agent({
      keepAlive: true,
      maxSockets: maxInFlight / 2,
      cert: readFileSync(svid.certFile),
      key: readFileSync(svid.keyFile),
      ca: readFileSync(pki.caFile),
      // The gateway's certificate names it by SPIFFE ID only; the chain to the mesh CA is what is checked.
      checkServerIdentity: () => undefined,
    });
  }
  const stats = { sent: 0, missed: 0, inFlight: 0, maxLagMs: 0 };
  let seq = 0;
  let t0 = now();
  let due = 0;
  let lastTick = t0;
  const send = () => {
    const n = ++seq;
    const identity = n % 2 === 0 ? 'allowed' : 'denied';
    const r = { seq: n, path: 'envoy', identity, sent: now(), answered: null, status: null, outcome: null };
    stats.sent++;
    stats.inFlight++;
    let finished = false;
    const finish = (status, denialId) => {
      if (finished) return;
      finished = true;
      stats.inFlight--;
      r.answered = now();
      r.status = status;
      r.decided_by_service = denialId;
      record(r);
    };
    const req = https.request(
      {
        agent: agents[identity],
        host: '127.0.0.1',
        port: listenPort,
        method: 'GET',
        path: `/chaos/${n}`,
        headers: { host: 'legacy.example.test', [SEQ_HEADER]: String(n) },
        timeout: timeoutMs,
      },
      (res) => {
        res.resume();
        res.once('end', () => finish(res.statusCode, Boolean(res.headers[DECISION_ID_HEADER])));
        res.once('error', () => finish('error', false));
      },
    );
    req.once('timeout', () => req.destroy(new Error('timeout')));
    req.once('error', (e) => finish(e.message === 'timeout' ? 'timeout' : 'error', false));
    req.end();
  };
  const timer = setInterval(() => {
    const t = now();
    stats.maxLagMs = Math.max(stats.maxLagMs, t - lastTick);
    lastTick = t;
    const target = Math.floor(((t - t0) / 1000) * rate);
    let owed = target - due;
    // A stalled event loop: what fell more than 50 ms behind is skipped, not sent as a burst.
    const cap = Math.max(1, Math.ceil(rate * 0.05));
    if (owed > cap) {
      stats.missed += owed - cap;
      owed = cap;
    }
    due = target;
    for (let i = 0; i < owed; i++) {
      if (stats.inFlight >= maxInFlight) {
        stats.missed += owed - i;
        break;
      }
      send();
    }
  }, 5);
  return {
    stats,
    get rate() {
      return rate;
    },
    /** A new rate from now on (what was due before is not owed). */
    setRate(next) {
      rate = next;
      t0 = now();
      due = 0;
    },
    /** Stops sending; resolves once every request in flight has its answer (or timed out). */
    async stop() {
      clearInterval(timer);
      const until = now() + timeoutMs + 1000;
      while (stats.inFlight > 0 && now() < until) await new Promise((r) => setTimeout(r, 20));
      for (const a of Object.values(agents)) a.destroy();
    },
  };
}

/** What a finished request amounts to: the upstream's record decides whether it left. */
export function envoyOutcome(r, upstreamSeen) {
  const left = upstreamSeen.get(r.seq);
  if (left) return { ...r, outcome: 'allow', egress: left.at, snat_address: left.from };
  if (r.status === 403) return { ...r, outcome: r.decided_by_service ? 'deny' : 'unavailable' };
  return { ...r, outcome: 'error' };
}
