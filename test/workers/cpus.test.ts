// How many workers by default: the CPUs the scheduler gives us, capped by a cgroup CPU quota (v2 or v1,
// on our cgroup or any above it), rounded up like a Kubernetes resourceFieldRef on limits.cpu.
import { describe, expect, it } from 'vitest';
import { availableCpus, cgroupCpuQuota, parseWorkers } from '../../src/service/workers.js';
import { parseServeConfig } from '../../src/service/config.js';

const files = (map: Record<string, string>) => (path: string) => map[path];

describe('availableCpus', () => {
  it('is the parallelism when no cgroup sets a quota', () => {
    expect(availableCpus(files({ '/proc/self/cgroup': '0::/\n', '/sys/fs/cgroup/cpu.max': 'max 100000\n' }), 8)).toBe(
      8,
    );
    expect(availableCpus(files({}), 4)).toBe(4);
  });

  it('follows a cgroup v2 cpu.max quota inside a container (cgroup namespace: our cgroup is "/")', () => {
    const read = files({ '/proc/self/cgroup': '0::/\n', '/sys/fs/cgroup/cpu.max': '200000 100000\n' });
    expect(cgroupCpuQuota(read)).toBe(2);
    expect(availableCpus(read, 64)).toBe(2);
  });

  it('rounds a fractional quota up and never goes below one or above the parallelism', () => {
    const v2 = (max: string) => files({ '/proc/self/cgroup': '0::/\n', '/sys/fs/cgroup/cpu.max': max });
    expect(availableCpus(v2('150000 100000'), 64)).toBe(2);
    expect(availableCpus(v2('50000 100000'), 64)).toBe(1);
    expect(availableCpus(v2('800000 100000'), 2)).toBe(2);
  });

  it('takes the tightest quota over our cgroup and its parents (a pod limit above the container)', () => {
    const read = files({
      '/proc/self/cgroup': '0::/kubepods/pod1/ctr\n',
      '/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max': 'max 100000',
      '/sys/fs/cgroup/kubepods/pod1/cpu.max': '300000 100000',
      '/sys/fs/cgroup/kubepods/cpu.max': '1600000 100000',
    });
    expect(availableCpus(read, 16)).toBe(3);
  });

  it('reads a cgroup v1 CFS quota; -1 is no quota', () => {
    const v1 = (quota: string) =>
      files({
        '/proc/self/cgroup': '4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n',
        '/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us': quota,
        '/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us': '100000',
      });
    expect(availableCpus(v1('250000'), 32)).toBe(3);
    expect(availableCpus(v1('-1'), 32)).toBe(32);
  });
});

describe('--workers', () => {
  it('takes a count from 1 to 256; absent means one per CPU (decided at start, not while parsing)', () => {
    expect(parseWorkers('1')).toBe(1);
    expect(parseWorkers('16')).toBe(16);
    for (const bad of ['0', '-1', '1.5', 'two', '', '257', '1e3']) expect(parseWorkers(bad), bad).toBeUndefined();
    const parsed = parseServeConfig(['--workers', '3']);
    expect(parsed.ok && parsed.value.workers).toBe(3);
    const absent = parseServeConfig([]);
    expect(absent.ok && absent.value.workers).toBeUndefined();
    const wrong = parseServeConfig(['--workers', 'all']);
    expect(wrong.ok ? '' : wrong.reason).toMatch(/--workers "all": expected a count from 1 to 256/);
  });
});
