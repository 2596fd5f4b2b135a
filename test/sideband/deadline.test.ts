// The sideband keeps the check deadline as Envoy's path does: a request that waited behind a slow
// evaluation is answered deny without being evaluated, instead of adding its own evaluation to the queue
// long after the iRule's callout has given up.
import { connect, type Socket } from 'node:net';
import { afterEach, expect, it } from 'vitest';
import { createCa, workloadSvid } from '../support/pki.js';
import { slowDefaultPolicy, startTestService, type TestService } from '../support/service.js';

let svc: TestService | undefined;
afterEach(async () => {
  await svc?.close(100);
  svc = undefined;
});

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

/** The whole answer of a `Connection: close` request: status line, headers, body. */
function answerOf(sock: Socket): Promise<{ status: number; headers: Record<string, string>; body: string }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    sock.on('data', (d: Buffer) => chunks.push(d));
    sock.on('close', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const [head = '', body = ''] = text.split('\r\n\r\n');
      const lines = head.split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines.slice(1)) {
        const i = line.indexOf(':');
        headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
      }
      resolve({ status: Number(lines[0]?.split(' ')[1]), headers, body });
    });
  });
}

it('sideband requests that waited past the deadline behind a slow evaluation are denied without evaluating', async () => {
  // 8 BIG-IP connections' requests arrive together; each evaluation takes 150 ms, the deadline is 200 ms.
  const { policy: slow, evaluations } = await slowDefaultPolicy(150);
  const ca = await createCa();
  const svid = await workloadSvid(ca, 'spiffe://cluster.local/ns/bookinfo/sa/productpage');
  svc = await startTestService({ policy: slow, checkDeadlineMs: 200 });
  const port = svc.httpPort;
  const socks = await Promise.all(Array.from({ length: 8 }, () => open(port)));
  const answers = socks.map(answerOf);
  // Connections open and accepted first, as the BIG-IP's are (it keeps its sideband connections).
  await new Promise((resolve) => setTimeout(resolve, 100));
  const body = Buffer.from(svid.certPem);
  // Written in one turn, so the server reads them in one poll, as it does a backlog.
  for (const s of socks)
    s.write(
      `POST /v1/sideband HTTP/1.1\r\nHost: egress-authz\r\nContent-Type: application/x-pem-file\r\n` +
        `X-Egress-Destination: legacy.bookinfo.example\r\nConnection: close\r\n` +
        `Content-Length: ${body.length}\r\n\r\n${svid.certPem}`,
    );
  const got = await Promise.all(answers);
  expect(got.every((a) => a.headers['x-egress-decision'] !== undefined)).toBe(true);
  // The first one or two start within the deadline; every later one is already late when its turn comes.
  expect(evaluations()).toBeLessThanOrEqual(3);
  const late = got.filter((a) => /deadline of 200ms/.test(a.headers['x-egress-reason'] ?? ''));
  expect(late.length).toBeGreaterThanOrEqual(5);
  for (const a of late) {
    expect(a.status).toBe(403);
    expect(a.headers['x-egress-decision']).toBe('deny');
    expect(a.headers['x-egress-snat-pool']).toBe('');
    expect(a.headers['x-egress-cache-ttl']).toBe('0');
  }
  const logged = svc.decisions.filter((d) => d.policy_error === 'check exceeded its deadline of 200ms');
  expect(logged).toHaveLength(late.length);
  expect(logged.every((d) => d.caller === 'sideband' && d.allow === false)).toBe(true);
});
