// Envoy's ext_authz v3 Authorization service on @grpc/grpc-js. Every Check gets a decision: a failure
// anywhere below turns into a PERMISSION_DENIED answer, never a gRPC error Envoy would have to interpret.
import * as grpc from '@grpc/grpc-js';
import type { Authorizer } from '../decision/authorizer.js';
import { internalErrorDecision } from '../decision/decision.js';
import { loadAuthorizationRoot, loadAuthorizationService } from './envoy-protos.js';
import { checkRequestDeserializer } from './check-request-wire.js';
import { encodeCheckResponse } from './check-response-wire.js';
import type { CheckRequest } from '../decision/input.js';
import { judgePeer, type PeerPolicy, type PeerVerdict } from './tls.js';

export interface GrpcServerOptions {
  authorizer: Authorizer;
  /** called when the pipeline itself failed (a bug); the caller still gets a deny */
  onInternalError?: (err: unknown) => void;
  maxReceiveMessageLength?: number;
  credentials?: grpc.ServerCredentials;
  /** mTLS: who may ask; a refused caller gets UNAUTHENTICATED / PERMISSION_DENIED and no decision */
  peerPolicy?: PeerPolicy;
  onPeerRefused?: (verdict: Extract<PeerVerdict, { ok: false }>, peer: string) => void;
}

/** Default cap on a CheckRequest; Envoy's are a few KiB unless it is told to buffer request bodies. */
export const DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 1024 * 1024;
/** Streams one client connection may have open at once; more are refused (REFUSED_STREAM), not queued. */
const MAX_CONCURRENT_STREAMS = 1024;

function checkHandler(opts: GrpcServerOptions): grpc.handleUnaryCall<CheckRequest, Buffer> {
  return (call, callback) => {
    // Timed from when it was read, decided on the next turn of the event loop: checks read together
    // (a backlog behind a slow evaluation) each keep their own arrival time, and by then the reset of a
    // call Envoy gave up on has been read too. Such a call gets no evaluation and no answer.
    const receivedAt = performance.now();
    setImmediate(() => {
      if (!call.cancelled) answerCheck(opts, call, callback, receivedAt);
    });
  };
}

function answerCheck(
  opts: GrpcServerOptions,
  call: grpc.ServerUnaryCall<CheckRequest, Buffer>,
  callback: grpc.sendUnaryData<Buffer>,
  receivedAt: number,
): void {
  if (opts.peerPolicy) {
    const auth = call.getAuthContext();
    const verdict = judgePeer(opts.peerPolicy, auth.transportSecurityType === 'ssl', auth.sslPeerCertificate?.raw);
    if (!verdict.ok) {
      opts.onPeerRefused?.(verdict, call.getPeer());
      const code = verdict.refusal === 'forbidden' ? grpc.status.PERMISSION_DENIED : grpc.status.UNAUTHENTICATED;
      callback({ code, details: verdict.reason });
      return;
    }
  }
  let answer: Buffer;
  try {
    // Encoding is ours now (it was grpc-js's): a decision it cannot write is a bug below, answered as one.
    answer = encodeCheckResponse(opts.authorizer.checkEnvoy(call.request, receivedAt));
  } catch (err) {
    opts.onInternalError?.(err);
    answer = encodeCheckResponse(internalErrorDecision('envoy'));
  }
  callback(null, answer);
}

// The handler answers with the encoded CheckResponse (encodeCheckResponse), so the server's copy of the
// definition passes those bytes through, and reads requests with check-request-wire.ts, which gives
// proto-loader's objects; clients keep proto-loader's serializers.
let requestDeserialize: ((bytes: Buffer) => CheckRequest) | undefined;

function serverDefinition(): grpc.ServiceDefinition {
  const definition = loadAuthorizationService();
  const check = definition.Check as grpc.MethodDefinition<CheckRequest, unknown>;
  // Made once a process: the .proto files are parsed again for its field table, then dropped.
  requestDeserialize ??= checkRequestDeserializer(loadAuthorizationRoot(), check.requestDeserialize) as (
    bytes: Buffer,
  ) => CheckRequest;
  return {
    ...definition,
    Check: { ...check, requestDeserialize, responseSerialize: (encoded: Buffer) => encoded },
  };
}

export function createGrpcServer(opts: GrpcServerOptions): grpc.Server {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': opts.maxReceiveMessageLength ?? DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
    'grpc.max_send_message_length': 64 * 1024,
    'grpc.max_concurrent_streams': MAX_CONCURRENT_STREAMS,
  });
  server.addService(serverDefinition(), { Check: checkHandler(opts) });
  return server;
}

export function bindGrpcServer(
  server: grpc.Server,
  addr: string,
  creds = grpc.ServerCredentials.createInsecure(),
): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(addr, creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
}
