// The Check transport of our own (check-stream.ts) against grpc-js's, the reference it replaces: the
// same generated and damaged calls go to a server of each kind, over one HTTP/2 connection each (as
// Envoy's), and every answer must be the same: HTTP status, headers, the message bytes, trailers, and
// whether the call was answered at all. The calls vary what a caller controls: the path, content type,
// deadline and encoding headers; how many messages, their flags and lengths, damaged or not; how the
// bytes are split into DATA frames; and whether the caller half-closes. Every call the stream path
// accepts must have been answered by it (not handed back to grpc-js).
import { createHash } from 'node:crypto';
import http2 from 'node:http2';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { decide, type Decision } from '../../src/decision/decision.js';
import type { CheckRequest } from '../../src/decision/input.js';
import { loadAuthorizationService } from '../../src/transport/envoy-protos.js';
import { acceptsCheckStream, CHECK_PATH } from '../../src/transport/check-stream.js';
import {
  bindGrpcServer,
  checkTransportOf,
  createGrpcServer,
  type CheckTransport,
} from '../../src/transport/grpc-server.js';
import { checkRequest } from '../support/service.js';
import { scaledRuns } from './runs.js';

const MAX_RECEIVE = 8192;
const RUNS = scaledRuns(2);
const serializeRequest = (loadAuthorizationService().Check as grpc.MethodDefinition<unknown, unknown>).requestSerialize;

interface Served {
  transport: CheckTransport;
  port: number;
  server: grpc.Server;
  /** hosts (one per case) evaluated, and whether the stream path was the one that asked */
  evaluated: Map<string, boolean>;
}

// A decision that is a function of the whole request the transport handed over (its hash is the
// decision id), so two servers answer alike only if they read the same request.
function stubAuthorizer(evaluated: Map<string, boolean>) {
  return {
    checkEnvoy(req: CheckRequest): Decision {
      const http = req.attributes?.request?.http;
      evaluated.set(String(http?.host), new Error().stack?.includes('CheckCall') ?? false);
      const principal = String(req.attributes?.source?.principal ?? '');
      if (principal.includes('boom')) throw new Error('a bug below the transport');
      const d = decide({ caller: 'envoy', identity: null, destination: { host: String(http?.host ?? '') } }, undefined);
      d.decision_id = createHash('sha256').update(JSON.stringify(req)).digest('hex').slice(0, 32);
      // Larger than the 64 KiB a server may send: RESOURCE_EXHAUSTED from both.
      if (principal.includes('huge')) for (let i = 0; i < 80; i++) d.headers[`x-big-${i}`] = 'v'.repeat(1000);
      return d;
    },
  };
}

async function serve(transport: CheckTransport): Promise<Served> {
  const evaluated = new Map<string, boolean>();
  const server = createGrpcServer({
    authorizer: stubAuthorizer(evaluated) as never,
    maxReceiveMessageLength: MAX_RECEIVE,
    checkTransport: transport,
  });
  const port = await bindGrpcServer(server, '127.0.0.1:0');
  return { transport, port, server, evaluated };
}

interface Message {
  body: 'request' | 'garbage' | 'empty';
  principal: string;
  flag: number;
  /** keep only this many bytes of the body (a damaged message), or all */
  cut: number | null;
  /** a declared length other than the body's (oversize, or short) */
  lengthDelta: number | null;
  flips: Array<[number, number]>;
}

interface Case {
  path: string;
  contentType: string | undefined;
  timeout: string | undefined;
  encoding: string | undefined;
  messages: Message[];
  /** bytes of an unfinished frame after the messages */
  trailing: number[];
  /** cut points (fractions of the body) where a new DATA frame starts */
  splits: number[];
  halfClose: boolean;
}

const message: fc.Arbitrary<Message> = fc.record({
  body: fc.constantFrom('request', 'request', 'request', 'garbage', 'empty'),
  principal: fc.constantFrom(
    'spiffe://cluster.local/ns/bookinfo/sa/productpage',
    'spiffe://cluster.local/ns/other/sa/a',
    'spiffe://boom/x',
    'spiffe://huge/x',
    '',
  ),
  flag: fc.constantFrom(0, 0, 0, 1, 2, 255),
  cut: fc.oneof({ weight: 5, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat(400) }),
  lengthDelta: fc.oneof(
    { weight: 6, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.integer({ min: -20, max: 20 }) },
    { weight: 2, arbitrary: fc.constantFrom(MAX_RECEIVE, MAX_RECEIVE + 1, 0x7fffffff, 0xffffffff) },
  ),
  flips: fc.oneof(
    { weight: 4, arbitrary: fc.constant<Array<[number, number]>>([]) },
    { weight: 1, arbitrary: fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 4 }) },
  ),
});

