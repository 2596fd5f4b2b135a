// The Envoy configs shipped in deploy/envoy/ load in the pinned Envoy and keep the promises the e2e
// suite proves on loopback: client certificates required, ext_authz v3 with the peer certificate,
// fail closed, and (for the gateway) the upstream chosen only by egress-authz's SNAT pool answer.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, issue } from '../support/pki.js';
import { repoRoot, validateEnvoyConfig } from '../e2e/support/envoy.js';
import { yamlDocuments, type Json } from './support/yaml.js';

const TLS_DIR = '/etc/egress-gateway/tls/';
const assets = ['egress-gateway.yaml', 'sidecar-ext-authz.yaml'].map((f) => join(repoRoot, 'deploy/envoy', f));
let dir = '';

beforeAll(async () => {
  // Validation loads the TLS files, so give it real ones at a temporary stand-in for TLS_DIR.
  dir = mkdtempSync(join(tmpdir(), 'egress-deploy-envoy-'));
  const ca = await createCa('Example Org Mesh CA');
  const server = await issue({ issuer: ca, subject: 'CN=bigip-proxy-svc', dns: ['bigip-proxy-svc'] });
  writeFileSync(join(dir, 'mesh-ca.crt'), ca.certPem);
  writeFileSync(join(dir, 'tls.crt'), server.certPem);
  writeFileSync(join(dir, 'tls.key'), server.keyPem, { mode: 0o600 });
});
afterAll(() => dir && rmSync(dir, { recursive: true, force: true }));

function httpFilters(config: Json): Json[] {
  return config.static_resources.listeners.flatMap((l: Json) =>
    l.filter_chains.flatMap((c: Json) => c.filters.flatMap((f: Json) => f.typed_config.http_filters ?? [])),
  );
}

describe.each(assets)('%s', (asset) => {
  it('is accepted by envoy --mode validate', async () => {
    const text = readFileSync(asset, 'utf8');
    expect(text).toContain(TLS_DIR);
    const copy = join(dir, 'config.yaml');
    writeFileSync(copy, text.replaceAll(TLS_DIR, `${dir}/`));
    const result = await validateEnvoyConfig(copy);
    expect(result.output).toMatch(/OK/);
    expect(result.ok).toBe(true);
  });

  it('requires client certificates and asks egress-authz fail-closed with the peer certificate', () => {
    const [config] = yamlDocuments(asset);
    for (const l of config!.static_resources.listeners) {
      for (const c of l.filter_chains) expect(c.transport_socket.typed_config.require_client_certificate).toBe(true);
    }
    const extAuthz = httpFilters(config!).find((f) => f.name === 'envoy.filters.http.ext_authz')!.typed_config;
    expect(extAuthz).toMatchObject({ transport_api_version: 'V3', include_peer_certificate: true, failure_mode_allow: false });
    const cluster = config!.static_resources.clusters.find((c: Json) => c.name === extAuthz.grpc_service.envoy_grpc.cluster_name);
    expect(cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address).toEqual({
      address: 'egress-authz.egress-authz.svc.cluster.local',
      port_value: 9191,
    });
  });
});

describe('deploy/envoy/egress-gateway.yaml', () => {
  it('routes only by the SNAT pool header, stripped from clients, each pool from its own source address', () => {
    const [config] = yamlDocuments(assets[0]!);
    const filters = httpFilters(config!);
    expect(filters.map((f) => f.name)).toEqual(['envoy.filters.http.header_mutation', 'envoy.filters.http.ext_authz', 'envoy.filters.http.router']);
    expect(filters[0]!.typed_config.mutations.request_mutations).toContainEqual({ remove: 'x-egress-snat-pool' });
    expect(filters[1]!.typed_config.clear_route_cache).toBe(true);
    const hcm = config!.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
    for (const r of hcm.route_config.virtual_hosts.flatMap((v: Json) => v.routes)) {
      expect(r.route).toMatchObject({ cluster_header: 'x-egress-snat-pool' });
      expect(r.route.cluster).toBeUndefined();
    }
    const pools = config!.static_resources.clusters.filter((c: Json) => c.name !== 'egress_authz');
    expect(pools.map((c: Json) => c.name)).toContain('bookinfo_snat');
    const sources = pools.map((c: Json) => c.upstream_bind_config.source_address.address);
    expect(new Set(sources).size).toBe(pools.length);
  });
});
