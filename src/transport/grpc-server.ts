// Envoy's ext_authz v3 Authorization service on @grpc/grpc-js. Every Check gets a decision: a failure
// anywhere below turns into a PERMISSION_DENIED answer, never a gRPC error Envoy would have to interpret.
import * as grpc from '@grpc/grpc-js';
import type { Authorizer } from '../decision/authorizer.js';
import { internalErrorDecision, type Decision } from '../decision/decision.js';
import { loadAuthorizationRoot, loadAuthorizationService } from './envoy-protos.js';
import { checkRequestDeserializer } from './check-request-wire.js';
import { encodeCheckResponse, encodeCheckResponseFrame } from './check-response-wire.js';
import type { CheckRequest } from '../decision/input.js';
import { judgePeer, type PeerPolicy, type PeerVerdict } from './tls.js';
import type * as http2 from 'node:http2';
import {
  acceptsCheckStream,
  serveCheckStream,
  type CallPeer,
  type CheckStreamOptions,
  type UnaryAnswer,
} from './check-stream.js';

export interface GrpcServerOptions {
  authorizer: Authorizer;
  /** called when the pipeline itself failed (a bug); the caller still gets a deny */
  onInternalError?: (err: unknown) => void;
  maxReceiveMessageLength?: number;
  credentials?: grpc.ServerCredentials;
  /** mTLS: who may ask; a refused caller gets UNAUTHENTICATED / PERMISSION_DENIED and no decision */
  peerPolicy?: PeerPolicy;
  onPeerRefused?: (verdict: Extract<PeerVerdict, { ok: false }>, peer: string) => void;
  /** 'grpc-js' answers every Check through grpc-js's call objects: the reference check-stream.ts is tested against */
  checkTransport?: CheckTransport;
}

/** Who answers Check calls: check-stream.ts on the HTTP/2 stream ('stream'), or grpc-js ('grpc-js'). */
export type CheckTransport = 'stream' | 'grpc-js';

/** Default cap on a CheckRequest; Envoy's are a few KiB unless it is told to buffer request bodies. */
export const DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 1024 * 1024;
/** Streams one client connection may have open at once; more are refused (REFUSED_STREAM), not queued. */
const MAX_CONCURRENT_STREAMS = 1024;
const MAX_SEND_MESSAGE_BYTES = 64 * 1024;

let grpcJsChecks = 0;
/** Check calls answered through grpc-js's call objects (not check-stream.ts), since the process started. */
export function checksAnsweredByGrpcJs(): number {
  return grpcJsChecks;
}

function checkHandler(opts: GrpcServerOptions): grpc.handleUnaryCall<CheckRequest, Buffer> {
  return (call, callback) => {
    grpcJsChecks++;
    // Timed from when it was read, decided on the next turn of the event loop: checks read together
    // (a backlog behind a slow evaluation) each keep their own arrival time, and by then the reset of a
    // call Envoy gave up on has been read too. Such a call gets no evaluation and no answer.
    const receivedAt = performance.now();
    setImmediate(() => {
      if (call.cancelled) return;
      const answer = answerCheck(opts, encodeCheckResponse, call.request, receivedAt, () => grpcJsPeer(call));
      if ('ok' in answer) callback(null, answer.ok);
      else callback(answer);
    });
  };
}

function grpcJsPeer(call: grpc.ServerUnaryCall<CheckRequest, Buffer>): CallPeer {
  const auth = call.getAuthContext();
  return {
    tls: auth.transportSecurityType === 'ssl',
    ...(auth.sslPeerCertificate?.raw ? { certificate: auth.sslPeerCertificate.raw } : {}),
    name: () => call.getPeer(),
  };
}

/**
 * The answer to one Check, whichever of the two transports carries it, encoded as that transport sends
 * it (grpc-js frames the message itself; the stream path sends encodeCheckResponseFrame's bytes). The
 * peer is read only under a peer policy (a TLS peer's certificate is parsed into an object on every read).
 */