// Three calls in four carry Envoy's headers (those the stream path takes), the rest any headers.
const envoyHeaders = fc.record({
  path: fc.constant(CHECK_PATH),
  contentType: fc.constant('application/grpc'),
  timeout: fc.constantFrom(undefined, '5S', '30m', '100m'),
  encoding: fc.constant(undefined),
});
// No deadline under a millisecond: its timer (0 ms) races the answer in grpc-js itself, which may even
// send the message and then DEADLINE_EXCEEDED in the trailers; neither outcome is the reference's.
const anyHeaders = fc.record({
  path: fc.constantFrom(CHECK_PATH, '/envoy.service.auth.v3.Authorization/Nope', '/x'),
  contentType: fc.constantFrom('application/grpc', 'application/grpc+proto', 'application/json', undefined),
  timeout: fc.constantFrom(undefined, '20000m', '99999999u', 'abc', '123456789S', '10 m', 'x7Sy'),
  encoding: fc.constantFrom(undefined, 'identity', 'gzip', 'br'),
});

const checkCase: fc.Arbitrary<Case> = fc
  .record({
    headers: fc.oneof({ weight: 3, arbitrary: envoyHeaders }, { weight: 1, arbitrary: anyHeaders }),
    messages: fc.oneof(
      { weight: 6, arbitrary: fc.array(message, { minLength: 1, maxLength: 1 }) },
      { weight: 1, arbitrary: fc.constant<Message[]>([]) },
      { weight: 2, arbitrary: fc.array(message, { minLength: 2, maxLength: 3 }) },
    ),
    trailing: fc.oneof(
      { weight: 6, arbitrary: fc.constant<number[]>([]) },
      { weight: 1, arbitrary: fc.array(fc.nat(255), { maxLength: 4 }) },
    ),
    splits: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 3 }),
    halfClose: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  })
  .map(({ headers, ...rest }) => ({ ...headers, ...rest }));

function frame(m: Message, id: string, encoding: string | undefined): Buffer {
  let body: Buffer;
  if (m.body === 'empty') body = Buffer.alloc(0);
  else if (m.body === 'garbage') body = Buffer.from([0xff, 0xff, 0xff, 0x0f, 0x07, 0x08, 0x0a, 0xff]);
  else body = serializeRequest(checkRequest({ principal: m.principal, host: caseHost(id) }));
  // gRPC-compressed when the flag says so and the caller named gzip: grpc-js inflates it.
  if (m.flag === 1 && encoding === 'gzip') body = gzipSync(body);
  body = Buffer.from(body);
  for (const [at, byte] of m.flips) if (body.length > 0) body[at % body.length] = byte;
  if (m.cut !== null) body = body.subarray(0, Math.min(m.cut, body.length));
  const prefix = Buffer.alloc(5);
  prefix[0] = m.flag;
  const declared =
    m.lengthDelta === null ? body.length : m.lengthDelta > 20 ? m.lengthDelta : body.length + m.lengthDelta;
  prefix.writeUInt32BE(Math.max(0, Math.min(declared, 0xffffffff)), 1);
  return Buffer.concat([prefix, body]);
}

/** Which case a request belongs to travels in the request itself, as its host. */
const caseHost = (id: string) => `${id}.example.com:443`;

/** The request bytes of a case, cut into DATA-frame-sized pieces. */
function pieces(c: Case, id: string): Buffer[] {
  const all = Buffer.concat([...c.messages.map((m) => frame(m, id, c.encoding)), Buffer.from(c.trailing)]);
  const cuts = [...new Set(c.splits.map((f) => Math.floor(f * all.length)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const cut of cuts) {
    if (cut > from) out.push(all.subarray(from, cut));
    from = Math.max(from, cut);
  }
  if (from < all.length) out.push(all.subarray(from));
  return out;
}

interface Outcome {
  headers: Record<string, unknown> | null;
  data: string;
  trailers: Record<string, unknown> | null;
  /** no answer before the caller gave up (a call left open with no deadline) */
  unanswered: boolean;
}

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;
function plain(h: http2.IncomingHttpHeaders): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(h)) if (k !== 'date') out[k] = v;
  return out;
}

