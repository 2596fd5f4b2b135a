// Runs test/irule/harness.tcl (the shipped iRule in tclsh, BIG-IP commands stubbed) and reads its records.
import { execFile } from 'node:child_process';
import { join } from 'node:path';

export const IRULE = join(import.meta.dirname, '..', '..', 'deploy', 'bigip', 'egress-authz.irule.tcl');
const HARNESS = join(import.meta.dirname, 'harness.tcl');
const VS = '/Common/vs_egress_authz_sideband';

export interface HarnessRun {
  lines: string[];
  actions: string[];
  logs: string[];
  errors: string[];
  connections: { verdict: string; pool: string; ms: number }[];
  wallMs: number;
}

export function runHarness(opts: {
  irule?: string;
  pem: string;
  hash: string;
  target: string;
  connections?: number;
  handshakes?: number;
  verify?: number;
  virtuals?: string[];
  clients?: string[];
  sets?: Record<string, string>;
}): Promise<HarnessRun> {
  const args = [
    HARNESS,
    '-irule',
    opts.irule ?? IRULE,
    '-pem',
    opts.pem,
    '-hash',
    opts.hash,
    '-vs',
    `${VS}=${opts.target}`,
  ];
  if (opts.connections) args.push('-connections', String(opts.connections));
  if (opts.handshakes) args.push('-handshakes', String(opts.handshakes));
  if (opts.verify !== undefined) args.push('-verify', String(opts.verify));
  if (opts.virtuals) args.push('-virtuals', opts.virtuals.join(' '));
  if (opts.clients) args.push('-clients', opts.clients.join(' '));
  for (const [k, v] of Object.entries(opts.sets ?? {})) args.push('-set', `static::${k}`, v);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    execFile('tclsh', args, { timeout: 20_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`tclsh failed: ${err.message}\n${stderr}\n${stdout}`));
      const lines = stdout.trim().split('\n');
      const rest = (prefix: string) =>
        lines.filter((l) => l.startsWith(prefix)).map((l) => l.slice(prefix.length).replace(/^\d+ /, ''));
      resolve({
        lines,
        actions: rest('ACTION '),
        logs: rest('LOG '),
        errors: lines.filter((l) => / error /.test(l) && l.startsWith('EVENT ')),
        connections: rest('CONNECTION ').map((l) => {
          const m = /verdict=(\S+) pool=(\S+) ms=(\d+)/.exec(l)!;
          return { verdict: m[1]!, pool: m[2]!, ms: Number(m[3]) };
        }),
        wallMs: performance.now() - started,
      });
    });
  });
}
