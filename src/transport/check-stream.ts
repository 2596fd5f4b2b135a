// A Check call answered on its HTTP/2 stream, without grpc-js's call objects. grpc-js spends about
// 20 us of CPU on each unary call (metadata objects, interceptor layers, a promise per message, a
// write callback before the trailers); on the warm benchmark that was a fifth of a Check. grpc-js
// still owns the connections, TLS, keepalive, health and shutdown: only streams that carry a Check in
// the plain shape Envoy sends are taken (acceptsCheckStream); any other stream, and any Check with
// compression or an unusual deadline header, goes to grpc-js untouched.
//
// What a caller sees is grpc-js 1.14's behaviour, status for status and byte for byte
// (test/fuzz/check-stream.fuzz.test.ts runs both on generated and damaged calls): the same framing,
// message size limits, deadline, unary rules and error texts.
import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import { TLSSocket } from 'node:tls';
import { status as Status } from '@grpc/grpc-js';
import type { CheckRequest } from '../decision/input.js';

export const CHECK_PATH = '/envoy.service.auth.v3.Authorization/Check';

/** What a Check answer is: its bytes as the transport sends them (here a whole gRPC frame), or a status. */
export type UnaryAnswer = { ok: Buffer } | { code: number; details: string };

/** The calling peer, as grpc-js's getAuthContext() and getPeer() describe it. */
export interface CallPeer {
  /** a TLS connection whose client certificate the handshake verified */
  tls: boolean;
  certificate?: Buffer;
  name(): string;
}

export interface CheckStreamOptions {
  maxReceiveBytes: number;
  maxSendBytes: number;
  deserialize(bytes: Buffer): CheckRequest;
  /** decides the call (never throws); receivedAt as for Authorizer.checkEnvoy; the peer is read on demand */
  answer(request: CheckRequest, receivedAt: number, peer: () => CallPeer): UnaryAnswer;
}

// A deadline in the one form Envoy writes (digits and a unit); grpc-js parses anything else.
const PLAIN_TIMEOUT = /^(\d{1,8})([HMSmun])$/;
const UNIT_MS: Record<string, number> = { H: 3600000, M: 60000, S: 1000, m: 1, u: 0.001, n: 0.000001 };

/** Whether this stream is a Check this module answers exactly as grpc-js would. */
export function acceptsCheckStream(headers: IncomingHttpHeaders): boolean {
  if (headers[':path'] !== CHECK_PATH) return false;
  const type = headers['content-type'];
  if (typeof type !== 'string' || !type.startsWith('application/grpc')) return false;
  const encoding = headers['grpc-encoding'];
  if (encoding !== undefined && encoding !== 'identity') return false;
  const timeout = headers['grpc-timeout'];
  return timeout === undefined || (typeof timeout === 'string' && PLAIN_TIMEOUT.test(timeout));
}

/** The peer facts of a stream's connection, read only when the answer needs them. */
export function streamPeer(stream: ServerHttp2Stream): CallPeer {
  const socket = stream.session?.socket;
  const verified = socket instanceof TLSSocket && socket.authorized;
  const certificate = verified ? socket.getPeerCertificate() : undefined;
  return {
    tls: verified,
    ...(certificate?.raw ? { certificate: certificate.raw } : {}),
    name: () => peerName(socket?.remoteAddress, socket?.remotePort),
  };
}

function peerName(address: string | undefined, port: number | undefined): string {
  if (!address) return 'unknown';
  return port ? `${address}:${port}` : address;
}

const OK_HEADERS = {
  ':status': 200,
  'content-type': 'application/grpc+proto',
  'grpc-accept-encoding': 'identity,deflate,gzip',
  'grpc-encoding': 'identity',
};
const OK_TRAILERS = { 'grpc-status': Status.OK, 'grpc-message': 'OK' };

/** Takes the stream (the caller checked acceptsCheckStream) and answers it once. */
export function serveCheckStream(
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  opts: CheckStreamOptions,
): void {
  new CheckCall(stream, headers, opts);
}

class CheckCall {
  private done = false;
  private request: CheckRequest | undefined;
  private timer: NodeJS.Timeout | undefined;
  // gRPC framing: a 1-byte flag and a 4-byte big-endian length before each message.
  private prefix: Buffer | undefined; // made only when a prefix is split across chunks
  private prefixHave = 0;
  private body: Buffer[] = [];
  private bodyNeed = -1;
  private bodySize = 0;

  constructor(
    private readonly stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    private readonly opts: CheckStreamOptions,
  ) {
    // An error is always followed by 'close', which is where a call ends; there is no one to tell.
    stream.once('error', ignore);
    stream.once('close', () => this.finish());
    const timeout = headers['grpc-timeout'];
    if (typeof timeout === 'string') {
      const m = PLAIN_TIMEOUT.exec(timeout)!;
      this.timer = setTimeout(
        () => this.fail(Status.DEADLINE_EXCEEDED, 'Deadline exceeded'),
        (Number(m[1]) * UNIT_MS[m[2]!]!) | 0,
      );
    }
    stream.on('data', (chunk: Buffer) => this.read(chunk));
    stream.once('end', () => this.halfClosed());
  }

