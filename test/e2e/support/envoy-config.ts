// Builds the Envoy bootstrap for the seed's egress gateway on loopback: an mTLS listener that plays the
// BIG-IP virtual server `bigip-proxy-svc:3128`, ext_authz (gRPC v3) asking egress-authz, and one
// upstream cluster per SNAT pool, each leaving from its own source address towards the forward proxy.
// deploy/envoy/egress-gateway.yaml is the documented production form of the same configuration.

export interface SnatPool {
  /** Cluster name; egress-authz returns it in `x-egress-snat-pool`. */
  name: string;
  /** Source address the pool's connections are bound to (what the firewall sees). */
  sourceAddress: string;
}

export interface EgressGatewayOptions {
  listen: { address: string; port: number };
  admin: { address: string; port: number };
  /** egress-authz gRPC address */
  authz: { address: string; port: number; timeoutMs?: number };
  /** the organisation's forward proxy (tinyproxy) every pool leads to */
  forwardProxy: { address: string; port: number };
  snatPools: SnatPool[];
  tls: { certFile: string; keyFile: string; clientCaFile: string };
  accessLogPath: string;
}

export const SNAT_POOL_HEADER = 'x-egress-snat-pool';
export const DECISION_ID_HEADER = 'x-egress-decision-id';
const EXT_AUTHZ = 'envoy.filters.http.ext_authz';

/** Fields of each access log line (JSON). Tests read them back by these names. */
export const ACCESS_LOG_FORMAT = {
  start_time: '%START_TIME%',
  method: '%REQ(:METHOD)%',
  authority: '%REQ(:AUTHORITY)%',
  response_code: '%RESPONSE_CODE%',
  response_flags: '%RESPONSE_FLAGS%',
  x_request_id: '%REQ(X-REQUEST-ID)%',
  // On allow ext_authz adds the id to the upstream request; on deny it is on the local 403 reply.
  decision_id: `%REQ(${DECISION_ID_HEADER.toUpperCase()})%`,
  denied_decision_id: `%RESP(${DECISION_ID_HEADER.toUpperCase()})%`,
  metadata_decision_id: `%DYNAMIC_METADATA(${EXT_AUTHZ}:decision_id)%`,
  snat_pool: `%REQ(${SNAT_POOL_HEADER.toUpperCase()})%`,
  peer_uri_san: '%DOWNSTREAM_PEER_URI_SAN%',
  upstream_cluster: '%UPSTREAM_CLUSTER%',
  upstream_local_address: '%UPSTREAM_LOCAL_ADDRESS%',
} as const;

export type AccessLogEntry = { [K in keyof typeof ACCESS_LOG_FORMAT]: string | number | null };

function socketAddress(address: string, port: number) {
  return { socket_address: { address, port_value: port } };
}

function staticCluster(name: string, address: string, port: number, extra: Record<string, unknown> = {}) {
  return {
    name,
    type: 'STATIC',
    connect_timeout: '1s',
    load_assignment: {
      cluster_name: name,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: socketAddress(address, port) } }] }],
    },
    ...extra,
  };
}

/** A listener's TLS that requires a client certificate from the CA. */
export function downstreamMtls(tls: { certFile: string; keyFile: string; clientCaFile: string }) {
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext',
      require_client_certificate: true,
      common_tls_context: {
        tls_certificates: [{ certificate_chain: { filename: tls.certFile }, private_key: { filename: tls.keyFile } }],
        validation_context: { trusted_ca: { filename: tls.clientCaFile } },
      },
    },
  };
}

export function egressGatewayConfig(o: EgressGatewayOptions): Record<string, unknown> {
  const route = {
    // The cluster is named by ext_authz's answer; without the header there is no cluster, so no egress.
    cluster_header: SNAT_POOL_HEADER,
    timeout: '0s',
  };
  return {
    admin: { address: socketAddress(o.admin.address, o.admin.port) },
    static_resources: {
      listeners: [
        {
          name: 'bigip_proxy_svc',
          address: socketAddress(o.listen.address, o.listen.port),
          filter_chains: [
            {
              transport_socket: downstreamMtls(o.tls),
              filters: [
                {
                  name: 'envoy.filters.network.http_connection_manager',
                  typed_config: {
                    '@type':
                      'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
                    stat_prefix: 'egress',
                    // The client's (sidecar's) request id is the correlation key through to the decision log.
                    preserve_external_request_id: true,
                    upgrade_configs: [{ upgrade_type: 'CONNECT' }],
                    access_log: [
                      {
                        name: 'envoy.access_loggers.file',
                        typed_config: {
                          '@type': 'type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog',
                          path: o.accessLogPath,
                          log_format: { json_format: ACCESS_LOG_FORMAT },
                        },
                      },
                    ],
                    http_filters: [
                      {
                        // A client must not choose its own SNAT pool: drop what it sent before asking.
                        name: 'envoy.filters.http.header_mutation',
                        typed_config: {
                          '@type':
                            'type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation',
                          mutations: {
                            request_mutations: [{ remove: SNAT_POOL_HEADER }, { remove: DECISION_ID_HEADER }],
                          },
                        },
                      },
                      {
                        name: EXT_AUTHZ,
                        typed_config: {
                          '@type': 'type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz',
                          transport_api_version: 'V3',
                          grpc_service: {
                            envoy_grpc: { cluster_name: 'egress_authz' },
                            timeout: `${(o.authz.timeoutMs ?? 1000) / 1000}s`,
                          },
                          include_peer_certificate: true,
                          failure_mode_allow: false,
                          clear_route_cache: true,
                          status_on_error: { code: 'Forbidden' },
                        },
                      },
                      {
                        name: 'envoy.filters.http.router',
                        typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' },
                      },
                    ],
                    route_config: {
                      name: 'egress',
                      virtual_hosts: [
                        {
                          name: 'egress',
                          domains: ['*'],
                          // Tell the client which decision let it through (a deny carries it from ext_authz).
                          response_headers_to_add: [
                            {
                              header: { key: DECISION_ID_HEADER, value: `%REQ(${DECISION_ID_HEADER})%` },
                              append_action: 'OVERWRITE_IF_EXISTS_OR_ADD',
                              keep_empty_value: false,
                            },
                          ],
                          routes: [
                            { match: { connect_matcher: {} }, route },
                            { match: { prefix: '/' }, route },
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
      clusters: [
        staticCluster('egress_authz', o.authz.address, o.authz.port, {
          typed_extension_protocol_options: {
            'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
              '@type': 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
              explicit_http_config: { http2_protocol_options: {} },
            },
          },
        }),
        ...o.snatPools.map((pool) =>
          staticCluster(pool.name, o.forwardProxy.address, o.forwardProxy.port, {
            upstream_bind_config: { source_address: { address: pool.sourceAddress, port_value: 0 } },
          }),
        ),
      ],
    },
  };
}
