// POST /v1/sideband spoken the way an iRule speaks it: raw bytes on a TCP socket, HTTP/1.0 and 1.1.
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_SIDEBAND_BODY } from '../../src/transport/sideband.js';
import type { TestService } from '../support/service.js';
import { makeBigipCerts, startSidebandService, type BigipCerts } from './sideband-service.js';

interface RawAnswer {
  status: number;
  statusLine: string;
  headers: Record<string, string>;
  body: string;
}

let service: TestService;
let certs: BigipCerts;

beforeAll(async () => {
  [service, certs] = await Promise.all([startSidebandService(), makeBigipCerts()]);
});
afterAll(async () => {
  await service?.close(100);
  certs?.cleanup();
});

function open(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(service.httpPort, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

/** Reads answers off a socket one at a time, by Content-Length, as the iRule does. */
class AnswerReader {
  private buf = Buffer.alloc(0);
  private waiting: (() => void) | undefined;
  closed = false;
  constructor(sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiting?.();
    });
    sock.on('close', () => {
      this.closed = true;
      this.waiting?.();
    });
  }
  async next(): Promise<RawAnswer> {
    for (;;) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        const head = this.buf.subarray(0, end).toString('latin1').split('\r\n');
        const headers: Record<string, string> = {};
        for (const line of head.slice(1)) {
          const i = line.indexOf(':');
          headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
        }
        const length = Number(headers['content-length']);
        if (this.buf.length >= end + 4 + length) {
          const body = this.buf.subarray(end + 4, end + 4 + length).toString('utf8');
          this.buf = this.buf.subarray(end + 4 + length);
          return { status: Number(head[0]!.split(' ')[1]), statusLine: head[0]!, headers, body };
        }
      }
      if (this.closed) throw new Error(`connection closed; buffered: ${this.buf.toString('latin1')}`);
      await new Promise<void>((r) => (this.waiting = r));
    }
  }
}

function request(
  pem: string,
  opts: {
    version?: '1.0' | '1.1';
    keepAlive?: boolean;
    headers?: Record<string, string>;
    contentType?: string | null;
  } = {},
): string {
  const lines = [`POST /v1/sideband HTTP/${opts.version ?? '1.1'}`, 'Host: egress-authz'];
  if (opts.contentType !== null) lines.push(`Content-Type: ${opts.contentType ?? 'application/x-pem-file'}`);
  lines.push(`Content-Length: ${Buffer.byteLength(pem)}`);
  if (opts.keepAlive) lines.push('Connection: keep-alive');
  for (const [k, v] of Object.entries(opts.headers ?? {})) lines.push(`${k}: ${v}`);
  return `${lines.join('\r\n')}\r\n\r\n${pem}`;
}

async function once(raw: string | Buffer): Promise<RawAnswer & { closedAfter: boolean }> {
  const sock = await open();
  const reader = new AnswerReader(sock);
  sock.write(raw);
  const answer = await reader.next();
  await new Promise((r) => setTimeout(r, 50));
  const closedAfter = reader.closed;
  sock.destroy();
  return { ...answer, closedAfter };
}

const expectDeny = (a: RawAnswer, status: number) => {
  expect(a.status).toBe(status);
  expect(a.headers['x-egress-decision']).toBe('deny');
  expect(a.headers['x-egress-snat-pool']).toBe('');
  expect(a.headers['x-egress-decision-id']).toMatch(/^[0-9a-f-]{36}$/);
  expect(a.headers['x-egress-reason']).toMatch(/^[\x20-\x7e]+$/);
  expect(a.headers['content-length']).toBe(String(Buffer.byteLength(a.body)));
};

