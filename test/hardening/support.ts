// Helpers for the hardening suites: an mTLS PKI written to a temporary folder, TLS clients for both
// listeners, and `egress-authz serve` as a child process (what operators run, signals included).
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { createCa, workloadSvid, type CertAuthority, type IssuedCert } from '../support/pki.js';

export const ROOT = join(import.meta.dirname, '..', '..');
export const SERVER_ID = 'spiffe://cluster.local/ns/egress-authz/sa/egress-authz';
export const GATEWAY_ID = 'spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway';
export const BIGIP_ID = 'spiffe://cluster.local/ns/f5/sa/bigip';
export const EVIL_ID = 'spiffe://cluster.local/ns/istio-system-evil/sa/istio-egressgateway';
export const ALLOWED_CALLERS = ['spiffe://cluster.local/ns/istio-system/*', BIGIP_ID];
/** the name the server certificate carries and clients check */
export const SERVER_NAME = 'egress-authz.test';

export interface MtlsPki {
  dir: string;
  ca: CertAuthority;
  otherCa: CertAuthority;
  server: IssuedCert;
  gateway: IssuedCert;
  bigip: IssuedCert;
  evil: IssuedCert;
  /** chains to a CA the service does not trust */
  stranger: IssuedCert;
  files: { cert: string; key: string; clientCa: string; ca: string };
  /** issues and writes a new server certificate (rotation); returns it */
  rotateServer(): Promise<IssuedCert>;
  cleanup(): void;
}

export async function makeMtlsPki(): Promise<MtlsPki> {
  const ca = await createCa('Mesh CA');
  const otherCa = await createCa('Other CA');
  const dir = mkdtempSync(join(tmpdir(), 'egress-authz-mtls-'));
  const files = {
    cert: join(dir, 'tls.crt'),
    key: join(dir, 'tls.key'),
    clientCa: join(dir, 'client-ca.crt'),
    ca: join(dir, 'ca.crt'),
  };
  const serverCert = () => workloadSvid(ca, SERVER_ID, { dns: [SERVER_NAME] });
  const writeServer = (c: IssuedCert) => {
    // key first, then the certificate: a reader between the two writes sees a mismatch and keeps the old pair
    writeFileSync(files.key, c.keyPem, { mode: 0o600 });
    writeFileSync(files.cert, c.certPem);
  };
  const server = await serverCert();
  writeServer(server);
  writeFileSync(files.clientCa, ca.certPem);
  writeFileSync(files.ca, ca.certPem);
  return {
    dir,
    ca,
    otherCa,
    server,
    gateway: await workloadSvid(ca, GATEWAY_ID),
    bigip: await workloadSvid(ca, BIGIP_ID),
    evil: await workloadSvid(ca, EVIL_ID),
    stranger: await workloadSvid(otherCa, GATEWAY_ID),
    files,
    async rotateServer() {
      const next = await serverCert();
      writeServer(next);
      return next;
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** gRPC channel credentials; `seen` collects the SHA-256 fingerprint of every server certificate handshaken with. */
export function grpcTls(
  pki: MtlsPki,
  client: IssuedCert | undefined,
  seen: string[] = [],
): { creds: grpc.ChannelCredentials; options: grpc.ClientOptions } {
  const creds = grpc.credentials.createSsl(
    Buffer.from(pki.ca.certPem),
    client ? Buffer.from(client.keyPem) : null,
    client ? Buffer.from(client.certPem) : null,
    {
      checkServerIdentity: (_host, cert) => {
        seen.push(cert.fingerprint256);
        return undefined;
      },
    },
  );
  return { creds, options: { 'grpc.ssl_target_name_override': SERVER_NAME, 'grpc.default_authority': SERVER_NAME } };
}

export interface HttpsAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  serverFingerprint: string;
}

/** One HTTPS request on a fresh connection. Rejects on a TLS failure. */
export function httpsRequest(
  port: number,
  pki: MtlsPki,
  client: IssuedCert | undefined,
  opts: { method?: string; path: string; body?: string },
): Promise<HttpsAnswer> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        method: opts.method ?? 'GET',
        path: opts.path,
        servername: SERVER_NAME,
        ca: pki.ca.certPem,
        ...(client ? { cert: client.certPem, key: client.keyPem } : {}),
        agent: false,
        headers:
          opts.body !== undefined
            ? { 'content-type': 'application/x-pem-file', 'content-length': Buffer.byteLength(opts.body) }
            : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        const fingerprint = (res.socket as import('node:tls').TLSSocket).getPeerCertificate().fingerprint256;
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString(),
            serverFingerprint: fingerprint,
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

export interface ServeProcess {
  proc: ChildProcessWithoutNullStreams;
  grpcPort: number;
  httpPort: number;
  /** every JSON log line so far */
  lines: Record<string, any>[];
  /** stdout lines that were not JSON (none, unless log lines were cut or interleaved) */
  unparsed: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  stop(): Promise<void>;
}

/** `node dist/cli.js serve` on ephemeral loopback ports (run `npm run build` first; npm test's pretest does). */
export async function spawnServe(extraArgs: string[] = [], opts: { nodeArgs?: string[] } = {}): Promise<ServeProcess> {
  const proc = spawn(
    process.execPath,
    [
      ...(opts.nodeArgs ?? []),
      join(ROOT, 'dist', 'cli.js'),
      'serve',
      '--grpc-addr',
      '127.0.0.1:0',
      '--http-addr',
      '127.0.0.1:0',
      '--policy',
      join(ROOT, 'policies'),
      ...extraArgs,
    ],
    {
      cwd: ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  const lines: Record<string, any>[] = [];
  const unparsed: string[] = [];
  let buffered = '';
  let stderr = '';
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    proc.on('exit', (code, signal) => resolve({ code, signal, at: Date.now() })),
  );
  const serving = new Promise<Record<string, any>>((resolve, reject) => {
    proc.stdout.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        try {
          const parsed = JSON.parse(line) as Record<string, any>;
          lines.push(parsed);
          if (parsed.msg === 'egress-authz serving') resolve(parsed);
        } catch {
          unparsed.push(line);
        }
      }
    });
    proc.stderr.on('data', (c: Buffer) => void (stderr += c.toString()));
    void exited.then(({ code }) =>
      reject(new Error(`serve exited (${code}) before serving: ${stderr}${JSON.stringify(lines)}`)),
    );
  });
  const first = await serving;
  return {
    proc,
    grpcPort: first.grpc_port as number,
    httpPort: first.http_port as number,
    lines,
    unparsed,
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await exited;
      }
    },
  };
}

/** The pids of a process's children (the workers of `serve --workers N`). */
export function childPids(pid: number): number[] {
  return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' })
    .split('\n')
    .filter(Boolean)
    .map(Number);
}
