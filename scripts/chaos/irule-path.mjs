// The iRule path of the chaos run: the shipped iRule (deploy/bigip/egress-authz.irule.tcl) in the tclsh
// harness (test/irule/harness.tcl), its sideband callout aimed at a relay run here. In mode 'healthy'
// the relay pipes each connection to the real service unchanged; in a fault mode it plays a broken
// sideband. The relay records, per X-Request-Id the iRule sent, which mode answered it, so that an
// allow is provably the service's (served_by 'healthy') without comparing clocks.
import { createConnection, createServer } from 'node:net';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { startGroup } from './processes.mjs';

export const IRULE_MODES = ['healthy', 'down', 'hung', 'garbage', 'half'];

// Answers that look like the service's allow but are not a complete, well-formed one.
const GARBAGE = [
  () =>
    Buffer.from(
      '220 smtp.example ESMTP ready\r\nX-Egress-Decision: allow\r\nX-Egress-Snat-Pool: bookinfo_snat\r\n\r\n',
    ),
  () => Buffer.from('HTTP/1.1 200 OK\r\nX-Egress-Decision: allow\r\nX-Egress-Snat-Pool: bookinfo_snat\r\n\r\n'),
  () => Buffer.from('HTTP/1.1 200 OK\r\nX-Egress-Decision: allow\r\nContent-Length: x1\r\n\r\nx1'),
  () =>
    Buffer.concat([
      Buffer.from('HTTP/1.1 200 OK\r\nX-Egress-Decision: allow\r\n'),
      Buffer.from(new Uint8Array(64).map(() => Math.floor(Math.random() * 256))),
    ]),
];

/** The relay in front of the service's HTTP port. setMode() switches what new connections get. */
export function startRelay({ servicePort }) {
  let mode = 'healthy';
  let port = 0;
  let garbageTurn = 0;
  const servedBy = new Map(); // request id -> mode
  const sockets = new Set();
  const track = (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
  };
  const noteRequestIds = (connMode) => {
    let head = '';
    return (chunk) => {
      head = (head + chunk.toString('latin1')).slice(-4096);
      for (const m of head.matchAll(/\r\nX-Request-Id: ([^\r\n]+)\r\n/gi)) servedBy.set(m[1], connMode);
    };
  };
  const server = createServer((client) => {
    track(client);
    const connMode = mode;
    const note = noteRequestIds(connMode);
    client.on('data', note);
    if (connMode === 'hung') return; // reads, never answers: the iRule's answer timeout ends it
    if (connMode === 'garbage') {
      client.once('data', () => client.end(GARBAGE[garbageTurn++ % GARBAGE.length]()));
      return;
    }
    const upstream = createConnection({ host: '127.0.0.1', port: servicePort });
    track(upstream);
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => client.destroy());
    client.on('close', () => upstream.destroy());
    client.on('data', (chunk) => upstream.write(chunk));
    if (connMode === 'half') {
      // The service's real answer, cut in the middle, then the connection closed.
      let answer = Buffer.alloc(0);
      upstream.on('data', (chunk) => {
        answer = Buffer.concat([answer, chunk]);
        const end = answer.indexOf('\r\n\r\n');
        if (end < 0) return;
        client.end(answer.subarray(0, Math.max(1, Math.floor(answer.length / 2))));
        upstream.destroy();
      });
    } else {
      upstream.on('data', (chunk) => client.write(chunk));
    }
  });
  const listen = () =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: '127.0.0.1', port, exclusive: true }, () => {
        server.off('error', reject);
        port = server.address().port;
        resolve();
      });
    });
  return listen().then(() => ({
    get port() {
      return port;
    },
    servedBy,
    /** Switches mode for new connections; open ones are cut, so no request straddles two modes. */
    async setMode(next) {
      if (!IRULE_MODES.includes(next)) throw new Error(`unknown relay mode ${next}`);
      const wasDown = mode === 'down';
      mode = next;
      for (const s of sockets) s.destroy();
      if (next === 'down') await new Promise((done) => server.close(() => done()));
      else if (wasDown) await listen();
    },
    async close() {
      for (const s of sockets) s.destroy();
      if (mode !== 'down') await new Promise((done) => server.close(() => done()));
    },
  }));
}

