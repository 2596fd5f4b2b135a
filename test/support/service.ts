// Starts the real service in-process on ephemeral loopback ports, with decision log entries captured.
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import type { DecisionLogEntry } from '../../src/decision/decision-log.js';
import { authorizationClient } from '../../src/transport/envoy-protos.js';
import type { LoadedPolicy } from '../../src/policy/policy.js';
import { loadPolicy } from '../../src/lifecycle/bundle-source.js';
import { startService, type RunningService, type ServiceOptions } from '../../src/service/service.js';

export const POLICY_DIR = join(import.meta.dirname, '..', '..', 'policies');

let defaultPolicy: Promise<LoadedPolicy> | undefined;
export function loadDefaultPolicy(): Promise<LoadedPolicy> {
  defaultPolicy ??= loadPolicy(POLICY_DIR);
  return defaultPolicy;
}

/** The default policy made slow (revision `slow`): each evaluation busy-waits `ms` first, as Wasm cannot be interrupted. */
export async function slowDefaultPolicy(ms: number): Promise<{ policy: LoadedPolicy; evaluations: () => number }> {
  const real = await loadDefaultPolicy();
  let evaluations = 0;
  const policy: LoadedPolicy = {
    ...real,
    revision: 'slow',
    evaluate(input) {
      evaluations++;
      const until = performance.now() + ms;
      while (performance.now() < until);
      return real.evaluate(input);
    },
  };
  return { policy, evaluations: () => evaluations };
}

export interface TestService extends RunningService {
  decisions: DecisionLogEntry[];
  logLines: Record<string, unknown>[];
}

export async function startTestService(extra: Partial<ServiceOptions> = {}): Promise<TestService> {
  const decisions: DecisionLogEntry[] = [];
  const logLines: Record<string, unknown>[] = [];
  const logger = pino(
    { level: 'info' },
    { write: (line: string) => void logLines.push(JSON.parse(line) as Record<string, unknown>) },
  );
  const service = await startService({
    grpcAddr: '127.0.0.1:0',
    httpAddr: '127.0.0.1:0',
    policy: extra.policy ?? (await loadDefaultPolicy()),
    logger,
    ...extra,
    onDecision: (entry, decision) => {
      decisions.push(entry);
      extra.onDecision?.(entry, decision);
    },
  });
  return Object.assign(service, { decisions, logLines });
}

export type CheckClient = grpc.Client & {
  Check(req: unknown, cb: (err: grpc.ServiceError | null, res: Record<string, any>) => void): void;
};

export function checkClient(
  port: number,
  creds = grpc.credentials.createInsecure(),
  options: grpc.ClientOptions = {},
): CheckClient {
  const Client = authorizationClient();
  return new Client(`127.0.0.1:${port}`, creds, options) as unknown as CheckClient;
}

export function check(client: CheckClient, req: unknown): Promise<Record<string, any>> {
  return new Promise((resolve, reject) => client.Check(req, (err, res) => (err ? reject(err) : resolve(res))));
}

/** A CheckRequest as Envoy sends it through the ext_authz filter (camelCase, as proto-loader takes it). */
export function checkRequest(
  opts: {
    principal?: string;
    certificatePem?: string;
    host?: string;
    headers?: Record<string, string>;
    path?: string;
    method?: string;
  } = {},
) {
  const source: Record<string, unknown> = { address: { socketAddress: { address: '10.1.2.3', portValue: 43210 } } };
  if (opts.principal !== undefined) source.principal = opts.principal;
  if (opts.certificatePem !== undefined) source.certificate = encodeURIComponent(opts.certificatePem);
  return {
    attributes: {
      source,
      destination: {
        address: { socketAddress: { address: '127.0.0.1', portValue: 3128 } },
        principal: 'spiffe://cluster.local/ns/egress/sa/gateway',
      },
      request: {
        time: { seconds: '1764151200', nanos: 5000000 },
        http: {
          id: '123',
          method: opts.method ?? 'CONNECT',
          host: opts.host ?? 'www.example.com:443',
          path: opts.path ?? '',
          protocol: 'HTTP/1.1',
          headers: {
            ':authority': opts.host ?? 'www.example.com:443',
            'x-request-id': 'req-1',
            ...(opts.headers ?? {}),
          },
        },
      },
    },
  };
}
