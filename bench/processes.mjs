// Every process the benchmark starts is registered here and stopped on the way out, whether the run
// ends normally, throws, or is interrupted (Ctrl-C, SIGTERM).
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { openSync, closeSync, readFileSync, readdirSync } from 'node:fs';

const live = new Set();

function killAllNow() {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
}

process.on('exit', killAllNow);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    console.error(`\nbench: ${signal}, stopping every process it started`);
    killAllNow();
    process.exit(130);
  });
}

/**
 * Starts a long-running process. stdout/stderr: 'ignore' or a file path (appended to).
 * The returned child has `exited` (a promise of the exit code) and `pid`.
 */
export function startProcess(cmd, args, { stdout = 'ignore', stderr = 'ignore', env, cwd } = {}) {
  const fds = [];
  const target = (where) => {
    if (where === 'ignore') return 'ignore';
    const fd = openSync(where, 'a');
    fds.push(fd);
    return fd;
  };
  const child = spawn(cmd, args, { stdio: ['ignore', target(stdout), target(stderr)], env: env ?? process.env, cwd });
  for (const fd of fds) closeSync(fd);
  live.add(child);
  child.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      live.delete(child);
      resolve(code ?? signal);
    });
    child.on('error', (err) => {
      live.delete(child);
      resolve(`error: ${err.message}`);
    });
  });
  return child;
}

/** SIGTERM, then SIGKILL if it is still there after graceMs. */
export async function stopProcess(child, graceMs = 3000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await child.exited;
  clearTimeout(timer);
}

/** Runs a command to completion (killed after timeoutMs) and collects its output. */
export function runCommand(cmd, args, { timeoutMs = 120_000, env, cwd } = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env, cwd });
    live.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    const done = (code) => {
      clearTimeout(timer);
      live.delete(child);
      resolve({ code, stdout, stderr });
    };
    child.on('exit', (code, signal) => done(code ?? signal));
    child.on('error', (err) => done(`error: ${err.message}`));
  });
}

function descendants(pid) {
  const out = [];
  let tasks;
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const task of tasks) {
    let children;
    try {
      children = readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8');
    } catch {
      continue;
    }
    for (const child of children.split(/\s+/).filter(Boolean)) {
      out.push(Number(child), ...descendants(Number(child)));
    }
  }
  return out;
}

/** Peak resident set (VmHWM) of a process and its descendants, in MB; null when it is gone. */
export function peakRssMb(pid) {
  let kb = 0;
  let seen = false;
  for (const p of [pid, ...descendants(pid)]) {
    try {
      const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
      if (m) {
        kb += Number(m[1]);
        seen = true;
      }
    } catch {
      // exited meanwhile
    }
  }
  return seen ? Math.round((kb / 1024) * 10) / 10 : null;
}

/** VmHWM of each direct child of pid (the workers of `serve --workers N`), in MB. */
export function childrenPeakRssMb(pid) {
  let children;
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8');
  } catch {
    return [];
  }
  return children
    .split(/\s+/)
    .filter(Boolean)
    .map((child) => peakRssMb(Number(child)))
    .filter((mb) => mb !== null);
}

/** CPU a process has used, user + system, in clock ticks (10 ms here); null once it is gone. */
export function cpuTicksOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]); // utime + stime
  } catch {
    return null;
  }
}

// The benchmark's load generators (their CPU is reported apart: with --workers 2 they share a core).
const LOAD_GENERATORS = new Set(['loadgen', 'ghz', 'h2load']);

function commOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

function machineBusyTicks() {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = cpu;
  return { busy: user + nice + system + irq + softirq, steal: steal ?? 0, idle: idle + iowait };
}

/**
 * Watches how much CPU the machine spends outside this benchmark's own process tree while a
 * measurement runs (other users of a shared machine disturb the figures). stop() returns the
 * outsiders' share in % of one core, the hypervisor's steal, and the load generators' own CPU
 * (loadgen, ghz, h2load), all in % of one core.
 */
export function startCpuWatch(intervalMs = 250) {
  const start = machineBusyTicks();
  const t0 = Date.now();
  const first = new Map();
  const last = new Map();
  const comm = new Map();
  const sample = () => {
    for (const pid of [process.pid, ...descendants(process.pid)]) {
      const ticks = cpuTicksOf(pid);
      if (ticks === null) continue;
      if (!first.has(pid)) {
        first.set(pid, ticks);
        comm.set(pid, commOf(pid));
      }
      last.set(pid, ticks);
    }
  };
  sample();
  const timer = setInterval(sample, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      sample();
      const end = machineBusyTicks();
      const seconds = (Date.now() - t0) / 1000;
      let ours = 0;
      let load = 0;
      for (const [pid, ticks] of last) {
        const used = ticks - (first.get(pid) ?? ticks);
        ours += used;
        if (LOAD_GENERATORS.has(comm.get(pid))) load += used;
      }
      const hz = 100; // USER_HZ on Linux
      const pct = (ticks) => Math.max(0, Math.round((ticks / hz / seconds) * 100));
      return {
        other_cpu_pct: pct(end.busy - start.busy - ours),
        steal_pct: pct(end.steal - start.steal),
        load_generator_cpu_pct: pct(load),
      };
    },
  };
}

/** An ephemeral TCP port on 127.0.0.1, free at the time of asking. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}
