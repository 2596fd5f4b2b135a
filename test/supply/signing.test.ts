// Signed bundles, checked against the real opa CLI in both directions: what `egress-authz build
// --signing-key` signs, `opa build -b --verification-key` accepts (it verifies its input bundles as
// `opa run` does), and what `opa build --signing-key` signs, egress-authz accepts; tampered, unsigned
// and wrongly signed bundles are refused by both. Keys are made at test time.
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { readBundle, readBundleFiles, writeBundleFiles } from '../../src/policy/bundle.js';
import { canonicalJson, type BundleVerification } from '../../src/policy/bundle-signing.js';
import { buildWasmBundle } from '../../src/policy/opa-cli.js';
import { loadPolicyBundle } from '../../src/policy/policy.js';
import { POLICY_DIR } from '../support/service.js';
import { opaBinary } from './support.js';

const tmp = mkdtempSync(join(tmpdir(), 'signing-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Key {
  alg: string;
  /** file with the private key (or the HMAC secret) */
  signing: string;
  /** file with the public key (or the HMAC secret) */
  verification: string;
}

function makeKey(name: string, alg: string): Key {
  const signing = join(tmp, `${name}.key.pem`);
  const verification = join(tmp, `${name}.pub.pem`);
  if (alg.startsWith('HS')) {
    writeFileSync(signing, randomBytes(32).toString('base64url'));
    return { alg, signing, verification: signing };
  }
  const pair = alg.startsWith('ES')
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  writeFileSync(signing, pair.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  writeFileSync(verification, pair.publicKey.export({ type: 'spki', format: 'pem' }));
  return { alg, signing, verification };
}

const verification = (k: Key, extra: Partial<BundleVerification> = {}): BundleVerification => ({
  key: readFileSync(k.verification),
  alg: k.alg,
  ...extra,
});

/** `opa build -b BUNDLE --verification-key …`: opa's own verdict on a bundle's signature. */
function opaVerifies(bundle: string, k: Key, extra: string[] = []): { ok: boolean; stderr: string } {
  const out = spawnSync(
    opaBinary(),
    [
      'build',
      '-b',
      bundle,
      '--verification-key',
      k.verification,
      '--signing-alg',
      k.alg,
      '-o',
      join(tmp, 'opa-out.tar.gz'),
      ...extra,
    ],
    { encoding: 'utf8' },
  );
  return { ok: out.status === 0, stderr: out.stderr };
}

function opaSign(src: string, out: string, k: Key): void {
  const r = spawnSync(
    opaBinary(),
    [
      'build',
      '-b',
      '-t',
      'wasm',
      '-e',
      'egress/authz/decision',
      '--signing-key',
      k.signing,
      '--signing-alg',
      k.alg,
      '-o',
      out,
      src,
    ],
    { encoding: 'utf8' },
  );
  expect(r.status, r.stderr).toBe(0);
}

const rsa = makeKey('rsa', 'RS256');
const other = makeKey('other', 'RS256');
const keys = [rsa, makeKey('ec', 'ES256'), makeKey('hmac', 'HS256'), makeKey('ps', 'PS384')];

describe.each(keys)('egress-authz build --signing-key ($alg)', (k) => {
  const file = join(tmp, `ours-${k.alg}.tar.gz`);
  beforeAll(async () => {
    await buildWasmBundle(POLICY_DIR, file, undefined, {
      revision: 'signed-1',
      signing: { key: readFileSync(k.signing), alg: k.alg },
    });
  });

  test('verifies in egress-authz and loads', async () => {
    const policy = await loadPolicyBundle(readFileSync(file), { source: file, verification: verification(k) });
    expect(policy.revision).toBe('signed-1');
  });

  test('verifies with opa', () => {
    const r = opaVerifies(file, k);
    expect(r.ok, r.stderr).toBe(true);
  });
});

describe('a bundle signed by opa build --signing-key', () => {
  const src = join(tmp, 'src');
  const opaSigned = join(tmp, 'opa-signed.tar.gz');
  beforeAll(() => {
    mkdirSync(src);
    cpSync(join(POLICY_DIR, 'egress_authz.rego'), join(src, 'egress_authz.rego'));
    // JSON that tests the canonical form: unsorted and duplicate keys, escapes, U+2028, HTML
    // characters, numbers as written, non-ASCII keys sorted by their UTF-8 bytes
    writeFileSync(
      join(src, 'data.json'),
      '{ "zz": {"b": 1.0, "a": [1e2, -0, 0.50]}, "é": "x", "z\\u00e9": 2, "\\ud83d\\ude00": 3, "ｚ": 4,\n' +
        ' "s": "\\u2028<&>\\u0001\\"\\\\\\/\\b\\f\\t", "dup": 1, "dup": 2,\n' +
        ' "egress": {"trust_domain": "cluster.local", "tenants": {"bookinfo": {"snat_pool": "bookinfo_snat"}}}}\n',
    );
    opaSign(src, opaSigned, rsa);
  });

  test('verifies in egress-authz, and the policy decides', async () => {
    const policy = await loadPolicyBundle(readFileSync(opaSigned), {
      source: opaSigned,
      verification: verification(rsa),
    });
    const r = policy.evaluate({
      identity: {
        spiffe_id: 'spiffe://cluster.local/ns/bookinfo/sa/x',
        trust_domain: 'cluster.local',
        namespace: 'bookinfo',
      },
      destination: { host: 'httpbin.org', port: 443 },
    });
    expect(r).toMatchObject({ ok: true, value: { allow: true, snat_pool: 'bookinfo_snat' } });
  });

  test('re-indented JSON keeps its signature (hashed in canonical form), for opa and for us', async () => {
    const files = await readBundleFiles(readFileSync(opaSigned));
    // whitespace only: numbers and keys must stay as written (1.0 is not 1 for OPA's hash)
    const text = Buffer.from(files.get('data.json')!).toString();
    files.set('data.json', Buffer.from(`\n\t ${text.replace(/^\{/, '{\n    ').replace(/\}\s*$/, '\n}')}  \n`));
    const out = join(tmp, 'reindented.tar.gz');
    writeFileSync(out, writeBundleFiles(files));
    expect(opaVerifies(out, rsa).ok).toBe(true);
    await expect(readBundle(readFileSync(out), { verification: verification(rsa) })).resolves.toBeDefined();
    // and a change of a number's text is a change, for both
    files.set('data.json', Buffer.from(text.replace('1.0', '1')));
    writeFileSync(out, writeBundleFiles(files));
    expect(opaVerifies(out, rsa).ok).toBe(false);
    await expect(readBundle(readFileSync(out), { verification: verification(rsa) })).rejects.toThrow(/digest mismatch/);
  });

  test('canonical JSON: Go order and escapes', () => {
    expect(canonicalJson('{"b":1.0,"a":[1e2, -0],"\\u2028":"<&>\\u0001"}')).toBe(
      '{"a":[1e2,-0],"b":1.0,"\\u2028":"<&>\\u0001"}',
    );
    // UTF-8 byte order: U+FF5A (ef bd 9a) before U+1F600 (f0 9f 98 80), unlike UTF-16 order
    expect(canonicalJson('{"\\ud83d\\ude00":1,"ｚ":2}')).toBe('{"ｚ":2,"😀":1}');
  });
});

describe('refused exactly as opa refuses', () => {
  const signed = join(tmp, 'base-signed.tar.gz');
  let files: Map<string, Uint8Array>;
  beforeAll(async () => {
    await buildWasmBundle(POLICY_DIR, signed, undefined, { signing: { key: readFileSync(rsa.signing), alg: 'RS256' } });
    files = await readBundleFiles(readFileSync(signed));
  });

  const variant = (name: string, change: (f: Map<string, Uint8Array>) => void): string => {
    const copy = new Map(files);
    change(copy);
    const out = join(tmp, `${name}.tar.gz`);
    writeFileSync(out, writeBundleFiles(copy));
    return out;
  };

  test.each<[string, () => { file: string; key?: Key; scope?: string }, RegExp]>([
    ['an unsigned bundle', () => ({ file: variant('unsigned', (f) => f.delete('.signatures.json')) }), /not signed/],
    ['a bundle signed by another key', () => ({ file: signed, key: other }), /signature is not valid/],
    [
      'a data.json changed after signing (tenant attacker added)',
      () => ({
        file: variant('tampered', (f) => {
          const d = JSON.parse(Buffer.from(f.get('data.json')!).toString());
          d.egress.tenants.attacker = { snat_pool: 'bookinfo_snat' };
          f.set('data.json', Buffer.from(JSON.stringify(d)));
        }),
      }),
      /data\.json: digest mismatch/,
    ],
    [
      'a policy.wasm changed after signing',
      () => ({
        file: variant('wasm', (f) => {
          const w = Buffer.from(f.get('policy.wasm')!);
          w[w.length - 1]! ^= 1;
          f.set('policy.wasm', w);
        }),
      }),
      /policy\.wasm: digest mismatch/,
    ],
    [
      'a file added after signing',
      () => ({ file: variant('added', (f) => f.set('x/data.json', Buffer.from('{"a":1}'))) }),
      /x\/data\.json is not included in the bundle signature/,
    ],
    [
      'a signed file removed',
      () => ({ file: variant('removed', (f) => f.delete('egress_authz.rego')) }),
      /names files the bundle does not have: egress_authz\.rego/,
    ],
    [
      'two signatures',
      () => ({
        file: variant('two', (f) => {
          const s = JSON.parse(Buffer.from(f.get('.signatures.json')!).toString());
          s.signatures.push(s.signatures[0]);
          f.set('.signatures.json', Buffer.from(JSON.stringify(s)));
        }),
      }),
      /multiple JWTs/,
    ],
    ['a scope the signature does not carry', () => ({ file: signed, scope: 'write' }), /scope mismatch/],
  ])('%s', async (_name, make, message) => {
    const { file, key = rsa, scope } = make();
    const opa = opaVerifies(file, key, scope ? ['--scope', scope] : []);
    expect(opa.ok, 'opa refuses it too').toBe(false);
    await expect(
      loadPolicyBundle(readFileSync(file), { source: file, verification: verification(key, scope ? { scope } : {}) }),
    ).rejects.toThrow(message);
  });

  test('without a verification key, a signed bundle loads (as in OPA)', async () => {
    await expect(loadPolicyBundle(readFileSync(signed), { source: signed })).resolves.toBeDefined();
  });
});
