// The chaos suite's own verdict (scripts/chaos/verdict.mjs) on made-up runs: what counts as an allow
// during a fault, and that `scripts/chaos.mjs --verdict-from` exits 1 on one. Cheap: no process but node.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
// @ts-expect-error plain ESM module without type declarations
import { judge, formatTable } from '../../scripts/chaos/verdict.mjs';

const SCRIPT = join(import.meta.dirname, '..', '..', 'scripts', 'chaos.mjs');
const dir = mkdtempSync(join(tmpdir(), 'egress-authz-chaos-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Outcome = 'allow' | 'deny' | 'unavailable' | 'error';
interface Req {
  path: 'envoy' | 'irule';
  identity: 'allowed' | 'denied';
  sent: number | null;
  answered: number;
  egress?: number;
  outcome: Outcome;
  served_by?: string | null;
}

const envoy = (identity: Req['identity'], sent: number, answered: number, outcome: Outcome): Req => ({
  path: 'envoy',
  identity,
  sent,
  answered,
  outcome,
  ...(outcome === 'allow' ? { egress: answered - 1 } : {}),
});
const irule = (identity: Req['identity'], answered: number, outcome: Outcome, served_by: string | null): Req => ({
  path: 'irule',
  identity,
  sent: null,
  answered,
  outcome,
  served_by,
});

const killed = { name: 'killed', path: 'envoy', kind: 'outage', start: 1000, end: 2000, recovery_timeout_ms: 5000 };
const corrupt = {
  name: 'corrupt',
  path: 'envoy',
  kind: 'last-good',
  start: 1000,
  end: 2000,
  recovery_timeout_ms: 5000,
};
const hung = {
  name: 'sideband hung',
  path: 'irule',
  kind: 'outage',
  start: 1000,
  end: 2000,
  recovery_timeout_ms: 5000,
};

/** A healthy run around one Envoy outage: allowed before and after, fail-closed denials inside. */
function healthyEnvoyRun(): Req[] {
  return [
    envoy('allowed', 900, 950, 'allow'),
    envoy('denied', 900, 950, 'deny'),
    envoy('allowed', 1100, 1300, 'unavailable'),
    envoy('denied', 1100, 1300, 'unavailable'),
    envoy('allowed', 2100, 2200, 'allow'),
    envoy('denied', 2100, 2200, 'deny'),
  ];
}

describe('chaos verdict', () => {
  it('a healthy run passes, with the recovery time measured from the end of the fault', () => {
    const v = judge(healthyEnvoyRun(), [killed]);
    expect(v.failures).toEqual([]);
    expect(v.pass).toBe(true);
    expect(v.faults[0]).toMatchObject({ fault_allows: 0, requests: 2, recovery_ms: 199, pass: true });
    expect(formatTable(v)).toMatch(/killed\s+envoy\s+1\.0 s\s+2\s+0\s+0\s+0\s+2\s+0\s+0\.20 s\s+ok\nverdict: pass/);
  });

  it('an allow sent and answered inside the window is a fault allow, whichever identity asked', () => {
    const v = judge([...healthyEnvoyRun(), envoy('allowed', 1200, 1400, 'allow')], [killed]);
    expect(v.pass).toBe(false);
    expect(v.faults[0].fault_allows).toBe(1);
    expect(v.failures).toEqual(['killed: 1 allow(s) during the fault']);
  });

  it('an allow straddling the window start or end is not provably a fault: the healthy service may have sent it', () => {
    const straddling = [envoy('allowed', 990, 1010, 'allow'), envoy('allowed', 1990, 2010, 'allow')];
    const v = judge([...healthyEnvoyRun(), ...straddling], [killed]);
    expect(v.faults[0].fault_allows).toBe(0);
    expect(v.pass).toBe(true);
  });

  it('the egress time decides, not the answer: a request that left inside the window is a fault allow', () => {
    const late = { ...envoy('allowed', 1100, 2500, 'allow'), egress: 1500 };
    const v = judge([...healthyEnvoyRun(), late], [killed]);
    expect(v.faults[0].fault_allows).toBe(1);
  });

  it('the denied identity allowed at any time fails the run', () => {
    const v = judge([...healthyEnvoyRun(), envoy('denied', 3000, 3100, 'allow')], [killed]);
    expect(v.pass).toBe(false);
    expect(v.failures).toEqual(['the denied identity was allowed 1 time(s)']);
  });

  it('no allow after the fault, or one later than the limit, fails as not recovered', () => {
    const never = healthyEnvoyRun().filter((r) => r.answered < 2000);
    expect(judge(never, [killed]).failures).toEqual(['killed: no allow after the fault ended']);
    const late = [...never, envoy('allowed', 7000, 7100, 'allow')];
    expect(judge(late, [killed]).failures).toEqual(['killed: recovered only after 5099 ms (limit 5000 ms)']);
  });

  it('a window nobody asked through proves nothing and fails', () => {
    const v = judge(
      healthyEnvoyRun().filter((r) => !(r.sent !== null && r.sent >= 1000 && r.answered <= 2000)),
      [killed],
    );
    expect(v.failures).toEqual(['killed: no request of one identity fell inside the fault window']);
  });

  it('corrupt bundle (last good keeps serving): allows of the allowed identity are expected, a service denial is not', () => {
    const serving = [
      envoy('allowed', 1100, 1200, 'allow'),
      envoy('denied', 1100, 1200, 'deny'),
      envoy('allowed', 2100, 2200, 'allow'),
    ];
    expect(judge(serving, [corrupt]).pass).toBe(true);
    const changed = [...serving, envoy('allowed', 1300, 1400, 'deny')];
    expect(judge(changed, [corrupt]).failures).toEqual([
      'corrupt: 1 allowed-identity request(s) denied by the service',
    ]);
    const opened = [...serving, envoy('denied', 1300, 1400, 'allow')];
    expect(judge(opened, [corrupt]).failures).toEqual([
      'corrupt: 1 allow(s) during the fault',
      'the denied identity was allowed 1 time(s)',
    ]);
  });

  it('iRule: an allow is judged by who answered the sideband, not by the clock', () => {
    const run = [
      irule('allowed', 900, 'allow', 'healthy'),
      irule('allowed', 1500, 'unavailable', 'hung'),
      irule('denied', 1500, 'unavailable', 'hung'),
      // answered inside the window, but by the real service before the relay switched: fine
      irule('allowed', 1001, 'allow', 'healthy'),
      irule('allowed', 2100, 'allow', 'healthy'),
    ];
    expect(judge(run, [hung]).pass).toBe(true);
    const forged = [...run, irule('allowed', 1600, 'allow', 'hung')];
    expect(judge(forged, [hung]).failures).toEqual(['sideband hung: 1 allow(s) during the fault']);
    // outside every window, an allow that no healthy sideband answered still fails (rule 2)
    const stray = [...run, irule('allowed', 3000, 'allow', null)];
    expect(judge(stray, [hung]).failures).toEqual([
      '1 iRule allow(s) outside the fault windows not answered by the service',
    ]);
    // and an allow answered by a fault mode does not count as recovery
    const noRecovery = run.filter((r) => r.answered < 2000).concat(irule('allowed', 2100, 'allow', 'garbage'));
    expect(judge(noRecovery, [hung]).failures).toContain('sideband hung: no allow after the fault ended');
  });

  function verdictFrom(recorded: unknown): Promise<{ code: number | null; stdout: string }> {
    const file = join(dir, `run-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, JSON.stringify(recorded));
    const json = `${file}.report.json`;
    return new Promise((resolve) => {
      execFile(process.execPath, [SCRIPT, '--verdict-from', file, '--json', json], (err, stdout) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout });
      });
    });
  }

  it('scripts/chaos.mjs exits 1 on a fault allow and 0 on a clean run, with the table and the JSON report', async () => {
    const clean = await verdictFrom({ requests: healthyEnvoyRun(), faults: [killed] });
    expect(clean.code).toBe(0);
    expect(clean.stdout).toContain('verdict: pass');
    const failing = await verdictFrom({
      requests: [...healthyEnvoyRun(), envoy('allowed', 1200, 1400, 'allow')],
      faults: [killed],
    });
    expect(failing.code).toBe(1);
    expect(failing.stdout).toMatch(/killed\s+envoy.*FAIL/);
    expect(failing.stdout).toContain('killed: 1 allow(s) during the fault');
  });

  it('the JSON report carries the per-fault figures', async () => {
    const file = join(dir, 'report-input.json');
    writeFileSync(file, JSON.stringify({ requests: healthyEnvoyRun(), faults: [killed] }));
    const out = join(dir, 'report.json');
    await new Promise((done) => execFile(process.execPath, [SCRIPT, '--verdict-from', file, '--json', out], done));
    const report = JSON.parse(readFileSync(out, 'utf8'));
    expect(report.verdict).toBe('pass');
    expect(report.faults[0]).toMatchObject({
      name: 'killed',
      fault_allows: 0,
      recovery_ms: 199,
      allowed_identity: { requests: 1, unavailable: 1 },
      denied_identity: { requests: 1, unavailable: 1 },
    });
  });
});
