// Graceful shutdown of `egress-authz serve` as a child process: SIGTERM under load, a check in flight
// across the signal, the bounded grace period, and the second signal.
import http from 'node:http';
import http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { createCa, workloadSvid } from '../support/pki.js';
import { checkClient, checkRequest, type CheckClient } from '../support/service.js';
import { spawnServe, type ServeProcess } from './support.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const NETTOOLS = 'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools';
const CHECK_PATH = '/envoy.service.auth.v3.Authorization/Check';

/**
 * A Check whose request message is only partly sent: the server has accepted the stream but cannot
 * decide until `finish()` sends the rest (an empty CheckRequest: a 5-byte frame of length 0).
 */
function partialCheck(port: number): {
  finish(): void;
  answer: Promise<{ grpcStatus?: string; bytes: number; reset?: string }>;
  /** the server's HTTP/2 SETTINGS arrived: a serving process holds the connection (with --workers, not just the primary's accept) */
  accepted: Promise<void>;
  close(): void;
} {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', () => {});
  const stream = session.request({
    ':method': 'POST',
    ':path': CHECK_PATH,
    'content-type': 'application/grpc',
    te: 'trailers',
  });
  stream.write(Buffer.from([0, 0, 0]));
  let bytes = 0;
  const answer = new Promise<{ grpcStatus?: string; bytes: number; reset?: string }>((resolve) => {
    let status: string | undefined;
    stream.on('data', (c: Buffer) => void (bytes += c.length));
    stream.on('response', (h) => void (status ??= h['grpc-status'] as string | undefined));
    stream.on('trailers', (t) => void (status = t['grpc-status'] as string | undefined));
    stream.on('close', () =>
      resolve({ grpcStatus: status, bytes, reset: stream.rstCode ? String(stream.rstCode) : undefined }),
    );
    stream.on('error', () => {});
  });
  const accepted = new Promise<void>((resolve) => session.once('remoteSettings', () => resolve()));
  return { finish: () => stream.end(Buffer.from([0, 0])), answer, accepted, close: () => session.destroy() };
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

let serve: ServeProcess | undefined;
afterEach(async () => {
  await serve?.stop();
  serve = undefined;
});

// One process, and `--workers 2` (the primary drains every worker; their log lines reach stdout first).
// Two workers and a primary start (and, under a whole suite on two cores, compete) for longer than one process.
describe.each(['1', '2'])('graceful shutdown (--workers %s)', { timeout: 60_000 }, (workers) => {
  it('SIGTERM under load: every accepted check is answered and logged, the process exits in time', async () => {
    // The drain is under test, not the check deadline: on a crowded machine (three processes for two
    // workers) a 200 ms deadline would turn some answers into fail-closed denies.
    serve = await spawnServe(['--shutdown-grace', '3s', '--check-deadline', '5s', '--workers', workers]);
    const clients: CheckClient[] = [];
    for (let i = 0; i < 4; i++)
      clients.push(checkClient(serve.grpcPort, grpc.credentials.createInsecure(), { 'test.channel': i }));
    const codes = new Map<grpc.status, number>();
    let answered = 0;
    const count = (code: grpc.status) => codes.set(code, (codes.get(code) ?? 0) + 1);
    const loops = clients.flatMap((client, i) =>
      Array.from({ length: 16 }, (_, j) =>
        (async () => {
          for (;;) {
            const ok = await new Promise<boolean>((resolve) =>
              client.Check(checkRequest({ principal: (i + j) % 2 ? BOOKINFO : NETTOOLS }), (err) => {
                // A deny is an answer too: it arrives as a CheckResponse, not a gRPC error.
                if (err) count(err.code);
                else answered++;
                resolve(!err);
              }),
            );
            if (!ok) return;
          }
        })(),
      ),
    );
    // The BIG-IP's side: keep-alive sideband calls. A request the server never read may fail (the
    // connection was closing); one it read must be answered.
    const pem = (await workloadSvid(await createCa(), BOOKINFO)).certPem;
    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
    let sidebandAnswered = 0;
    const sidebandErrors = new Set<string>();
    const port = serve.httpPort;
    const sidebandLoops = Array.from({ length: 8 }, () =>
      (async () => {
        for (;;) {
          const ok = await new Promise<boolean>((resolve) => {
            const req = http.request(
              {
                host: '127.0.0.1',
                port,
                method: 'POST',
                path: '/v1/sideband',
                agent,
                headers: { 'content-type': 'application/x-pem-file' },
              },
              (res) => {
                res.resume();
                res.on('end', () => {
                  if (res.headers['x-egress-decision'] === 'allow') sidebandAnswered++;
                  else sidebandErrors.add(`status ${res.statusCode}`);
                  resolve(res.headers['x-egress-decision'] === 'allow');
                });
              },
            );
            req.on('error', (err: NodeJS.ErrnoException) => {
              sidebandErrors.add(err.code ?? err.message);
              resolve(false);
            });
            req.end(pem);
          });
          if (!ok) return;
        }
      })(),
    );
    // Load under way before the signal (a freshly started worker on a busy machine can take a moment).
    for (let waited = 0; (answered <= 50 || sidebandAnswered <= 10) && waited < 15_000; waited += 50) await delay(50);
    const inFlight = partialCheck(serve.grpcPort);
    await inFlight.accepted;
    await delay(100);
    const answeredBeforeSignal = answered;
    const signalledAt = Date.now();
    serve.proc.kill('SIGTERM');
    await delay(150);
    inFlight.finish();
    const [exit, flight] = await Promise.all([serve.exited, inFlight.answer]);
    await Promise.all([...loops, ...sidebandLoops]);
    agent.destroy();
    for (const c of clients) c.close();
    inFlight.close();

    expect(answeredBeforeSignal).toBeGreaterThan(50);
    // The check that was in flight across the signal got its decision (status 0 with a CheckResponse).
    expect(flight.grpcStatus).toBe('0');
    expect(flight.bytes).toBeGreaterThan(5);
    // Calls after the listener closed were refused (UNAVAILABLE), never cut short or timed out.
    expect([...codes.keys()].filter((c) => c !== grpc.status.UNAVAILABLE)).toEqual([]);
    // Every answer is in the decision log: it was flushed before exit, and nothing was decided unanswered.
    const logged = serve.lines.filter((l) => l.msg === 'decision').length;
    expect(sidebandAnswered).toBeGreaterThan(10);
    // Sideband calls end in an answer, or in a refused/closed connection for requests never read.
    expect(
      [...sidebandErrors].filter((e) => !['ECONNREFUSED', 'ECONNRESET', 'socket hang up', 'EPIPE'].includes(e)),
    ).toEqual([]);
    expect(logged).toBe(answered + sidebandAnswered + 1);
    expect(exit.code).toBe(0);
    expect(exit.at - signalledAt).toBeLessThan(3000 + 1500);
    expect(serve.lines.some((l) => l.msg === 'stopped')).toBe(true);
    expect(serve.lines.filter((l) => l.msg === 'worker stopped')).toHaveLength(workers === '1' ? 0 : 2);
    expect(serve.unparsed).toEqual([]);
  });

  it('the grace period bounds the wait for a check that never completes', async () => {
    serve = await spawnServe(['--shutdown-grace', '1s', '--workers', workers]);
    const stuck = partialCheck(serve.grpcPort);
    await stuck.accepted;
    await delay(100);
    const signalledAt = Date.now();
    serve.proc.kill('SIGTERM');
    const exit = await serve.exited;
    stuck.close();
    expect(exit.code).toBe(0);
    expect(exit.at - signalledAt).toBeGreaterThanOrEqual(900);
    expect(exit.at - signalledAt).toBeLessThan(1000 + 1500);
  });

  it('a second signal exits at once', async () => {
    serve = await spawnServe(['--shutdown-grace', '30s', '--workers', workers]);
    const stuck = partialCheck(serve.grpcPort);
    await stuck.accepted;
    await delay(100);
    serve.proc.kill('SIGTERM');
    await delay(500);
    expect(serve.proc.exitCode).toBeNull(); // still draining the stuck check
    const secondAt = Date.now();
    serve.proc.kill('SIGINT');
    const exit = await serve.exited;
    stuck.close();
    expect(exit.code).toBe(130);
    expect(exit.at - secondAt).toBeLessThan(1000);
    expect(serve.lines.some((l) => l.msg === 'second signal; exiting at once')).toBe(true);
  });
});
