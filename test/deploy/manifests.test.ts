// Kubernetes and Istio manifests in deploy/: each parses, each object is well-formed for its kind,
// and they agree with each other and with the service's contract (ports 9191/8181, /healthz, /readyz).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../e2e/support/envoy.js';
import { yamlDocuments, type Json } from './support/yaml.js';

function objects(folder: string): Json[] {
  const dir = join(repoRoot, 'deploy', folder);
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .flatMap((f) => yamlDocuments(join(dir, f)));
}

const k8s = objects('k8s');
const istio = objects('istio');
const one = (all: Json[], kind: string, name?: string): Json => {
  const found = all.filter((o) => o.kind === kind && (name === undefined || o.metadata?.name === name));
  expect(found, `${kind} ${name ?? ''}`).toHaveLength(1);
  return found[0]!;
};

describe('deploy manifests', () => {
  it('are Kubernetes objects with apiVersion, kind and name', () => {
    for (const o of [...k8s, ...istio]) {
      expect(typeof o.apiVersion, JSON.stringify(o).slice(0, 80)).toBe('string');
      expect(typeof o.kind).toBe('string');
      if (o.kind !== 'Kustomization') expect(typeof o.metadata?.name).toBe('string');
    }
  });

  it('run egress-authz non-root on a read-only root filesystem with probes on /healthz and /readyz (8181)', () => {
    const deployment = one(k8s, 'Deployment', 'egress-authz');
    const pod = deployment.spec.template.spec;
    const [container] = pod.containers as Json[];
    expect(pod.securityContext.runAsNonRoot).toBe(true);
    expect(pod.securityContext.runAsUser).not.toBe(0);
    expect(container!.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false });
    expect(container!.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 8181 });
    expect(container!.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 8181 });
    expect(container!.resources.requests).toBeDefined();
    expect(container!.resources.limits).toBeDefined();
    expect(container!.ports.map((p: Json) => p.containerPort).sort()).toEqual([8181, 9191]);
    expect(container!.args.slice(0, 1)).toEqual(['serve']);
    const policy = container!.args[container!.args.indexOf('--policy') + 1] as string;
    const mount = container!.volumeMounts.find((m: Json) => policy.startsWith(`${m.mountPath}/`));
    expect(mount, `a volume mounted above ${policy}`).toBeDefined();
    const volume = pod.volumes.find((v: Json) => v.name === mount.name);
    expect(volume.configMap.name).toBe('egress-authz-policy');
  });

  it('run one worker per CPU of the container limit: --workers from a resourceFieldRef on limits.cpu', () => {
    const [container] = one(k8s, 'Deployment', 'egress-authz').spec.template.spec.containers as Json[];
    const flag = container!.args[container!.args.indexOf('--workers') + 1] as string;
    const variable = /^\$\(([A-Z_]+)\)$/.exec(flag)?.[1];
    expect(variable, `--workers ${flag} names an env variable`).toBeDefined();
    const env = (container!.env as Json[]).find((e) => e.name === variable)!;
    expect(env.valueFrom.resourceFieldRef).toMatchObject({
      containerName: container!.name,
      resource: 'limits.cpu',
      divisor: '1',
    });
    expect(container!.resources.limits.cpu).toBeDefined();
    // Each worker is a Node process with its own bounded heap: the memory limit must hold them all.
    const cpus = Math.ceil(Number(String(container!.resources.limits.cpu).replace(/m$/, 'e-3')));
    const mib = Number(/^(\d+)Mi$/.exec(container!.resources.limits.memory)?.[1]);
    expect(mib).toBeGreaterThanOrEqual(cpus === 1 ? 256 : 160 * cpus + 96);
  });

  it("set the image's NODE_OPTIONS: the Deployment's value replaces the Dockerfile's, so they must agree", () => {
    const [container] = one(k8s, 'Deployment', 'egress-authz').spec.template.spec.containers as Json[];
    const env = (container!.env as Json[]).find((e) => e.name === 'NODE_OPTIONS');
    const image = /^ENV NODE_OPTIONS="([^"]*)"/m.exec(readFileSync(join(repoRoot, 'Dockerfile'), 'utf8'))?.[1];
    expect(env?.value).toBe(image);
  });

  it('select the Deployment from the Service, the PodDisruptionBudget and the HorizontalPodAutoscaler', () => {
    const deployment = one(k8s, 'Deployment', 'egress-authz');
    const labels = deployment.spec.template.metadata.labels;
    const service = one(k8s, 'Service', 'egress-authz');
    expect(labels).toMatchObject(service.spec.selector);
    expect(service.spec.ports.map((p: Json) => p.port).sort()).toEqual([8181, 9191]);
    expect(labels).toMatchObject(one(k8s, 'PodDisruptionBudget').spec.selector.matchLabels);
    expect(one(k8s, 'HorizontalPodAutoscaler').spec.scaleTargetRef).toMatchObject({ kind: 'Deployment', name: 'egress-authz' });
    expect(deployment.spec.template.spec.serviceAccountName).toBe(one(k8s, 'ServiceAccount').metadata.name);
    const kustomization = one(k8s, 'Kustomization');
    expect(kustomization.configMapGenerator.map((g: Json) => g.name)).toContain('egress-authz-policy');
  });

  it('register egress-authz as a fail-closed Istio gRPC provider at the Service address, used by a CUSTOM policy', () => {
    const providers = one(istio, 'IstioOperator').spec.meshConfig.extensionProviders as Json[];
    const provider = providers.find((p) => p.envoyExtAuthzGrpc)!;
    const service = one(k8s, 'Service', 'egress-authz');
    expect(provider.envoyExtAuthzGrpc).toMatchObject({
      service: `${service.metadata.name}.${service.metadata.namespace}.svc.cluster.local`,
      port: 9191,
      failOpen: false,
    });
    const policy = one(istio, 'AuthorizationPolicy');
    expect(policy.spec).toMatchObject({ action: 'CUSTOM', provider: { name: provider.name } });
    expect(policy.spec.selector.matchLabels).toEqual(one(istio, 'Gateway').spec.selector);
  });

  it("register the BIG-IP virtual server as bigip-proxy-svc:3128 in bookinfo, reached over Istio mTLS (the seed's istioctl register)", () => {
    const service = one(istio, 'Service', 'bigip-proxy-svc');
    expect(service.metadata.namespace).toBe('bookinfo');
    expect(service.spec.ports.map((p: Json) => p.port)).toEqual([3128]);
    expect(one(istio, 'WorkloadEntry').spec.labels).toMatchObject(service.spec.selector);
    expect(one(istio, 'DestinationRule', 'bigip-proxy-svc').spec).toMatchObject({
      host: 'bigip-proxy-svc.bookinfo.svc.cluster.local',
      trafficPolicy: { tls: { mode: 'ISTIO_MUTUAL' } },
    });
  });
});
