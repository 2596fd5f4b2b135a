// The SPIRE deploy assets: the SDS egress gateway loads in the pinned Envoy and takes every certificate
// from the agent, and the Kubernetes overlay runs `serve` with a configuration the real parser accepts,
// its socket mounted where SPIFFE_ENDPOINT_SOCKET points.
import { join, posix } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseServeConfig } from '../../src/service/config.js';
import { repoRoot, validateEnvoyConfig } from '../e2e/support/envoy.js';
import { yamlDocuments, type Json } from './support/yaml.js';

const gateway = join(repoRoot, 'deploy/envoy/egress-gateway-spire.yaml');
const sdsFromAgent = (secret: Json) =>
  secret.sds_config.api_config_source.grpc_services[0].envoy_grpc.cluster_name === 'spire_agent';

describe('deploy/envoy/egress-gateway-spire.yaml', () => {
  const [config] = yamlDocuments(gateway);

  it('is accepted by envoy --mode validate (no certificate file needed)', async () => {
    const result = await validateEnvoyConfig(gateway);
    expect(result.output).toMatch(/OK/);
    expect(result.ok).toBe(true);
  });

  it('takes the listener and egress_authz certificates and bundles only over SDS from the SPIRE agent', () => {
    expect(JSON.stringify(config)).not.toMatch(/"filename"/);
    const listenerTls = config!.static_resources.listeners[0].filter_chains[0].transport_socket.typed_config;
    expect(listenerTls.require_client_certificate).toBe(true);
    const ctx = listenerTls.common_tls_context;
    expect(ctx.tls_certificate_sds_secret_configs.every(sdsFromAgent)).toBe(true);
    expect(sdsFromAgent(ctx.validation_context_sds_secret_config)).toBe(true);
    expect(ctx.validation_context_sds_secret_config.name).toBe('spiffe://cluster.local');
    const clusters: Json[] = config!.static_resources.clusters;
    const upstream = clusters.find((c) => c.name === 'egress_authz')!.transport_socket.typed_config.common_tls_context;
    expect(upstream.tls_certificate_sds_secret_configs[0].name).toBe(ctx.tls_certificate_sds_secret_configs[0].name);
    expect(upstream.combined_validation_context.default_validation_context.match_typed_subject_alt_names).toEqual([
      { san_type: 'URI', matcher: { exact: 'spiffe://cluster.local/ns/egress-authz/sa/egress-authz' } },
    ]);
    const agent = clusters.find((c) => c.name === 'spire_agent')!;
    expect(agent.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe.path).toMatch(/\.sock$/);
  });
});

describe('deploy/spire (Kubernetes overlay)', () => {
  const dir = join(repoRoot, 'deploy/spire');
  const [patch] = yamlDocuments(join(dir, 'deployment-patch.yaml'));
  const pod = patch!.spec.template.spec;
  const container = pod.containers[0] as Json;
  const env = Object.fromEntries((container.env as Json[]).map((e) => [e.name, e.value]));

  it('runs serve with its SVID from the mounted agent socket, the gateway and the BIG-IP as the only callers', () => {
    expect(container.args[0]).toBe('serve');
    const parsed = parseServeConfig(container.args.slice(1), env);
    expect(parsed.ok, parsed.ok ? '' : parsed.reason).toBe(true);
    if (!parsed.ok) return;
    expect(parsed.value.spiffe?.socket).toBe(env.SPIFFE_ENDPOINT_SOCKET);
    expect(parsed.value.allowedCallers.map((p) => p.id.uri)).toEqual([
      'spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway',
      'spiffe://cluster.local/ns/f5/sa/bigip',
    ]);
    const socketDir = posix.dirname(env.SPIFFE_ENDPOINT_SOCKET.replace(/^unix:\/\//, ''));
    const mount = (container.volumeMounts as Json[]).find((m) => m.mountPath === socketDir)!;
    expect(mount.readOnly).toBe(true);
    const volume = (pod.volumes as Json[]).find((v) => v.name === mount.name)!;
    expect(volume.csi).toMatchObject({ driver: 'csi.spiffe.io', readOnly: true });
  });

  it('probes the plain-HTTP health listener, since both main listeners require client certificates', () => {
    const parsed = parseServeConfig(container.args.slice(1), env);
    const port = Number((parsed.ok ? parsed.value.healthAddr : undefined)?.split(':')[1]);
    expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port });
    expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port });
  });

  it('is a kustomization over deploy/k8s with the registration entries', () => {
    const [k] = yamlDocuments(join(dir, 'kustomization.yaml'));
    expect(k!.resources).toEqual(['../k8s', 'cluster-spiffe-ids.yaml']);
    const ids = yamlDocuments(join(dir, 'cluster-spiffe-ids.yaml'));
    expect(ids.map((o) => o.kind)).toEqual(['ClusterSPIFFEID', 'ClusterSPIFFEID', 'ClusterSPIFFEID']);
    expect(ids.find((o) => o.metadata.name === 'egress-authz')!.spec.dnsNameTemplates).toEqual([
      'egress-authz.egress-authz.svc.cluster.local',
    ]);
  });
});
