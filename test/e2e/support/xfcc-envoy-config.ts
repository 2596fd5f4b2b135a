// An Envoy bootstrap for header-trust mode: a front listener terminates the client's mTLS and sets
// x-forwarded-client-cert with SANITIZE_SET (replacing whatever the client sent), then forwards in
// plain HTTP to an inner listener whose ext_authz asks egress-authz. The inner hop has no client
// certificate, so the XFCC header is the only identity evidence: the deployment in which egress-authz
// runs with --trusted-identity-header x-forwarded-client-cert.

export interface XfccEnvoyOptions {
  admin: number;
  /** front listeners: one per set_current_client_cert_details variant */
  fronts: { name: string; port: number; cert: boolean }[];
  inner: number;
  authzGrpc: number;
  tls: { certFile: string; keyFile: string; clientCaFile: string };
}

import { downstreamMtls } from './envoy-config.js';

const addr = (port: number) => ({ socket_address: { address: '127.0.0.1', port_value: port } });
const router = {
  name: 'envoy.filters.http.router',
  typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' },
};
const HCM = 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager';

function cluster(name: string, port: number, http2 = false) {
  return {
    name,
    type: 'STATIC',
    connect_timeout: '1s',
    load_assignment: { cluster_name: name, endpoints: [{ lb_endpoints: [{ endpoint: { address: addr(port) } }] }] },
    ...(http2
      ? {
          typed_extension_protocol_options: {
            'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
              '@type': 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
              explicit_http_config: { http2_protocol_options: {} },
            },
          },
        }
      : {}),
  };
}

export function xfccEnvoyConfig(o: XfccEnvoyOptions): Record<string, unknown> {
  const front = (f: XfccEnvoyOptions['fronts'][number]) => ({
    name: f.name,
    address: addr(f.port),
    filter_chains: [
      {
        transport_socket: downstreamMtls(o.tls),
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': HCM,
              stat_prefix: f.name,
              // The settings that make the header trustworthy (docs/design.md, "Trusting XFCC").
              forward_client_cert_details: 'SANITIZE_SET',
              set_current_client_cert_details: { subject: true, uri: true, dns: true, cert: f.cert },
              http_filters: [router],
              route_config: {
                virtual_hosts: [
                  { name: 'all', domains: ['*'], routes: [{ match: { prefix: '/' }, route: { cluster: 'inner' } }] },
                ],
              },
            },
          },
        ],
      },
    ],
  });
  return {
    admin: { address: addr(o.admin) },
    static_resources: {
      listeners: [
        ...o.fronts.map(front),
        {
          name: 'inner',
          address: addr(o.inner),
          filter_chains: [
            {
              filters: [
                {
                  name: 'envoy.filters.network.http_connection_manager',
                  typed_config: {
                    '@type': HCM,
                    stat_prefix: 'inner',
                    // The front proxy set the header; this hop passes it on as it came (FORWARD_ONLY drops it on a
                    // connection without a client certificate).
                    forward_client_cert_details: 'ALWAYS_FORWARD_ONLY',
                    http_filters: [
                      {
                        name: 'envoy.filters.http.ext_authz',
                        typed_config: {
                          '@type': 'type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz',
                          transport_api_version: 'V3',
                          grpc_service: { envoy_grpc: { cluster_name: 'egress_authz' }, timeout: '2s' },
                          failure_mode_allow: false,
                        },
                      },
                      router,
                    ],
                    route_config: {
                      virtual_hosts: [
                        {
                          name: 'all',
                          domains: ['*'],
                          routes: [
                            {
                              match: { prefix: '/' },
                              direct_response: { status: 200, body: { inline_string: 'allowed\n' } },
                            },
                          ],
                        },
                      ],
                    },
                  },
                },
              ],
            },
          ],
        },
      ],
      clusters: [cluster('inner', o.inner), cluster('egress_authz', o.authzGrpc, true)],
    },
  };
}
