import 'reflect-metadata';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { LoadedPolicy } from '../../src/policy/policy.js';
import { loadPolicy } from '../../src/lifecycle/bundle-source.js';
import * as x509 from '@peculiar/x509';
import {
  decideCase,
  listCaseFiles,
  readCaseFile,
  runPolicyCases,
  type CaseDecide,
} from '../../src/lifecycle/policy-cases.js';

// The real pipeline (identity → input → policy → decision), exactly what `egress-authz test` runs.
const decide: CaseDecide = decideCase;

describe('policy cases', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'cases-test-'));
  let policy: LoadedPolicy;
  beforeAll(async () => {
    policy = await loadPolicy('policies');
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  test("the default policy's own cases pass", async () => {
    const report = await runPolicyCases('policies', policy, decide);
    expect(report.files).toEqual(['policies/cases/default.json', 'policies/cases/destinations.json']);
    expect(report.text, report.text).toMatch(/\n23 passed, 0 failed$/);
    expect(report).toMatchObject({ ok: true, passed: 23, failed: 0 });
  });

  test('a failing case is reported with the actual decision', async () => {
    const file = join(tmp, 'wrong.json');
    writeFileSync(
      file,
      JSON.stringify({
        cases: [
          {
            name: 'bookinfo allowed',
            spiffe_id: 'spiffe://cluster.local/ns/bookinfo/sa/a',
            expect: { allow: true, snat_pool: 'bookinfo_snat' },
          },
          {
            name: 'wrong pool expected',
            spiffe_id: 'spiffe://cluster.local/ns/bookinfo/sa/a',
            expect: { allow: true, snat_pool: 'other_snat' },
          },
          {
            name: 'wrong reason expected',
            spiffe_id: 'spiffe://cluster.local/ns/x/sa/a',
            expect: { allow: false, reason_contains: 'nope' },
          },
        ],
      }),
    );
    const report = await runPolicyCases(file, policy, decide);
    expect(report).toMatchObject({ ok: false, passed: 1, failed: 2 });
    expect(report.text.split('\n')).toEqual([
      file,
      '  ✓ bookinfo allowed',
      '  ✗ wrong pool expected — expected allow=true pool=other_snat, got allow=true pool=bookinfo_snat reason=namespace bookinfo may egress via bookinfo_snat',
      '  ✗ wrong reason expected — expected allow=false reason containing "nope", got allow=false pool= reason=namespace x has no egress tenant',
      '1 passed, 2 failed',
    ]);
    expect(report.outcomes[1]?.actual).toEqual({
      allow: true,
      snat_pool: 'bookinfo_snat',
      reason: 'namespace bookinfo may egress via bookinfo_snat',
    });
  });

  test('a decide that throws fails its case without stopping the run', async () => {
    const file = join(tmp, 'throws.json');
    writeFileSync(
      file,
      JSON.stringify({
        cases: [
          { name: 'boom', spiffe_id: 'spiffe://x/y', expect: { allow: false } },
          { name: 'next', spiffe_id: 'spiffe://x/y', expect: { allow: false } },
        ],
      }),
    );
    let calls = 0;
    const report = await runPolicyCases(file, policy, async () => {
      if (calls++ === 0) throw new Error('pipeline exploded');
      return { allow: false, snat_pool: '', reason: 'r' };
    });
    expect(report.text).toContain('✗ boom — expected allow=false, got error: pipeline exploded');
    expect(report).toMatchObject({ passed: 1, failed: 1 });
  });

  test('certificate cases get a fresh PEM per case', async () => {
    const seen: string[] = [];
    const file = join(tmp, 'certs.json');
    writeFileSync(
      file,
      JSON.stringify({
        cases: [
          {
            name: 'svid',
            certificate: { uris: ['spiffe://cluster.local/ns/bookinfo/sa/a'], dns: ['a.example'] },
            expect: { allow: true },
          },
        ],
      }),
    );
    await runPolicyCases(file, policy, async (req, p) => {
      seen.push(req.certificatePem ?? '');
      return decide(req, p);
    });
    const cert = new x509.X509Certificate(seen[0]!);
    expect(cert.subject).toBe('');
    expect(
      cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.items.map((n) => `${n.type}:${n.value}`),
    ).toEqual(['dns:a.example', 'url:spiffe://cluster.local/ns/bookinfo/sa/a']);
    expect(cert.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(false);
  });

  test.each([
    ['not an object', '[]', /must be a JSON object/],
    ['no cases', '{}', /"cases" must be a list/],
    [
      'two identity sources',
      '{"cases":[{"name":"a","spiffe_id":"x","input":{},"expect":{"allow":true}}]}',
      /case 1 \(a\): needs exactly one of/,
    ],
    ['no expectation', '{"cases":[{"name":"a","spiffe_id":"x"}]}', /"expect.allow" must be a boolean/],
    [
      'duplicate names',
      '{"cases":[{"name":"a","spiffe_id":"x","expect":{"allow":true}},{"name":"a","spiffe_id":"x","expect":{"allow":true}}]}',
      /case 2 \(a\): duplicate name/,
    ],
    [
      'an unknown certificate field',
      '{"cases":[{"name":"a","certificate":{"uri":"x"},"expect":{"allow":true}}]}',
      /unknown field\(s\): uri/,
    ],
    [
      'an unknown key usage',
      '{"cases":[{"name":"a","certificate":{"key_usage":["everything"]},"expect":{"allow":true}}]}',
      /unknown flag\(s\): everything/,
    ],
  ])('a malformed case file (%s) is refused naming the problem', async (_name, text, message) => {
    const file = join(tmp, 'bad.json');
    writeFileSync(file, text);
    await expect(readCaseFile(file)).rejects.toThrow(message);
  });

  test('a folder without case files has no cases', async () => {
    expect(await listCaseFiles(tmp + '/nonexistent').catch((e: Error) => e.message)).toMatch(/ENOENT/);
    const empty = mkdtempSync(join(tmp, 'empty-'));
    expect(await runPolicyCases(empty, policy, decide)).toMatchObject({
      ok: true,
      passed: 0,
      failed: 0,
      text: '0 passed, 0 failed',
    });
  });
});
