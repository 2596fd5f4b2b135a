// Path `envoy`: a fixed request rate through real Envoy, with ext_authz (gRPC v3) to one system, or
// without ext_authz as the baseline. One Envoy process (one worker) plays both mesh hops:
//   h2load --HTTP/1.1--> sidecar listener --mTLS as the bookinfo SVID--> gateway listener
//   [ext_authz -> system] --> direct 200 reply.
// The mTLS hop is what gives ext_authz a real source.principal and source.certificate; the baseline
// has the same two hops, only without the ext_authz filter, so the difference is ext_authz's cost.
import { readFileSync, writeFileSync } from 'node:fs';
import { runCommand } from './processes.mjs';
import { DESTINATION_HOST } from './check-request.mjs';

const EXT_AUTHZ = 'envoy.filters.http.ext_authz';
const typed = (type, rest) => ({ '@type': `type.googleapis.com/${type}`, ...rest });
const socket = (hostPort) => {
  const [address, port] = hostPort.split(':');
  return { socket_address: { address, port_value: Number(port) } };
};
const staticCluster = (name, hostPort, extra = {}) => ({
  name,
  type: 'STATIC',
  connect_timeout: '1s',
  load_assignment: { cluster_name: name, endpoints: [{ lb_endpoints: [{ endpoint: { address: socket(hostPort) } }] }] },
  ...extra,
});
const router = {
  name: 'envoy.filters.http.router',
  typed_config: typed('envoy.extensions.filters.http.router.v3.Router'),
};
const hcm = (statPrefix, routeConfig, filters) => ({
  name: 'envoy.filters.network.http_connection_manager',
  typed_config: typed('envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager', {
    stat_prefix: statPrefix,
    route_config: routeConfig,
    http_filters: [...filters, router],
  }),
});

/** A listener's TLS that requires a client certificate from the mesh CA (the gateway side of the mTLS hop). */
export function mtlsListenerSocket(pki) {
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: typed('envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext', {
      require_client_certificate: true,
      common_tls_context: {
        tls_certificates: [
          { certificate_chain: { filename: pki.server.certFile }, private_key: { filename: pki.server.keyFile } },
        ],
        validation_context: { trusted_ca: { filename: pki.caFile } },
      },
    }),
  };
}

/** Envoy bootstrap; authzAddr null means no ext_authz filter (the envoy-only baseline). */
export function envoyBootstrap({ adminAddr, sidecarAddr, gatewayAddr, authzAddr, pki }) {
  const tlsCert = (c) => [{ certificate_chain: { filename: c.certFile }, private_key: { filename: c.keyFile } }];
  const extAuthz = {
    name: EXT_AUTHZ,
    typed_config: typed('envoy.extensions.filters.http.ext_authz.v3.ExtAuthz', {
      transport_api_version: 'V3',
      include_peer_certificate: true,
      failure_mode_allow: false,
      grpc_service: { envoy_grpc: { cluster_name: 'authz' }, timeout: '1s' },
    }),
  };
  const clusters = [
    staticCluster('gateway', gatewayAddr, {
      transport_socket: {
        name: 'envoy.transport_sockets.tls',
        typed_config: typed('envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext', {
          common_tls_context: {
            tls_certificates: tlsCert(pki.client),
            validation_context: { trusted_ca: { filename: pki.caFile } },
          },
        }),
      },
    }),
  ];
  if (authzAddr) {
    clusters.push(
      staticCluster('authz', authzAddr, {
        typed_extension_protocol_options: {
          'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': typed(
            'envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
            {
              explicit_http_config: { http2_protocol_options: {} },
            },
          ),
        },
      }),
    );
  }
  return {
    admin: { address: socket(adminAddr) },
    static_resources: {
      listeners: [
        {
          name: 'sidecar',
          address: socket(sidecarAddr),
          filter_chains: [
            {
              filters: [
                hcm(
                  'sidecar',
                  {
                    virtual_hosts: [
                      {
                        name: 'all',
                        domains: ['*'],
                        routes: [{ match: { prefix: '/' }, route: { cluster: 'gateway' } }],
                      },
                    ],
                  },
                  [],
                ),
              ],
            },
          ],
        },
        {
          name: 'gateway',
          address: socket(gatewayAddr),
          filter_chains: [
            {
              transport_socket: mtlsListenerSocket(pki),
              filters: [
                hcm(
                  'gateway',
                  {
                    virtual_hosts: [
                      {
                        name: 'all',
                        domains: ['*'],
                        routes: [
                          {
                            match: { prefix: '/' },
                            direct_response: { status: 200, body: { inline_string: 'egress ok\n' } },
                          },
                        ],
                      },
                    ],
                  },
                  authzAddr ? [extAuthz] : [],
                ),
              ],
            },
          ],
        },
      ],
      clusters,
    },
  };
}

