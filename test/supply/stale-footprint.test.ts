// Finding 4 of issue 14: the input footprint stamp must describe the module it travels with. A folder
// whose `.manifest` was copied from an earlier `egress-authz build`, rebuilt with `opa build -b`, keeps
// the old stamp; a new rule denying on header x-exfil then never saw the header and the request was
// allowed, while `opa eval` of the same Rego denied it.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { readBundle, readBundleFiles } from '../../src/policy/bundle.js';
import { buildWasmBundle } from '../../src/policy/opa-cli.js';
import { loadPolicyBundle } from '../../src/policy/policy.js';
import { check, checkClient, checkRequest, POLICY_DIR, startTestService } from '../support/service.js';
import { opaBinary } from './support.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';

describe('a stale footprint stamp is not trusted (issue 14, finding 4)', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'stale-stamp-'));
  let stale: Buffer;
  let fresh: Buffer;
  const folder = join(tmp, 'exfil');
  beforeAll(async () => {
    await buildWasmBundle(POLICY_DIR, join(tmp, 'old.tar.gz'));
    // opa build -b refuses a manifest naming a policy.wasm the folder does not have: the copy keeps the
    // rest (revision, roots, metadata), as a folder's hand-kept .manifest would
    const manifest = JSON.parse(
      Buffer.from((await readBundleFiles(readFileSync(join(tmp, 'old.tar.gz')))).get('.manifest')!).toString(),
    );
    delete manifest.wasm;
    cpSync(join(POLICY_DIR, 'data.json'), join(folder, 'data.json'));
    const rego = readFileSync(join(POLICY_DIR, 'egress_authz.rego'), 'utf8').replace(
      'denial := sprintf("trust domain %v is not allowed"',
      'denial := "exfiltration header" if {\n\tinput.attributes.request.http.headers["x-exfil"]\n} else := sprintf("trust domain %v is not allowed"',
    );
    expect(rego).toContain('x-exfil');
    writeFileSync(join(folder, 'egress_authz.rego'), rego);
    writeFileSync(join(folder, '.manifest'), JSON.stringify(manifest));
    const opa = opaBinary();
    execFileSync(
      opa,
      ['build', '-b', '-t', 'wasm', '-e', 'egress/authz/decision', '-o', join(tmp, 'stale.tar.gz'), '.'],
      {
        cwd: folder,
      },
    );
    stale = readFileSync(join(tmp, 'stale.tar.gz'));
    await buildWasmBundle(folder, join(tmp, 'fresh.tar.gz'));
    fresh = readFileSync(join(tmp, 'fresh.tar.gz'));
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  test('the stale bundle still carries the old stamp (the premise)', async () => {
    const b = await readBundle(stale);
    expect(JSON.stringify(b.manifest?.metadata)).toContain('egress_authz_input');
  });

  test.each([
    ['stale stamp (opa build -b with a copied .manifest)', () => stale],
    ['fresh stamp (egress-authz build)', () => fresh],
  ])('%s: a Check carrying x-exfil is denied, as opa eval says', async (_name, bundle) => {
    const policy = await loadPolicyBundle(bundle(), { source: 'exfil' });
    const svc = await startTestService({ policy });
    const client = checkClient(svc.grpcPort);
    try {
      const plain = await check(client, checkRequest({ principal: BOOKINFO }));
      expect(plain.status.code).toBe(0);
      const exfil = await check(client, checkRequest({ principal: BOOKINFO, headers: { 'x-exfil': '1' } }));
      expect(exfil.status.code).not.toBe(0);
    } finally {
      client.close();
      await svc.close(1000);
    }
  });

  test('the stale stamp is ignored: whole input, nothing remembered', async () => {
    const policy = await loadPolicyBundle(stale, { source: 'stale' });
    expect(policy.inputFootprint).toBeUndefined();
    const good = await loadPolicyBundle(fresh, { source: 'fresh' });
    expect(good.inputFootprint?.keys).toContain('attributes');
  });

  test('opa eval of the same Rego denies the x-exfil request', () => {
    const input = {
      identity: { spiffe_id: BOOKINFO, trust_domain: 'cluster.local', namespace: 'bookinfo' },
      attributes: { request: { http: { headers: { 'x-exfil': '1' } } } },
    };
    writeFileSync(join(tmp, 'input.json'), JSON.stringify(input));
    const out = execFileSync(
      opaBinary(),
      ['eval', '-f', 'raw', '-d', folder, '-i', join(tmp, 'input.json'), 'data.egress.authz.decision.allow'],
      { encoding: 'utf8' },
    );
    expect(out.trim()).toBe('false');
  });
});