  private read(chunk: Buffer): void {
    if (this.done) return;
    // The whole chunk is framed before any of its messages is read, as grpc-js does: an oversized
    // length anywhere in it is the answer, even after a message that would not have decoded.
    let first: Buffer | undefined;
    let more: Buffer[] | undefined;
    let at = 0;
    while (at < chunk.length) {
      if (this.bodyNeed < 0) {
        // The common case, a whole message in one chunk, is sliced without copying.
        if (this.prefixHave === 0 && chunk.length - at >= 5) {
          this.bodySize = chunk.readUInt32BE(at + 1);
          at += 5;
        } else {
          const prefix = (this.prefix ??= Buffer.alloc(5));
          const take = Math.min(5 - this.prefixHave, chunk.length - at);
          chunk.copy(prefix, this.prefixHave, at, at + take);
          this.prefixHave += take;
          at += take;
          if (this.prefixHave < 5) break;
          this.bodySize = prefix.readUInt32BE(1);
          this.prefixHave = 0;
        }
        if (this.bodySize > this.opts.maxReceiveBytes) {
          this.fail(
            Status.RESOURCE_EXHAUSTED,
            `Received message larger than max (${this.bodySize} vs ${this.opts.maxReceiveBytes})`,
          );
          return;
        }
        this.bodyNeed = this.bodySize;
      }
      const take = Math.min(this.bodyNeed, chunk.length - at);
      let complete: Buffer | undefined;
      if (this.body.length === 0 && take === this.bodySize) {
        complete = chunk.subarray(at, at + take);
      } else {
        this.body.push(chunk.subarray(at, at + take));
        this.bodyNeed -= take;
        if (this.bodyNeed === 0) {
          complete = Buffer.concat(this.body, this.bodySize);
          this.body = [];
        }
      }
      at += take;
      if (complete) {
        this.bodyNeed = -1;
        if (first === undefined) first = complete;
        else (more ??= []).push(complete);
      }
    }
    if (first !== undefined) this.message(first);
    if (more) for (const bytes of more) this.message(bytes);
  }

  // Each message is decoded before it counts as the call's one request, as grpc-js reads them: a
  // second message that does not decode is INTERNAL, one that does is UNIMPLEMENTED.
  private message(bytes: Buffer): void {
    if (this.done) return;
    let request: CheckRequest;
    try {
      request = this.opts.deserialize(bytes);
    } catch {
      this.fail(Status.INTERNAL, 'Error deserializing request');
      return;
    }
    if (this.request !== undefined) {
      this.fail(Status.UNIMPLEMENTED, `Received a second request message for server streaming method ${CHECK_PATH}`);
      return;
    }
    this.request = request;
  }

  private halfClosed(): void {
    if (this.done) return;
    const request = this.request;
    if (request === undefined) {
      this.fail(Status.UNIMPLEMENTED, `Received no request message for server streaming method ${CHECK_PATH}`);
      return;
    }
    // As the grpc-js handler does (grpc-server.ts): timed from here, decided on the next turn, so a
    // reset read in the same batch spares the evaluation.
    const receivedAt = performance.now();
    setImmediate(() => this.decide(request, receivedAt));
  }

  private decide(request: CheckRequest, receivedAt: number): void {
    if (this.gone()) return;
    const answer = this.opts.answer(request, receivedAt, () => streamPeer(this.stream));
    if (!('ok' in answer)) {
      this.fail(answer.code, answer.details);
      return;
    }
    const framed = answer.ok;
    if (framed.length - 5 > this.opts.maxSendBytes) {
      this.fail(
        Status.RESOURCE_EXHAUSTED,
        `Sent message larger than max (${framed.length} vs. ${this.opts.maxSendBytes})`,
      );
      return;
    }
    this.finish();
    const stream = this.stream;
    stream.respond(OK_HEADERS, { waitForTrailers: true });
    stream.once('wantTrailers', () => stream.sendTrailers(OK_TRAILERS));
    stream.end(framed);
  }

  /** A status without a message: grpc-js's "trailers-only" answer, one HEADERS frame. */
  private fail(code: number, details: string): void {
    if (this.gone()) return;
    this.finish();
    this.stream.respond(
      {
        ':status': 200,
        'content-type': 'application/grpc+proto',
        'grpc-status': code,
        'grpc-message': encodeURI(details),
      },
      { endStream: true },
    );
  }

  private gone(): boolean {
    if (this.done) return true;
    if (this.stream.destroyed || this.stream.closed) this.finish();
    return this.done;
  }

  private finish(): void {
    this.done = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

function ignore(): void {}
