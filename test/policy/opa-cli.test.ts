import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test, vi } from 'vitest';
import { buildWasmBundle, locateOpa, packageRoot, runOpaTest } from '../../src/policy/opa-cli.js';

describe('opa CLI', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'opa-cli-test-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  test('opa test passes on the default policy, test by test', async () => {
    const report = await runOpaTest('policies');
    expect(report.ok, report.text).toBe(true);
    expect(report.failed).toBe(0);
    expect(report.passed).toBeGreaterThanOrEqual(20);
    expect(report.text).toContain('✓ data.egress.authz_test.test_namespace_prefix_lookalike_denied');
    expect(report.text).toMatch(/\n\d+ passed, 0 failed$/);
  });

  test('a failing Rego test fails the report', async () => {
    const dir = join(tmp, 'failing');
    mkdirSync(dir);
    writeFileSync(join(dir, 'p_test.rego'), 'package p_test\n\ntest_ok if true\n\ntest_wrong if 1 == 2\n');
    const report = await runOpaTest(dir);
    expect(report).toMatchObject({ ok: false, passed: 1, failed: 1 });
    expect(report.text).toContain('✗ data.p_test.test_wrong');
  });

  test('a folder that does not compile fails the report with the compiler message', async () => {
    const dir = join(tmp, 'broken');
    mkdirSync(dir);
    writeFileSync(join(dir, 'p.rego'), 'package p\n\nx := {\n');
    const report = await runOpaTest(dir);
    expect(report.ok).toBe(false);
    expect(report.text).toMatch(/rego_parse_error(.|\n)*\n0 passed, 1 failed$/);
  });

  test('build ignores case files, which would otherwise become data', async () => {
    const dir = join(tmp, 'with-cases');
    mkdirSync(join(dir, 'cases'), { recursive: true });
    writeFileSync(join(dir, 'p.rego'), 'package egress.authz\n\ndecision := data.cases\n');
    writeFileSync(join(dir, 'cases', 'a.json'), '{"cases": []}');
    await buildWasmBundle(dir, join(tmp, 'out.tar.gz'));
    const { loadPolicy } = await import('../../src/lifecycle/bundle-source.js');
    const p = await loadPolicy(join(tmp, 'out.tar.gz'));
    expect(p.data).toEqual({});
    expect(p.evaluate({})).toEqual({ ok: false, code: 'policy', reason: 'policy result undefined' });
  });

  test('the capabilities file given to opa build and opa test is removed afterwards', async () => {
    // os.tmpdir() reads TMPDIR at each call: a folder of our own, where no other process writes.
    const own = join(tmp, 'own-tmp');
    mkdirSync(own);
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = own;
    try {
      // A fresh copy of the module: nothing made by the tests before is reused.
      vi.resetModules();
      const cli = await import('../../src/policy/opa-cli.js');
      const dir = join(tmp, 'caps');
      mkdirSync(dir);
      writeFileSync(join(dir, 'p.rego'), 'package egress.authz\n\ndecision := true\n');
      writeFileSync(join(dir, 'p_test.rego'), 'package egress.authz\n\ntest_ok if decision\n');
      await cli.buildWasmBundle(dir, join(tmp, 'caps.tar.gz'));
      expect((await cli.runOpaTest(dir)).ok).toBe(true);
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
    }
    expect(readdirSync(own).filter((name) => name.startsWith('egress-authz-opa-'))).toEqual([]);
  });

  test('build of a missing folder says so', async () => {
    await expect(buildWasmBundle(join(tmp, 'missing'), join(tmp, 'x.tar.gz'))).rejects.toThrow(
      /missing does not exist/,
    );
  });

  test('EGRESS_AUTHZ_OPA wins, and a bad value is an error', () => {
    expect(locateOpa({ EGRESS_AUTHZ_OPA: '/bin/true' })).toBe('/bin/true');
    expect(() => locateOpa({ EGRESS_AUTHZ_OPA: join(tmp, 'no-opa') })).toThrow(/no-opa is not an executable file/);
  });

  test('the pinned copy is found from the package root', () => {
    expect(locateOpa({ PATH: '' })).toBe(join(packageRoot(), '.tools', 'bin', 'opa'));
  });
});
