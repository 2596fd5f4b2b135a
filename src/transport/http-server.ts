// The HTTP listener: health for Kubernetes probes and load balancers, and the routes other modules
// register (the BIG-IP sideband, metrics). Answers are small and never depend on the request body
// except where a route reads it.
import http from 'node:http';
import https from 'node:https';
import type { TLSSocket } from 'node:tls';
import { DECISION_HEADER, REASON_HEADER } from './headers.js';
import { judgePeer, type PeerPolicy, type PeerVerdict } from './tls.js';

export type RouteHandler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

export interface HttpServerOptions {
  /** readiness: a policy is loaded (and we are not shutting down); body says which revision */
  ready: () => { ready: boolean; detail: Record<string, unknown> };
  /** "METHOD /path" → handler */
  routes?: Record<string, RouteHandler>;
  /** HTTPS instead of HTTP (cert, key, and for mTLS ca + requestCert + rejectUnauthorized) */
  tls?: https.ServerOptions;
  /** mTLS: who may use the routes; refused callers get 403 before any decision (health stays open) */
  peerPolicy?: PeerPolicy;
  onPeerRefused?: (verdict: Extract<PeerVerdict, { ok: false }>, peer: string) => void;
}

const HEALTH_PATHS = new Set(['/healthz', '/readyz']);

export function createHttpServer(opts: HttpServerOptions): http.Server {
  const routes = opts.routes ?? {};
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (opts.peerPolicy && !HEALTH_PATHS.has(path)) {
      const socket = req.socket as TLSSocket;
      const verdict = judgePeer(opts.peerPolicy, socket.authorized === true, socket.getPeerCertificate?.()?.raw);
      if (!verdict.ok) {
        opts.onPeerRefused?.(verdict, `${socket.remoteAddress ?? ''}:${socket.remotePort ?? ''}`);
        res.setHeader(DECISION_HEADER, 'deny');
        res.setHeader(REASON_HEADER, verdict.reason.replace(/[^\x20-\x7e]/g, ' '));
        req.resume();
        return json(res, 403, { error: verdict.reason });
      }
    }
    const route = routes[`${req.method} ${path}`];
    if (route) return route(req, res);
    if (req.method === 'GET' || req.method === 'HEAD') {
      if (path === '/healthz') return json(res, 200, { status: 'ok' });
      if (path === '/readyz') {
        const r = opts.ready();
        return json(res, r.ready ? 200 : 503, { status: r.ready ? 'ready' : 'not ready', ...r.detail });
      }
    }
    const known = Object.keys(routes).some((k) => k.endsWith(` ${path}`)) || path === '/healthz' || path === '/readyz';
    json(res, known ? 405 : 404, { error: known ? 'method not allowed' : 'not found' });
  };
  const server: http.Server = opts.tls ? https.createServer(opts.tls, handler) : http.createServer(handler);
  // Bounded waits for slow or idle clients (slowloris); the BIG-IP keeps its sideband connection open
  // between calls, so keep-alive is long enough to be reused: longer than the iRule's `-idle` (30 s), so
  // that the BIG-IP, not us, closes an idle connection and never sends on one we are closing.
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;
  server.keepAliveTimeout = 60_000;
  server.maxHeadersCount = 64;
  return server;
}

export function json(res: http.ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(res.req.method === 'HEAD' ? undefined : text);
}

export function listen(server: http.Server, addr: string): Promise<number> {
  const { host, port } = splitAddr(addr);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const a = server.address();
      resolve(typeof a === 'object' && a ? a.port : port);
    });
  });
}

/** "host:port" or "[v6]:port" */
function splitAddr(addr: string): { host: string; port: number } {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(addr);
  if (!m) throw new Error(`invalid address "${addr}": expected HOST:PORT`);
  return { host: m[1] ?? '', port: Number(m[2]) };
}
