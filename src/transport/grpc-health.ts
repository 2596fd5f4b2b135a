// grpc.health.v1.Health on the gRPC port (Check and Watch), for Envoy's gRPC health checks, the
// kubelet's gRPC probe and grpc_health_probe. The service and its .proto come from the grpc-node
// project's grpc-health-check package; this module keeps its status in step with /readyz: SERVING
// when a policy is loaded and the service is not shutting down, NOT_SERVING otherwise.
import type * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';

/** The names a health client may ask about: the whole server, and the ext_authz service. */
const HEALTH_SERVICES = ['', 'envoy.service.auth.v3.Authorization'] as const;

export interface GrpcHealth {
  /** re-reads readiness now (it is also re-read on every Check/Watch and once a second) */
  refresh(): void;
  /** NOT_SERVING to everyone, then ends every Watch stream so a graceful shutdown need not wait on them */
  shutdown(): void;
}

export function addGrpcHealth(server: grpc.Server, ready: () => boolean, refreshMs = 1000): GrpcHealth {
  const health = new HealthImplementation();
  let last: 'SERVING' | 'NOT_SERVING' | undefined;
  let closed = false;
  const watches = new Set<grpc.ServerWritableStream<unknown, unknown>>();

  const refresh = (): void => {
    const status = !closed && ready() ? 'SERVING' : 'NOT_SERVING';
    if (status === last) return;
    last = status;
    for (const name of HEALTH_SERVICES) health.setStatus(name, status);
  };
  refresh();

  // The package registers its handlers through server.addService; wrapping them here refreshes the
  // status before each answer and keeps track of open Watch streams.
  health.addToServer({
    addService(service: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation) {
      const check = impl['check'] as grpc.handleUnaryCall<unknown, unknown>;
      const watchStream = impl['watch'] as grpc.handleServerStreamingCall<unknown, unknown>;
      server.addService(service, {
        ...impl,
        check: (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
          refresh();
          check(call, callback);
        },
        watch: (call: grpc.ServerWritableStream<unknown, unknown>) => {
          refresh();
          if (closed) {
            call.write({ status: 'NOT_SERVING' });
            call.end();
            return;
          }
          watches.add(call);
          call.on('cancelled', () => watches.delete(call));
          call.on('close', () => watches.delete(call));
          watchStream(call);
        },
      });
    },
  });

  const timer = setInterval(refresh, refreshMs);
  timer.unref();

  return {
    refresh,
    shutdown() {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      refresh();
      for (const call of watches) call.end();
      watches.clear();
    },
  };
}
