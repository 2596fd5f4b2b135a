// Fuzzing both listeners with bytes off the wire: raw HTTP/1.x bytes (mutated sideband requests and
// noise) over a TCP socket, and raw or mutated ext_authz messages over HTTP/2. Properties: the service
// survives and stays ready, and no allow is ever given for a request that does not carry a valid
// bookinfo identity verbatim.
import { connect } from 'node:net';
import http2 from 'node:http2';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAuthorizationService } from '../../src/transport/envoy-protos.js';
import { parseSpiffeId } from '../../src/identity/spiffe-id.js';
import { createCa, workloadSvid, type IssuedCert } from '../support/pki.js';
import { checkRequest, startTestService, type TestService } from '../support/service.js';
import { scaledRuns } from './runs.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';

let svc: TestService;
let bookinfo: IssuedCert;

beforeAll(async () => {
  svc = await startTestService();
  bookinfo = await workloadSvid(await createCa(), BOOKINFO);
});
afterAll(async () => {
  await svc?.close(500);
});

/** Writes the bytes, half-closes, and returns whatever came back before the server closed (or 2 s). */
function rawExchange(port: number, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = connect({ host: '127.0.0.1', port });
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(Buffer.concat(chunks).toString('latin1'));
    };
    const timer = setTimeout(done, 2000);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('close', done);
    socket.on('error', done);
    socket.end(bytes);
  });
}

function sidebandRequest(pem: string, version: string): string {
  return `POST /v1/sideband HTTP/${version}\r\nHost: egress-authz\r\nContent-Type: application/x-pem-file\r\nContent-Length: ${Buffer.byteLength(pem)}\r\nX-Egress-Destination: www.example.com:443\r\n\r\n${pem}`;
}

function mutateBytes(buf: Buffer, edits: [number, number][], cut: number | null): Buffer {
  const out = Buffer.from(buf);
  for (const [at, byte] of edits) out[at % out.length] = byte;
  return cut === null ? out : out.subarray(0, cut % (out.length + 1));
}

const squash = (s: string) => s.replace(/\s+/g, '');
/** Truncation at a random point one time in four; otherwise the whole message. */
const rareCut = fc.oneof({ weight: 3, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat() });

describe('fuzz: raw bytes on the HTTP listener', () => {
  it('survives noise and mutated sideband requests; allows only when the certificate sent names a bookinfo ID', async () => {
    const input = fc.oneof(
      fc.uint8Array({ maxLength: 512 }).map((b) => Buffer.from(b)),
      fc
        .tuple(
          fc.constantFrom('1.0', '1.1'),
          fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
          rareCut,
        )
        .map(([v, edits, cut]) => mutateBytes(Buffer.from(sidebandRequest(bookinfo.certPem, v), 'latin1'), edits, cut)),
      fc
        .tuple(
          fc.constantFrom('GET', 'POST', 'PUT', 'CONNECT', 'G\u0000T'),
          fc.constantFrom('/healthz', '/readyz', '/v1/sideband', '*', '/../../etc', '/v1/sideband?x=1'),
          fc.string({ maxLength: 64 }),
        )
        .map(([m, p, h]) => Buffer.from(`${m} ${p} HTTP/1.1\r\n${h}\r\n\r\n`, 'latin1')),
    );
    let allowed = 0;
    await fc.assert(
      fc.asyncProperty(input, async (bytes) => {
        const answer = await rawExchange(svc.httpPort, bytes);
        if (/x-egress-decision:\s*allow/i.test(answer)) {
          // Signatures are the TLS terminator's job (the BIG-IP verified the client), so a damaged byte
          // in a signature may still be allowed; the URI SAN the DER carries must still be bookinfo's.
          const sent = bytes.toString('latin1');
          const der = Buffer.from(
            squash(sent.slice(sent.indexOf('\r\n\r\n') + 4).replace(/-----[A-Z ]+-----/g, '')),
            'base64',
          );
          expect(der.includes(Buffer.from('spiffe://cluster.local/ns/bookinfo/sa/'))).toBe(true);
          allowed++;
        }
      }),
      { numRuns: scaledRuns(2) },
    );
    expect(allowed).toBeGreaterThan(0); // the mutations leave some requests intact: the property is not vacuous
    // Still alive and ready.
    const ready = await rawExchange(svc.httpPort, Buffer.from('GET /readyz HTTP/1.0\r\n\r\n'));
    expect(ready).toMatch(/^HTTP\/1\.[01] 200/);
  });
});

describe('fuzz: raw ext_authz messages over HTTP/2', () => {
  it('random and mutated CheckRequest bytes never give an allow without a valid bookinfo principal in them', async () => {
    const serialize = loadAuthorizationService().Check!.requestSerialize;
    const valid = serialize(checkRequest({ principal: BOOKINFO }));
    const session = http2.connect(`http://127.0.0.1:${svc.grpcPort}`);
    session.on('error', () => {});
    const call = (message: Buffer) =>
      new Promise<string | undefined>((resolve) => {
        const frame = Buffer.alloc(5 + message.length);
        frame.writeUInt32BE(message.length, 1);
        message.copy(frame, 5);
        const stream = session.request({
          ':method': 'POST',
          ':path': '/envoy.service.auth.v3.Authorization/Check',
          'content-type': 'application/grpc',
          te: 'trailers',
        });
        let status: string | undefined;
        stream.on('response', (h) => void (status ??= h['grpc-status'] as string | undefined));
        stream.on('trailers', (t) => void (status = t['grpc-status'] as string | undefined));
        stream.on('data', () => {});
        stream.on('close', () => resolve(status));
        stream.on('error', () => {});
        stream.end(frame);
      });
    const message = fc.oneof(
      fc.uint8Array({ maxLength: 256 }).map((b) => Buffer.from(b)),
      fc
        .tuple(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), rareCut)
        .map(([edits, cut]) => mutateBytes(valid, edits, cut)),
    );
    const before = svc.decisions.length;
    await fc.assert(
      fc.asyncProperty(message, async (bytes) => {
        const mark = svc.decisions.length;
        const status = await call(bytes);
        // A decision (status 0, allow or deny inside), or a message that does not decode (INTERNAL).
        expect(['0', '13']).toContain(status);
        for (const d of svc.decisions.slice(mark)) {
          if (!d.allow) continue;
          expect(parseSpiffeId(d.spiffe_id).ok).toBe(true);
          expect(d.namespace).toBe('bookinfo');
          expect(bytes.includes(Buffer.from(d.spiffe_id))).toBe(true);
        }
      }),
      { numRuns: scaledRuns(2) },
    );
    session.close();
    expect(svc.decisions.length).toBeGreaterThan(before);
  });
});
