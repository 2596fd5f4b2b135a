// The generated egress-gateway config must be fail-closed and route only by egress-authz's answer;
// the behavioural side of the same promises is in seed-scenario.test.ts.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createCa, issue, writeCert } from '../support/pki.js';
import { validateEnvoyConfig } from './support/envoy.js';
import { egressGatewayConfig, SNAT_POOL_HEADER, type EgressGatewayOptions } from './support/envoy-config.js';

const options: EgressGatewayOptions = {
  listen: { address: '127.0.0.1', port: 13128 },
  admin: { address: '127.0.0.1', port: 19901 },
  authz: { address: '127.0.0.1', port: 19191 },
  forwardProxy: { address: '127.0.0.1', port: 18888 },
  snatPools: [
    { name: 'bookinfo_snat', sourceAddress: '127.0.0.10' },
    { name: 'other_snat', sourceAddress: '127.0.0.11' },
  ],
  tls: { certFile: '/nonexistent/tls.crt', keyFile: '/nonexistent/tls.key', clientCaFile: '/nonexistent/ca.crt' },
  accessLogPath: '/dev/null',
};

type Json = Record<string, any>;
const config = egressGatewayConfig(options) as Json;
const listener: Json = config.static_resources.listeners[0];
const chain: Json = listener.filter_chains[0];
const hcm: Json = chain.filters[0].typed_config;
const filters: Json[] = hcm.http_filters;
const extAuthz: Json = filters.find((f) => f.name === 'envoy.filters.http.ext_authz')!.typed_config;
const clusters: Json[] = config.static_resources.clusters;

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('generated egress-gateway config', () => {
  it('asks egress-authz over gRPC v3 with the peer certificate and fails closed', () => {
    expect(extAuthz).toMatchObject({
      transport_api_version: 'V3',
      include_peer_certificate: true,
      failure_mode_allow: false,
      clear_route_cache: true,
      status_on_error: { code: 'Forbidden' },
      grpc_service: { envoy_grpc: { cluster_name: 'egress_authz' } },
    });
  });

  it('requires a client certificate from the organisation CA', () => {
    expect(chain.transport_socket.typed_config.require_client_certificate).toBe(true);
    expect(chain.transport_socket.typed_config.common_tls_context.validation_context.trusted_ca.filename).toBe(
      options.tls.clientCaFile,
    );
  });

  it('strips a client-sent SNAT pool header before ext_authz and routes every request by the answer', () => {
    const names = filters.map((f) => f.name);
    expect(names).toEqual([
      'envoy.filters.http.header_mutation',
      'envoy.filters.http.ext_authz',
      'envoy.filters.http.router',
    ]);
    expect(filters[0]!.typed_config.mutations.request_mutations).toContainEqual({ remove: SNAT_POOL_HEADER });
    const routes: Json[] = hcm.route_config.virtual_hosts.flatMap((v: Json) => v.routes);
    expect(routes.length).toBeGreaterThan(0);
    for (const r of routes) {
      expect(r.route.cluster_header).toBe(SNAT_POOL_HEADER);
      expect(r.route.cluster).toBeUndefined();
    }
  });

  it('has one cluster per SNAT pool, each bound to its own source address', () => {
    for (const pool of options.snatPools) {
      const cluster = clusters.find((c) => c.name === pool.name)!;
      expect(cluster.upstream_bind_config.source_address.address).toBe(pool.sourceAddress);
      expect(cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value).toBe(
        options.forwardProxy.port,
      );
    }
    expect(clusters.map((c) => c.name).sort()).toEqual(['bookinfo_snat', 'egress_authz', 'other_snat']);
  });

  it('is accepted by envoy --mode validate', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'egress-envoy-config-'));
    dirs.push(dir);
    const ca = await createCa();
    writeFileSync(join(dir, 'ca.crt'), ca.certPem);
    const server = writeCert(
      dir,
      'server',
      await issue({ issuer: ca, subject: 'CN=bigip-proxy-svc', dns: ['bigip-proxy-svc'] }),
    );
    const file = join(dir, 'envoy.json');
    writeFileSync(
      file,
      JSON.stringify(
        egressGatewayConfig({
          ...options,
          tls: { certFile: server.cert, keyFile: server.key, clientCaFile: join(dir, 'ca.crt') },
        }),
      ),
    );
    const result = await validateEnvoyConfig(file);
    expect(result.output).toMatch(/OK/);
    expect(result.ok).toBe(true);
  });
});
