// The BIG-IP sideband endpoint, `POST /v1/sideband`: the iRule sends the client certificate it verified
// (PEM, leaf first) and applies the answer with plain string commands, so the whole answer is in a few
// headers: 200 allow / 403 deny / 400 malformed, every one of them with X-Egress-Decision. The decision
// itself comes from the same Authorizer path as Envoy's; this module only speaks HTTP.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { oneLine, type Decision } from '../decision/decision.js';
import type { SidebandRequest } from '../decision/input.js';
import {
  CACHE_TTL_HEADER,
  DECISION_HEADER,
  DECISION_ID_HEADER,
  REASON_HEADER,
  SIDEBAND_REQUEST_HEADERS,
  SNAT_POOL_HEADER,
} from './headers.js';

const SIDEBAND_PATH = '/v1/sideband';

/** A leaf and a couple of intermediates fit in a few KiB; anything far larger is not from the iRule. */
export const MAX_SIDEBAND_BODY = 16 * 1024;
const MAX_OPTIONAL_HEADER = 256;

export interface SidebandAuthorizer {
  /** receivedAt: performance.now() when the request had been read (the check deadline counts from there) */
  checkSideband(req: SidebandRequest, receivedAt?: number): Decision;
}

/** The route table entry the HTTP listener mounts. */
export function sidebandRoutes(
  authorizer: SidebandAuthorizer,
  opts: SidebandOptions = {},
): Record<string, (req: IncomingMessage, res: ServerResponse) => void> {
  return { [`POST ${SIDEBAND_PATH}`]: (req, res) => handleSideband(req, res, authorizer, opts) };
}

export interface SidebandOptions {
  /** upper bound for X-Egress-Cache-Ttl, in seconds (default DEFAULT_SIDEBAND_CACHE_TTL_S; 0: never cache) */
  cacheTtlS?: number;
}

/** What the transport answers; `decision` is absent when the request never reached the policy. */
export interface SidebandAnswer {
  status: number;
  allow: boolean;
  snatPool: string;
  decisionId: string;
  reason: string;
  /** seconds the iRule may reuse this answer for the same request fields (X-Egress-Cache-Ttl) */
  cacheTtlS: number;
  decision?: Decision;
}

/** Default for how long the iRule may reuse an answer; a policy change reaches cached answers this late. */
const DEFAULT_SIDEBAND_CACHE_TTL_S = 10;

// What the iRule's cache key covers (the certificate chain, the virtual server, the client address, the
// destination), as input fields. An answer that may depend on anything else (the request id, a header,
// the clock) must not be reused.
const CACHE_KEYED_INPUT = new Set(['caller', 'identity', 'identity_error', 'destination', 'sideband', 'version']);

/** 0 unless the decision is a function of the fields the iRule keys its cache on. */
export function sidebandCacheTtl(d: Decision, ttlS: number): number {
  const keys = d.input_keys;
  if (keys === undefined || !keys.every((k) => CACHE_KEYED_INPUT.has(k))) return 0;
  return ttlS;
}

const ACCEPTED_CONTENT_TYPES = new Set(['application/x-pem-file', 'text/plain']);

/**
 * Answers one sideband request. Never throws: every path ends in an answer with X-Egress-Decision, and
 * anything this code cannot vouch for is a deny.
 */
function handleSideband(
  req: IncomingMessage,
  res: ServerResponse,
  authorizer: SidebandAuthorizer,
  opts: SidebandOptions,
): void {
  const respond = (a: SidebandAnswer, close = false): void => writeAnswer(res, a, close);
  if (req.method !== 'POST') {
    res.setHeader('Allow', 'POST');
    respond(malformed(`method ${req.method ?? ''} not allowed`, 405));
    req.resume();
    return;
  }
  const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (contentType !== '' && !ACCEPTED_CONTENT_TYPES.has(contentType)) {
    respond(malformed(`content type ${contentType} not accepted; send application/x-pem-file`));
    req.resume();
    return;
  }
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > MAX_SIDEBAND_BODY) {
    // Not reading a body we refuse: close the connection instead of draining it.
    respond(malformed(`body too large (limit ${MAX_SIDEBAND_BODY} bytes)`), true);
    return;
  }
  const optional = optionalHeaders(req);
  if (!optional.ok) {
    respond(malformed(optional.reason));
    req.resume();
    return;
  }

  const chunks: Buffer[] = [];
  let size = 0;
  let refused = false;
  req.on('data', (chunk: Buffer) => {
    if (refused) return;
    size += chunk.length;
    if (size > MAX_SIDEBAND_BODY) {
      refused = true;
      respond(malformed(`body too large (limit ${MAX_SIDEBAND_BODY} bytes)`), true);
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    if (refused) return;
    // As for Envoy's checks (grpc-server.ts): timed from when it was read, decided on the next turn of
    // the loop. Requests read in one poll after a slow evaluation (several BIG-IP connections) each keep
    // their own arrival time, so the late ones are denied by the deadline instead of each adding an
    // evaluation the iRule's callout has long stopped waiting for. A request whose connection is gone
    // by then gets no evaluation.
    const receivedAt = performance.now();
    setImmediate(() => {
      if (req.socket.destroyed) return;
      const cacheTtlS = opts.cacheTtlS ?? DEFAULT_SIDEBAND_CACHE_TTL_S;
      respond(decideBody(Buffer.concat(chunks), req, optional.value, authorizer, cacheTtlS, receivedAt));
    });
  });
  req.on('error', () => {
    if (!res.headersSent) respond(malformed('request body could not be read'), true);
  });
}