function exchange(session: http2.ClientHttp2Session, c: Case, id: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const headers: http2.OutgoingHttpHeaders = { ':method': 'POST', ':path': c.path, te: 'trailers' };
    if (c.contentType !== undefined) headers['content-type'] = c.contentType;
    if (c.timeout !== undefined) headers['grpc-timeout'] = c.timeout;
    if (c.encoding !== undefined) headers['grpc-encoding'] = c.encoding;
    const req = session.request(headers, { endStream: false });
    const out: Outcome = { headers: null, data: '', trailers: null, unanswered: false };
    const data: Buffer[] = [];
    const giveUp = setTimeout(() => {
      out.unanswered = out.headers === null;
      req.close(http2.constants.NGHTTP2_CANCEL);
    }, 150);
    req.on('response', (h) => (out.headers = plain(h)));
    req.on('data', (d: Buffer) => data.push(d));
    req.on('trailers', (t) => (out.trailers = plain(t)));
    req.on('error', () => {});
    req.on('close', () => {
      clearTimeout(giveUp);
      out.data = Buffer.concat(data).toString('latin1').replace(UUID, 'UUID');
      resolve(out);
    });
    void (async () => {
      for (const piece of pieces(c, id)) {
        if (req.closed || req.destroyed) return;
        req.write(piece);
        await new Promise((r) => setImmediate(r));
      }
      if (c.halfClose && !req.closed && !req.destroyed) req.end();
    })();
  });
}

let stream: Served;
let reference: Served;
const sessions: http2.ClientHttp2Session[] = [];

beforeAll(async () => {
  stream = await serve('stream');
  reference = await serve('grpc-js');
});
afterAll(() => {
  for (const s of sessions) s.destroy();
  stream?.server.forceShutdown();
  reference?.server.forceShutdown();
});

let nextId = 0;

describe('fuzz: the Check stream path answers as grpc-js does', () => {
  it('binds as asked', () => {
    expect(checkTransportOf(stream.server)).toBe('stream');
    expect(checkTransportOf(reference.server)).toBe('grpc-js');
  });

  it(
    'generated and damaged calls get the same answers from both',
    async () => {
      const connect = (port: number) => {
        const s = http2.connect(`http://127.0.0.1:${port}`);
        s.on('error', () => {});
        sessions.push(s);
        return s;
      };
      const toStream = connect(stream.port);
      const toReference = connect(reference.port);
      let byStream = 0;
      await fc.assert(
        fc.asyncProperty(fc.array(checkCase, { minLength: 1, maxLength: 6 }), async (batch) => {
          const ids = batch.map(() => `c${nextId++}`);
          const [mine, theirs] = await Promise.all([
            Promise.all(batch.map((c, i) => exchange(toStream, c, ids[i]!))),
            Promise.all(batch.map((c, i) => exchange(toReference, c, ids[i]!))),
          ]);
          for (let i = 0; i < batch.length; i++) {
            expect({ case: batch[i], outcome: mine[i] }).toEqual({ case: batch[i], outcome: theirs[i] });
            const host = caseHost(ids[i]!);
            // Evaluated by the stream path exactly when it accepts the call; never by it on the reference.
            if (stream.evaluated.has(host)) {
              expect(stream.evaluated.get(host)).toBe(acceptsCheckStream(caseHeaders(batch[i]!)));
              if (stream.evaluated.get(host)) byStream++;
            }
            if (reference.evaluated.has(host)) expect(reference.evaluated.get(host)).toBe(false);
          }
        }),
        { numRuns: RUNS },
      );
      expect(byStream).toBeGreaterThan(0);
    },
    30_000 + RUNS * 600,
  );
});

function caseHeaders(c: Case): http2.IncomingHttpHeaders {
  return {
    ':path': c.path,
    ...(c.contentType !== undefined ? { 'content-type': c.contentType } : {}),
    ...(c.timeout !== undefined ? { 'grpc-timeout': c.timeout } : {}),
    ...(c.encoding !== undefined ? { 'grpc-encoding': c.encoding } : {}),
  };
}