function answerCheck(
  opts: GrpcServerOptions,
  encode: (d: Decision) => Buffer,
  request: CheckRequest,
  receivedAt: number,
  peerOf: () => CallPeer,
): UnaryAnswer {
  try {
    if (opts.peerPolicy) {
      const peer = peerOf();
      const verdict = judgePeer(opts.peerPolicy, peer.tls, peer.certificate);
      if (!verdict.ok) {
        opts.onPeerRefused?.(verdict, peer.name());
        const code = verdict.refusal === 'forbidden' ? grpc.status.PERMISSION_DENIED : grpc.status.UNAUTHENTICATED;
        return { code, details: verdict.reason };
      }
    }
    // Encoding is ours now (it was grpc-js's): a decision it cannot write is a bug below, answered as one.
    return { ok: encode(opts.authorizer.checkEnvoy(request, receivedAt)) };
  } catch (err) {
    // Thrown on the event loop's own turn (setImmediate), it would end the process: a deny instead.
    opts.onInternalError?.(err);
    return { ok: encode(internalErrorDecision('envoy')) };
  }
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

/** Servers whose Check streams are to be taken once bound, with what answering them needs. */
const streamChecks = new WeakMap<grpc.Server, CheckStreamOptions>();
const boundTransport = new WeakMap<grpc.Server, CheckTransport>();

export function createGrpcServer(opts: GrpcServerOptions): grpc.Server {
  const maxReceiveBytes = opts.maxReceiveMessageLength ?? DEFAULT_MAX_RECEIVE_MESSAGE_BYTES;
  const server = new grpc.Server({
    'grpc.max_receive_message_length': maxReceiveBytes,
    'grpc.max_send_message_length': MAX_SEND_MESSAGE_BYTES,
    'grpc.max_concurrent_streams': MAX_CONCURRENT_STREAMS,
  });
  const definition = serverDefinition();
  server.addService(definition, { Check: checkHandler(opts) });
  if (opts.checkTransport !== 'grpc-js') {
    streamChecks.set(server, {
      maxReceiveBytes,
      maxSendBytes: MAX_SEND_MESSAGE_BYTES,
      deserialize: requestDeserialize!,
      answer: (request, receivedAt, peer) => answerCheck(opts, encodeCheckResponseFrame, request, receivedAt, peer),
    });
  }
  return server;
}

export function bindGrpcServer(
  server: grpc.Server,
  addr: string,
  creds = grpc.ServerCredentials.createInsecure(),
): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(addr, creds, (err, port) => {
      if (err) return reject(err);
      const options = streamChecks.get(server);
      boundTransport.set(server, options && takeCheckStreams(server, options) ? 'stream' : 'grpc-js');
      resolve(port);
    });
  });
}

/** Who answers this bound server's Checks; 'grpc-js' too when the stream takeover could not be set up. */
export function checkTransportOf(server: grpc.Server): CheckTransport {
  return boundTransport.get(server) ?? 'grpc-js';
}

// grpc-js has no public hook below its call objects. Its HTTP/2 servers (a private map, one per bound
// address) each have one 'stream' listener: it is wrapped so that the Checks check-stream.ts accepts
// are answered there and every other stream still reaches grpc-js. If grpc-js is not shaped so (another
// version), nothing is changed and grpc-js answers everything, as before; the serving log says which.
// What grpc-js does per stream before its call objects is only its idle-connection timer's stream
// count, which is off unless grpc.max_connection_idle_ms is set (createGrpcServer does not set it).
const wrapped = new WeakSet<http2.Http2Server>();

function takeCheckStreams(server: grpc.Server, options: CheckStreamOptions): boolean {
  const servers = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(servers instanceof Map) || servers.size === 0) return false;
  const targets: Array<{ h2: http2.Http2Server; grpcJs: (...args: unknown[]) => void }> = [];
  for (const h2 of servers.keys() as IterableIterator<http2.Http2Server | null>) {
    if (h2 && wrapped.has(h2)) continue; // bound earlier, by another bindGrpcServer of this server
    const listeners = typeof h2?.listeners === 'function' ? h2.listeners('stream') : [];
    if (!h2 || listeners.length !== 1) return false;
    targets.push({ h2, grpcJs: listeners[0] as (...args: unknown[]) => void });
  }
  for (const { h2, grpcJs } of targets) {
    h2.removeListener('stream', grpcJs);
    h2.on('stream', (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, ...rest: unknown[]) => {
      if (acceptsCheckStream(headers)) serveCheckStream(stream, headers, options);
      else grpcJs.call(h2, stream, headers, ...rest);
    });
    wrapped.add(h2);
  }
  return true;
}