/** X509::hash's format: the MD5 of the certificate's DER, upper-case hex pairs joined by colons. */
export function x509Hash(pemFile) {
  const b64 = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/.exec(readFileSync(pemFile, 'utf8'))[1];
  const der = Buffer.from(b64.replace(/\s+/g, ''), 'base64');
  return createHash('md5').update(der).digest('hex').toUpperCase().match(/../g).join(':');
}

/**
 * Keeps `parallel` harness processes per identity running back to back (each one a virtual server
 * with `batch` client connections, the decision cache off so every handshake asks the sideband),
 * and records every connection's verdict with the request id the iRule logged.
 */
export function startIruleLoad({ root, relayPort, pki, now, record, parallel = 2, batch = 20 }) {
  const harness = `${root}/test/irule/harness.tcl`;
  const irule = `${root}/deploy/bigip/egress-authz.irule.tcl`;
  const vs = '/Common/vs_egress_authz_sideband';
  let running = true;
  const loops = [];
  const stats = { harness_runs: 0, harness_failures: 0, last_failure: '' };
  for (const identity of ['allowed', 'denied']) {
    const pem = pki.clients[identity].certFile;
    const hash = x509Hash(pem);
    for (let i = 0; i < parallel; i++) {
      loops.push(
        (async () => {
          while (running) {
            let pending = { requestId: null, reason: '' };
            const p = startGroup(
              `tclsh ${identity}`,
              'tclsh',
              [
                harness,
                '-irule',
                irule,
                '-pem',
                pem,
                '-hash',
                hash,
                '-vs',
                `${vs}=127.0.0.1:${relayPort}`,
                '-connections',
                String(batch),
                '-set',
                'static::egress_authz_cache_s',
                '0',
              ],
              {
                onLine: (line, stream) => {
                  if (stream !== 'stdout') return;
                  if (line.startsWith('LOG ') && line.includes(' egress_authz decision=')) {
                    pending = {
                      requestId: /request_id=(\S+)/.exec(line)?.[1] ?? null,
                      reason: /reason="([^"]*)"/.exec(line)?.[1] ?? '',
                      status: /status=(\S+)/.exec(line)?.[1] ?? '-',
                    };
                  } else if (line.startsWith('EVENT ') && / error /.test(line)) {
                    pending.error = line;
                  } else if (line.startsWith('CONNECTION ')) {
                    const verdict = /verdict=(\S+)/.exec(line)?.[1];
                    const answered = now();
                    let outcome = 'error';
                    if (pending.error) outcome = 'error';
                    else if (verdict === 'allow') outcome = 'allow';
                    else if (verdict === 'reject')
                      outcome = pending.reason.startsWith('egress-authz unavailable') ? 'unavailable' : 'deny';
                    record({
                      path: 'irule',
                      identity,
                      sent: null,
                      answered,
                      outcome,
                      request_id: pending.requestId,
                      pool: /pool=(\S+)/.exec(line)?.[1] ?? '-',
                      reason: pending.reason.slice(0, 120),
                    });
                    pending = { requestId: null, reason: '' };
                  }
                },
              },
            );
            const r = await p.exited;
            stats.harness_runs++;
            if (r.code !== 0) {
              stats.harness_failures++;
              stats.last_failure = p.tail().slice(-1000);
              await new Promise((done) => setTimeout(done, 200));
            }
          }
        })(),
      );
    }
  }
  return {
    stats,
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

/** The relay's record decides where each iRule answer came from. */
export function iruleOutcome(r, servedBy) {
  return { ...r, served_by: (r.request_id && servedBy.get(r.request_id)) ?? null };
}
