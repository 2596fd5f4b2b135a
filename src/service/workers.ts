// `serve --workers N`: how many, and what the primary and its workers say to each other. The messages
// are plain data over the cluster IPC channel (advanced serialization, so bundle bytes travel as bytes).
// Every message carries `ea` (its kind) so that it cannot be mistaken for cluster's or prom-client's own.
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import type { PortableX509Bundle } from '../identity/x509-bundle.js';
import type { PolicyRole } from '../lifecycle/policy-store.js';

/** reads a file as text, or undefined when it is not there (injected by tests) */
export type ReadText = (path: string) => string | undefined;

const readText: ReadText = (path) => {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
};

/**
 * The CPUs this process may use: the scheduler's view (`os.availableParallelism()`, which follows the
 * affinity mask) capped by a CFS quota on our cgroup or any cgroup above it (cgroup v2 `cpu.max`,
 * cgroup v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`), rounded up as Kubernetes rounds `limits.cpu` for a
 * resourceFieldRef. A container limited to 1.5 CPUs on a 64-core node gets 2 workers, not 64.
 */
export function availableCpus(read: ReadText = readText, parallelism = availableParallelism()): number {
  const quota = cgroupCpuQuota(read);
  const cpus = quota === undefined ? parallelism : Math.min(parallelism, Math.ceil(quota - 1e-9));
  return Math.max(1, cpus);
}

/** The tightest CPU quota (in CPUs) over our cgroup and its parents; undefined when none is set. */
export function cgroupCpuQuota(read: ReadText = readText): number | undefined {
  const membership = read('/proc/self/cgroup') ?? '';
  const quotas: number[] = [];
  for (const line of membership.split('\n')) {
    // "0::/kubepods/pod…/…" (v2) or "4:cpu,cpuacct:/docker/…" (v1)
    const m = /^\d+:([^:]*):(.*)$/.exec(line.trim());
    if (!m) continue;
    const [, controllers, path] = m as unknown as [string, string, string];
    const v2 = controllers === '';
    if (!v2 && !controllers.split(',').includes('cpu')) continue;
    const root = v2 ? '/sys/fs/cgroup' : cgroupV1Root(read, controllers);
    for (const dir of ancestors(path)) {
      const q = v2 ? quotaV2(read(`${root}${dir}/cpu.max`)) : quotaV1(read, `${root}${dir}`);
      if (q !== undefined) quotas.push(q);
    }
  }
  return quotas.length === 0 ? undefined : Math.min(...quotas);
}

function cgroupV1Root(read: ReadText, controllers: string): string {
  // Usually /sys/fs/cgroup/cpu,cpuacct (with a cpu symlink); the name follows the controller list.
  for (const dir of [`/sys/fs/cgroup/${controllers}`, '/sys/fs/cgroup/cpu'])
    if (read(`${dir}/cpu.cfs_period_us`) !== undefined) return dir;
  return '/sys/fs/cgroup/cpu';
}

/** "/a/b" → ["/a/b", "/a", ""]; inside a container's cgroup namespace the path is "/" → [""] */
function ancestors(path: string): string[] {
  const parts = path.split('/').filter((p) => p !== '');
  const out: string[] = [];
  for (let i = parts.length; i >= 0; i--) out.push(i === 0 ? '' : `/${parts.slice(0, i).join('/')}`);
  return out;
}

function quotaV2(text: string | undefined): number | undefined {
  const m = /^(\d+|max)\s+(\d+)/.exec(text?.trim() ?? '');
  if (!m || m[1] === 'max') return undefined;
  const q = Number(m[1]) / Number(m[2]);
  return q > 0 && Number.isFinite(q) ? q : undefined;
}

function quotaV1(read: ReadText, dir: string): number | undefined {
  const quota = Number(read(`${dir}/cpu.cfs_quota_us`)?.trim());
  const period = Number(read(`${dir}/cpu.cfs_period_us`)?.trim());
  if (!(quota > 0) || !(period > 0)) return undefined; // -1: no quota
  return quota / period;
}

/** `--workers` as given: a count of at least 1 (bounded: each worker is a whole Node process). */
export function parseWorkers(text: string): number | undefined {
  if (!/^\d{1,3}$/.test(text.trim())) return undefined;
  const n = Number(text);
  return n >= 1 && n <= 256 ? n : undefined;
}

// --- the IPC protocol -------------------------------------------------------------------------------

/** An accepted policy, as the primary hands it to a worker: the bytes it validated, and what it found. */
export interface BundleMessage {
  ea: 'bundle';
  role: PolicyRole;
  /** increases with every accepted version of either role; a worker acks the seq it serves */
  seq: number;
  revision: string;
  source: string;
  bytes: Uint8Array;
}

/**
 * The primary's whole trust bundle set (`--trust-bundle`, `--trust-bundle-url`), as it read, fetched and
 * accepted it: a worker replaces its set with it in one step and acks the generation.
 */
export interface TrustMessage {
  ea: 'trust';
  /** the primary's bundle set generation; increases with every change */
  generation: number;
  bundles: PortableX509Bundle[];
}

/** What a worker answers with: readiness and the `/readyz` detail as the primary sees the whole. */
export interface StateMessage {
  ea: 'state';
  ready: boolean;
  detail: Record<string, unknown>;
}

export type ToWorker =
  | BundleMessage
  | TrustMessage
  | StateMessage
  | { ea: 'collect-metrics'; id: number }
  | { ea: 'metrics'; id: number; text: string }
  | { ea: 'stop' }
  | { ea: 'exit-now' };

export type ToPrimary =
  | { ea: 'hello' }
  | {
      ea: 'listening';
      pid: number;
      grpcPort: number;
      httpPort: number;
      healthPort?: number;
      /** its startup log line's fields, for the primary's own */
      fields: Record<string, unknown>;
    }
  | { ea: 'loaded'; role: PolicyRole; seq: number; revision: string }
  | { ea: 'load-failed'; role: PolicyRole; seq: number; error: string }
  | { ea: 'trust-applied'; generation: number }
  | { ea: 'trust-failed'; generation: number; error: string }
  | { ea: 'metrics-json'; id: number; metrics: MetricObjectWithValues<MetricValue<string>>[] }
  | { ea: 'metrics-request'; id: number };

export function isMessage<T extends { ea: string }>(m: unknown): m is T {
  return typeof m === 'object' && m !== null && typeof (m as { ea?: unknown }).ea === 'string';
}
