// Every process the chaos run starts leads its own process group and stays registered until its group
// is gone. On every way out (normal end, exception, SIGINT/SIGTERM/SIGHUP) each registered group is
// sent SIGCONT (a "hung" fault may have left it stopped) and SIGKILL. A SIGKILL of the runner itself
// cannot be caught: that is the one case that leaves processes behind.
import { spawn } from 'node:child_process';

const groups = new Map(); // pgid -> name
let onCleanup = [];

function signalGroup(pgid, signal) {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false; // the group is gone
  }
}

/** Stops every registered group now (synchronous: usable from an 'exit' handler). */
export function killAll() {
  for (const pgid of groups.keys()) {
    signalGroup(pgid, 'SIGCONT');
    signalGroup(pgid, 'SIGKILL');
  }
  groups.clear();
  for (const f of onCleanup.splice(0)) {
    try {
      f();
    } catch {
      // best effort on the way out
    }
  }
}

/** Runs f (synchronously) after the processes are killed, on every way out. */
export function atCleanup(f) {
  onCleanup.push(f);
}

let installed = false;
export function installCleanupHandlers(label = 'chaos') {
  if (installed) return;
  installed = true;
  process.on('exit', killAll);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(signal, () => {
      process.stderr.write(`\n${label}: ${signal}, stopping every process it started\n`);
      killAll();
      process.exit(130);
    });
  }
}

/**
 * Starts `cmd` as the leader of a new process group. onLine(line, stream) sees each output line; the
 * last ~8 KB of each stream are kept for error messages.
 */
export function startGroup(name, cmd, args, { cwd, env, onLine } = {}) {
  const child = spawn(cmd, args, { cwd, env: env ?? process.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const tails = { stdout: '', stderr: '' };
  for (const stream of ['stdout', 'stderr']) {
    let partial = '';
    child[stream].on('data', (chunk) => {
      const text = chunk.toString();
      tails[stream] = (tails[stream] + text).slice(-8192);
      if (!onLine) return;
      const lines = (partial + text).split('\n');
      partial = lines.pop();
      for (const line of lines) onLine(line, stream);
    });
    child[stream].on('end', () => {
      if (onLine && partial) onLine(partial, stream);
      partial = '';
    });
  }
  const pgid = child.pid;
  if (pgid !== undefined) groups.set(pgid, name);
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      // Whatever the leader left in its group goes with it; then the id may be reused, so forget it.
      if (pgid !== undefined) {
        signalGroup(pgid, 'SIGCONT');
        signalGroup(pgid, 'SIGKILL');
        groups.delete(pgid);
      }
      resolve({ code, signal });
    });
    child.once('error', (err) => {
      if (pgid !== undefined) groups.delete(pgid);
      resolve({ code: null, signal: null, error: err.message });
    });
  });
  const closed = new Promise((resolve) => child.once('close', resolve));
  return {
    name,
    pid: pgid,
    exited,
    /** resolves once the output streams are drained too */
    closed,
    tail: () => `--- ${name} stdout ---\n${tails.stdout}\n--- ${name} stderr ---\n${tails.stderr}`,
    get alive() {
      return child.exitCode === null && child.signalCode === null;
    },
    /** Sends a signal to the whole group (kill -9, SIGSTOP, SIGCONT, SIGTERM). */
    signal(sig) {
      return pgid !== undefined && groups.has(pgid) && signalGroup(pgid, sig);
    },
    /** SIGTERM, then SIGKILL after graceMs; resolves when the leader is gone. */
    async stop(graceMs = 3000) {
      if (pgid === undefined || !groups.has(pgid)) return exited;
      signalGroup(pgid, 'SIGCONT');
      signalGroup(pgid, 'SIGTERM');
      const timer = setTimeout(() => signalGroup(pgid, 'SIGKILL'), graceMs);
      const r = await exited;
      clearTimeout(timer);
      return r;
    },
  };
}

/** Runs a command to completion in its own group (killed after timeoutMs); collects its output. */
export async function runToEnd(name, cmd, args, { cwd, env, timeoutMs = 120_000 } = {}) {
  let stdout = '';
  let stderr = '';
  const p = startGroup(name, cmd, args, {
    cwd,
    env,
    onLine: (line, stream) => (stream === 'stdout' ? (stdout += `${line}\n`) : (stderr += `${line}\n`)),
  });
  const timer = setTimeout(() => p.signal('SIGKILL'), timeoutMs);
  const r = await p.exited;
  await Promise.race([p.closed, new Promise((done) => setTimeout(done, 2000))]);
  clearTimeout(timer);
  return { ...r, stdout, stderr };
}