function decideBody(
  body: Buffer,
  req: IncomingMessage,
  fields: SidebandFields,
  authorizer: SidebandAuthorizer,
  cacheTtlS: number,
  receivedAt: number,
): SidebandAnswer {
  if (body.length === 0) return malformed('empty body: send the client certificate as PEM');
  const pem = body.toString('latin1');
  // PEM is ASCII; a body with other bytes is not what an iRule sends.
  if (/[^\x09\x0a\x0d\x20-\x7e]/.test(pem)) return malformed('body is not PEM text');
  const request: SidebandRequest = { certificatePem: pem, headers: stringHeaders(req), ...fields };
  let decision: Decision;
  try {
    decision = authorizer.checkSideband(request, receivedAt);
  } catch {
    return {
      status: 500,
      allow: false,
      snatPool: '',
      decisionId: randomUUID(),
      reason: 'internal error',
      cacheTtlS: 0,
    };
  }
  // The decision log records a malformed PEM as a deny like any other; the status tells the operator
  // that the request, not the identity, was wrong.
  const status = decision.allow ? 200 : decision.failure_code === 'pem' ? 400 : 403;
  return {
    status,
    allow: decision.allow && status === 200,
    snatPool: decision.allow ? decision.snat_pool : '',
    decisionId: decision.decision_id,
    reason: decision.reason,
    cacheTtlS: sidebandCacheTtl(decision, cacheTtlS),
    decision,
  };
}

/** The request fields the iRule may send as headers beside the certificate. */
type SidebandFields = Pick<SidebandRequest, 'virtualServer' | 'clientAddress' | 'destination' | 'requestId'>;

function optionalHeaders(req: IncomingMessage): { ok: true; value: SidebandFields } | { ok: false; reason: string } {
  const value: SidebandFields = {};
  for (const [field, name] of Object.entries(SIDEBAND_REQUEST_HEADERS) as [keyof SidebandFields, string][]) {
    const raw = req.headers[name];
    if (raw === undefined) continue;
    if (typeof raw !== 'string' || raw.length > MAX_OPTIONAL_HEADER || !/^[\x21-\x7e]*$/.test(raw.trim())) {
      return { ok: false, reason: `malformed ${name} header` };
    }
    if (raw.trim() !== '') value[field] = raw.trim();
  }
  return { ok: true, value };
}

function stringHeaders(req: IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.headers)) {
    if (typeof v === 'string') out[k] = v;
    else if (Array.isArray(v)) out[k] = v.join(', ');
  }
  return out;
}

function malformed(reason: string, status = 400): SidebandAnswer {
  return { status, allow: false, snatPool: '', decisionId: randomUUID(), reason, cacheTtlS: 0 };
}

function answerBody(a: SidebandAnswer): string {
  return a.allow ? `allow ${a.snatPool}\n` : `deny: ${oneLine(a.reason)}\n`;
}

function writeAnswer(res: ServerResponse, a: SidebandAnswer, close: boolean): void {
  if (res.headersSent || res.destroyed) return;
  const body = answerBody(a);
  res.statusCode = a.status;
  res.setHeader(DECISION_HEADER, a.allow ? 'allow' : 'deny');
  res.setHeader(SNAT_POOL_HEADER, a.allow ? a.snatPool : '');
  res.setHeader(DECISION_ID_HEADER, a.decisionId);
  res.setHeader(REASON_HEADER, oneLine(a.reason));
  res.setHeader(CACHE_TTL_HEADER, String(a.cacheTtlS));
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.setHeader('Cache-Control', 'no-store');
  if (close) res.setHeader('Connection', 'close');
  res.end(body);
}

/**
 * The raw answer for a request Node's parser refused (bad request line, bad header, too large, too
 * slow): still a deny the iRule can read, then the connection closes.
 */
function rawDenyAnswer(status: number, reason: string): string {
  const text = oneLine(reason);
  const body = `deny: ${text}\n`;
  const phrase =
    status === 408 ? 'Request Timeout' : status === 431 ? 'Request Header Fields Too Large' : 'Bad Request';
  return (
    `HTTP/1.1 ${status} ${phrase}\r\n` +
    `${DECISION_HEADER}: deny\r\n${SNAT_POOL_HEADER}: \r\n${DECISION_ID_HEADER}: ${randomUUID()}\r\n` +
    `${REASON_HEADER}: ${text}\r\n${CACHE_TTL_HEADER}: 0\r\nContent-Type: text/plain; charset=utf-8\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
  );
}

/**
 * Makes the HTTP listener fit for the sideband: a readable deny for requests Node cannot parse. Its
 * timeouts are the listener's own (http-server.ts).
 */
export function configureSidebandServer(server: Server): void {
  // An HTTP/1.1 request without Host would get Node's bare 400; the sideband answers every request
  // itself, with the deny headers (the routing never depends on Host).
  (server as Server & { requireHostHeader?: boolean }).requireHostHeader = false;
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    if (!socket.writable || err.code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    const status = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    const reason =
      status === 408
        ? 'request not received in time'
        : status === 431
          ? 'request headers too large'
          : `malformed HTTP request (${err.code ?? 'parse error'})`;
    socket.end(rawDenyAnswer(status, reason));
  });
}
