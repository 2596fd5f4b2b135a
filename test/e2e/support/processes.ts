// Starting and stopping the real processes of the end-to-end suite: each runs in its own process group
// so that stopping it also stops whatever it forked, and stdout/stderr are kept for assertions and for
// the failure message when a process does not come up.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';

export interface RunningProcess {
  name: string;
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves once the process has exited (immediately if it already has). */
  exited: Promise<number | null>;
  stop(): Promise<void>;
}

export function start(
  name: string,
  command: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): RunningProcess {
  const child = spawn(command, args, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(null));
  });
  let alive = true;
  void exited.then(() => (alive = false));
  return {
    name,
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    async stop() {
      if (!alive || child.pid === undefined) return;
      signalGroup(child.pid, 'SIGTERM');
      const timer = setTimeout(() => signalGroup(child.pid!, 'SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
  };
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // the group is already gone
  }
}

/** An ephemeral TCP port on the given loopback address, free at the time of asking. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

/** Polls `ready` until it returns true; fails with the process's output when it exits or time runs out. */
export async function waitUntil(
  proc: RunningProcess,
  what: string,
  ready: () => Promise<boolean>,
  // generous: `serve` starts a primary and a worker per CPU, which on a busy machine takes a while
  timeoutMs = 45_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void proc.exited.then(() => (exited = true));
  while (Date.now() < deadline) {
    if (exited) break;
    if (await ready().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(
    `${proc.name}: ${exited ? 'exited' : 'timed out'} before ${what}\n--- stdout ---\n${proc.stdout().slice(-4000)}\n--- stderr ---\n${proc.stderr().slice(-4000)}`,
  );
}

/** True when an HTTP GET on the URL answers 200. */
export async function httpOk(url: string): Promise<boolean> {
  const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
  await res.arrayBuffer();
  return res.status === 200;
}

/** `egress-authz serve` from dist/ on the given loopback ports, with the repository's default policy. */
export function startEgressAuthz(
  repoRoot: string,
  grpcPort: number,
  httpPort: number,
  extra: string[] = [],
): RunningProcess {
  const args = [
    `${repoRoot}/dist/cli.js`,
    'serve',
    '--grpc-addr',
    `127.0.0.1:${grpcPort}`,
    '--http-addr',
    `127.0.0.1:${httpPort}`,
  ];
  return start('egress-authz', process.execPath, [...args, '--policy', `${repoRoot}/policies`, ...extra], {
    cwd: repoRoot,
  });
}
