// The seed's egress gateway bootstrap (test/e2e/support/envoy-config.ts) with every certificate taken
// from the SPIRE agent over SDS instead of files, as SPIRE's Envoy integration documents: the agent
// serves the SDS API on its Workload API socket, names the workload's SVID by its SPIFFE ID and a trust
// bundle by "spiffe://<trust domain>". Envoy's own SVID is both the listener's server certificate and
// its client certificate towards egress-authz, whose SVID it checks by URI SAN.
import { egressGatewayConfig, type EgressGatewayOptions } from '../e2e/support/envoy-config.js';

export interface SdsOptions {
  agentSocket: string;
  /** the SPIFFE ID Envoy's SVID carries (its registration entry) */
  envoyId: string;
  /** the SPIFFE ID egress-authz must present */
  authzId: string;
  trustDomain: string;
}

function sdsSecret(name: string) {
  return {
    name,
    sds_config: {
      resource_api_version: 'V3',
      api_config_source: {
        api_type: 'GRPC',
        transport_api_version: 'V3',
        grpc_services: [{ envoy_grpc: { cluster_name: 'spire_agent' } }],
      },
    },
  };
}

type Json = Record<string, any>;

export function egressGatewaySdsConfig(o: Omit<EgressGatewayOptions, 'tls'>, sds: SdsOptions): Json {
  const config = egressGatewayConfig({ ...o, tls: { certFile: '', keyFile: '', clientCaFile: '' } }) as Json;
  // SDS needs a node identity (SPIRE attests the process and ignores it)
  config.node = { id: 'egress-gateway', cluster: 'egress-gateway' };
  const bundle = sdsSecret(`spiffe://${sds.trustDomain}`);
  const listener = config.static_resources.listeners[0];
  listener.filter_chains[0].transport_socket.typed_config.common_tls_context = {
    tls_certificate_sds_secret_configs: [sdsSecret(sds.envoyId)],
    validation_context_sds_secret_config: bundle,
  };
  const clusters: Json[] = config.static_resources.clusters;
  const authz = clusters.find((c) => c.name === 'egress_authz')!;
  authz.transport_socket = {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
      common_tls_context: {
        alpn_protocols: ['h2'],
        tls_certificate_sds_secret_configs: [sdsSecret(sds.envoyId)],
        combined_validation_context: {
          default_validation_context: {
            match_typed_subject_alt_names: [{ san_type: 'URI', matcher: { exact: sds.authzId } }],
          },
          validation_context_sds_secret_config: bundle,
        },
      },
    },
  };
  clusters.push({
    name: 'spire_agent',
    type: 'STATIC',
    connect_timeout: '1s',
    typed_extension_protocol_options: {
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
        '@type': 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
        explicit_http_config: { http2_protocol_options: {} },
      },
    },
    load_assignment: {
      cluster_name: 'spire_agent',
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path: sds.agentSocket } } } }] }],
    },
  });
  return config;
}
