// Envoy's ext_authz v3 Authorization service on @grpc/grpc-js. Every Check gets a decision: a failure
// anywhere below turns into a PERMISSION_DENIED answer, never a gRPC error Envoy would have to interpret.
import * as grpc from '@grpc/grpc-js';
import type { Authorizer } from './authorizer.js';
import type { Decision } from './decision.js';
import { loadAuthorizationService } from './envoy-protos.js';
import { toCheckResponse } from './envoy-response.js';
import type { CheckRequest } from './input.js';

export interface GrpcServerOptions {
  authorizer: Authorizer;
  /** called when the pipeline itself failed (a bug); the caller still gets a deny */
  onInternalError?: (err: unknown) => void;
  maxReceiveMessageLength?: number;
  credentials?: grpc.ServerCredentials;
}

export function internalErrorDecision(): Decision {
  return {
    decision_id: '',
    caller: 'envoy',
    allow: false,
    snat_pool: '',
    reason: 'internal error',
    http_status: 403,
    headers: {},
    body: 'internal error',
    identity: null,
    destination: '',
    policy_revision: '',
    eval_ms: 0,
  };
}

export function checkHandler(opts: GrpcServerOptions): grpc.handleUnaryCall<CheckRequest, Record<string, unknown>> {
  return (call, callback) => {
    let decision: Decision;
    try {
      decision = opts.authorizer.checkEnvoy(call.request);
    } catch (err) {
      opts.onInternalError?.(err);
      decision = internalErrorDecision();
    }
    callback(null, toCheckResponse(decision));
  };
}

export function createGrpcServer(opts: GrpcServerOptions): grpc.Server {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': opts.maxReceiveMessageLength ?? 1024 * 1024,
    'grpc.max_send_message_length': 64 * 1024,
  });
  server.addService(loadAuthorizationService(), { Check: checkHandler(opts) });
  return server;
}

export function bindGrpcServer(server: grpc.Server, addr: string, creds = grpc.ServerCredentials.createInsecure()): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(addr, creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
}