export function writeEnvoyConfig(file, options) {
  writeFileSync(file, JSON.stringify(envoyBootstrap(options), null, 2));
}

export async function envoyVersion(envoy) {
  const r = await runCommand(envoy, ['--version'], { timeoutMs: 20_000 });
  return /version: [0-9a-f]+\/([0-9.]+)\//.exec(r.stdout)?.[1] ?? null;
}

/** Waits for Envoy's admin /ready, then for one request through both hops to be answered 200. */
export async function waitForEnvoy({ adminAddr, sidecarAddr, isAlive, timeoutMs = 30_000 }) {
  const until = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < until) {
    if (!isAlive()) throw new Error(`envoy exited before it was ready (${last})`);
    try {
      const ready = await fetch(`http://${adminAddr}/ready`);
      if (ready.status === 200) {
        const res = await fetch(`http://${sidecarAddr}/api/v1/orders`, { headers: { host: DESTINATION_HOST } });
        if (res.status === 200) return;
        last = `request through envoy answered ${res.status}: ${(await res.text()).slice(0, 200)}`;
        if (res.status === 403) throw new Error(last);
      } else {
        last = `admin /ready ${ready.status}`;
      }
    } catch (err) {
      if (/answered 403/.test(err.message)) throw err;
      last = err.message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`envoy not ready after ${timeoutMs} ms: ${last}`);
}

function percentileOf(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i] * 1000) / 1000;
}

/**
 * h2load at a fixed rate for `seconds`, pinned to `core`: ONE HTTP/2 client whose --rps timer sends
 * each request when it is due, on its own stream (up to MAX_STREAMS in flight), so the requests are
 * evenly spaced and none waits for another's answer. Latency percentiles come from h2load's
 * per-request log (microseconds to the response end).
 *
 * Not `--h1 -c 50 --rps rate/50`, as the sweeps before 2026-12-02 ran: those 50 clients start
 * together and each fires on its own timer, so all 50 send at the same instant every 50/rate seconds.
 * That measured the queue behind a 50-request burst (on a trivial /healthz at 250 rps, p50 6.7 ms
 * against 0.2 ms for the same rate from one client), and the authz server's share of the burst's
 * queue was what "p99 over the no-op" reported.
 */
const MAX_STREAMS = 256;
export async function runH2load({ core, sidecarAddr, rate, seconds, logFile }) {
  writeFileSync(logFile, '');
  const args = [
    '-c',
    String(core),
    'h2load',
    '-c',
    '1',
    '-m',
    String(MAX_STREAMS),
    '-t',
    '1',
    '--rps',
    String(rate),
    '-D',
    String(seconds),
    '-H',
    `host: ${DESTINATION_HOST}`,
    '--log-file',
    logFile,
    `http://${sidecarAddr}/api/v1/orders`,
  ];
  const r = await runCommand('taskset', args, { timeoutMs: (seconds + 60) * 1000 });
  if (r.code !== 0) throw new Error(`h2load exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 500)}`);
  const latenciesMs = [];
  let non2xx = 0;
  for (const line of readFileSync(logFile, 'utf8').split('\n')) {
    if (!line) continue;
    const [, status, micros] = line.split('\t');
    if (!/^2\d\d$/.test(status)) non2xx++;
    latenciesMs.push(Number(micros) / 1000);
  }
  latenciesMs.sort((a, b) => a - b);
  const failed = Number(/requests: .*?(\d+) failed/.exec(r.stdout)?.[1] ?? 0);
  return {
    rps: Math.round(latenciesMs.length / seconds),
    p50_ms: percentileOf(latenciesMs, 50),
    p99_ms: percentileOf(latenciesMs, 99),
    errors: non2xx + failed,
    requests: latenciesMs.length,
    target_rps: rate,
    h2load_summary: (/requests: .*/.exec(r.stdout)?.[0] ?? '').trim(),
    /** every answered request's latency, sorted (the sweep pools its rounds' samples) */
    latenciesMs,
  };
}