describe('POST /v1/sideband', () => {
  it('HTTP/1.0 as an iRule sends it: allow, the SNAT pool, a decision id, then the connection closes', async () => {
    const a = await once(
      request(certs.files.bookinfo!.pem, {
        version: '1.0',
        headers: {
          'X-Request-Id': 'bigip-0001',
          'X-Egress-Virtual-Server': '/Common/vs_x',
          'X-Egress-Client-Address': '10.1.1.10',
          'X-Egress-Destination': 'proxy.example:3128',
        },
      }),
    );
    expect(a.status).toBe(200);
    expect(a.headers).toMatchObject({ 'x-egress-decision': 'allow', 'x-egress-snat-pool': 'bookinfo_snat' });
    expect(a.headers['content-length']).toBe(String(Buffer.byteLength(a.body)));
    expect(a.body).toBe('allow bookinfo_snat\n');
    expect(a.closedAfter).toBe(true);
    const entry = service.decisions.find((d) => d.decision_id === a.headers['x-egress-decision-id']);
    expect(entry).toMatchObject({
      caller: 'sideband',
      x_request_id: 'bigip-0001',
      destination: 'proxy.example:3128',
      allow: true,
    });
  });

  it('HTTP/1.1 keep-alive: three requests on one connection, each with its own decision', async () => {
    const sock = await open();
    const reader = new AnswerReader(sock);
    const answers: RawAnswer[] = [];
    for (const name of ['bookinfo', 'apigw', 'dnsFirst']) {
      sock.write(request(certs.files[name]!.pem, { keepAlive: true }));
      answers.push(await reader.next());
    }
    expect(reader.closed).toBe(false);
    sock.destroy();
    expect(answers.map((a) => [a.status, a.headers['x-egress-decision'], a.headers['x-egress-snat-pool']])).toEqual([
      [200, 'allow', 'bookinfo_snat'],
      [403, 'deny', ''],
      [200, 'allow', 'bookinfo_snat'],
    ]);
    expect(new Set(answers.map((a) => a.headers['x-egress-decision-id'])).size).toBe(3);
  });

  it('HTTP/1.0 with Connection: keep-alive keeps the connection', async () => {
    const sock = await open();
    const reader = new AnswerReader(sock);
    sock.write(request(certs.files.bookinfo!.pem, { version: '1.0', keepAlive: true }));
    expect((await reader.next()).status).toBe(200);
    sock.write(request(certs.files.apigw!.pem, { version: '1.0', keepAlive: true }));
    expect((await reader.next()).status).toBe(403);
    sock.destroy();
  });

  it('sm-apigw-a → 403 deny with the reason', async () => {
    const a = await once(request(certs.files.apigw!.pem));
    expectDeny(a, 403);
    expect(a.body.startsWith('deny: ')).toBe(true);
  });

  it('two URI SANs → 403 deny', async () => {
    const a = await once(request(certs.files.twoUris!.pem));
    expectDeny(a, 403);
    expect(a.headers['x-egress-reason']).toMatch(/URI/i);
  });

  it('no content type and text/plain are accepted', async () => {
    expect((await once(request(certs.files.bookinfo!.pem, { contentType: null }))).status).toBe(200);
    expect(
      (await once(request(certs.files.bookinfo!.pem, { contentType: 'text/plain; charset=us-ascii' }))).status,
    ).toBe(200);
  });

  it('malformed PEM → 400 deny, still in the decision log', async () => {
    const a = await once(request('-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n'));
    expectDeny(a, 400);
    expect(service.decisions.some((d) => d.decision_id === a.headers['x-egress-decision-id'] && !d.allow)).toBe(true);
    expectDeny(await once(request('hello')), 400);
    expectDeny(await once(request('')), 400);
  });

  it('other content types → 400 deny', async () => {
    expectDeny(await once(request(certs.files.bookinfo!.pem, { contentType: 'application/json' })), 400);
  });

  it('body too large → 400 deny, declared or chunked', async () => {
    const big = 'A'.repeat(MAX_SIDEBAND_BODY + 1);
    const declared = await once(request(big));
    expectDeny(declared, 400);
    expect(declared.headers['x-egress-reason']).toContain('too large');
    const chunk = big.length.toString(16);
    const chunked = await once(
      `POST /v1/sideband HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${chunk}\r\n${big}\r\n0\r\n\r\n`,
    );
    expectDeny(chunked, 400);
  });

  it('an oversized optional header → 400 deny', async () => {
    expectDeny(
      await once(request(certs.files.bookinfo!.pem, { headers: { 'X-Egress-Destination': 'a'.repeat(300) } })),
      400,
    );
  });

  it('garbage request line → 400 deny, then the connection closes', async () => {
    const a = await once('HELLO THERE\r\n\r\n');
    expectDeny(a, 400);
    expect(a.closedAfter).toBe(true);
    expectDeny(await once('POST /v1/sideband HTTP/1.1\r\nBad Header Line\r\n\r\n'), 400);
  });

  it('GET is not the sideband', async () => {
    const a = await once('GET /v1/sideband HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(a.status).toBeGreaterThanOrEqual(400);
  });
});
