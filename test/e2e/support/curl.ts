// The seed's client: curl through the egress proxy, as a sidecar-less pod would run it.
import { execFile } from 'node:child_process';

export interface CurlResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export function curl(args: string[], timeoutMs = 15_000): Promise<CurlResult> {
  return new Promise((resolve) => {
    execFile(
      'curl',
      ['--silent', '--show-error', '--max-time', String(timeoutMs / 1000 - 1), ...args],
      { timeout: timeoutMs },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
        resolve({ exitCode: code, stdout, stderr });
      },
    );
  });
}

export interface ProxyClient {
  /** HTTPS URL of the egress proxy (name resolved to loopback with --resolve) */
  proxyHost: string;
  proxyPort: number;
  proxyCaFile: string;
  /** the workload's SVID; omitted to connect without a client certificate */
  svid?: { cert: string; key: string };
}

/** curl arguments for a CONNECT through the mTLS egress proxy (the seed's `curl -x bigip-proxy-svc:3128`). */
export function viaEgressProxy(c: ProxyClient, extra: { requestId?: string; proxyHeaders?: string[] } = {}): string[] {
  const args = [
    '--proxy',
    `https://${c.proxyHost}:${c.proxyPort}`,
    '--resolve',
    `${c.proxyHost}:${c.proxyPort}:127.0.0.1`,
    '--proxy-cacert',
    c.proxyCaFile,
  ];
  if (c.svid) args.push('--proxy-cert', c.svid.cert, '--proxy-key', c.svid.key);
  if (extra.requestId) args.push('--proxy-header', `x-request-id: ${extra.requestId}`);
  for (const h of extra.proxyHeaders ?? []) args.push('--proxy-header', h);
  return args;
}
