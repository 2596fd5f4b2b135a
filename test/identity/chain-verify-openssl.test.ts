// Differential check against an independent verifier: `openssl verify` (the openssl CLI, its own path
// building) must reach the same verdict as verifyChain on generated and damaged chains, each verified
// against the bundle of the leaf's trust domain only.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyChain } from '../../src/identity/chain-verify.js';
import { parsePemBlocks } from '../../src/identity/x509-svid.js';
import { parseX509Bundle, X509BundleSet } from '../../src/identity/x509-bundle.js';
import { createCa, issue, workloadSvid, type CertAuthority } from '../support/pki.js';

const run = promisify(execFile);
const DAY = 86_400_000;
const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
let dir: string;
let root: CertAuthority;
let set: X509BundleSet;
const cases: { name: string; leaf: string; intermediates: string[] }[] = [];

/** The leaf with one byte of its signature changed: still DER, no longer signed by its issuer. */
function damaged(pem: string): string {
  const blocks = parsePemBlocks(pem);
  if (!blocks.ok) throw new Error(blocks.reason);
  const der = Buffer.from(blocks.value[0]!);
  der[der.length - 5]! ^= 0x01;
  return `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE-----\n`;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'chain-openssl-'));
  root = await createCa('cluster.local root');
  const inter = await createCa('cluster.local intermediate', { issuer: root });
  const deep = await createCa('cluster.local deep', { issuer: inter });
  const expired = await createCa('cluster.local expired', {
    issuer: root,
    notBefore: new Date(Date.now() - 10 * DAY),
    notAfter: new Date(Date.now() - DAY),
  });
  const strict = await createCa('cluster.local strict', { issuer: root, pathLength: 0 });
  const underStrict = await createCa('cluster.local under strict', { issuer: strict });
  const otherRoot = await createCa('partner.example root');
  const otherInter = await createCa('cluster.local intermediate', { issuer: otherRoot });
  const viaInter = (await workloadSvid(inter, BOOKINFO)).certPem;
  cases.push(
    { name: 'leaf of the root', leaf: (await workloadSvid(root, BOOKINFO)).certPem, intermediates: [] },
    { name: 'leaf + intermediate', leaf: viaInter, intermediates: [inter.certPem] },
    {
      name: 'two intermediates, reversed',
      leaf: (await workloadSvid(deep, BOOKINFO)).certPem,
      intermediates: [inter.certPem, deep.certPem],
    },
    { name: 'missing intermediate', leaf: viaInter, intermediates: [] },
    {
      name: 'expired intermediate',
      leaf: (await workloadSvid(expired, BOOKINFO)).certPem,
      intermediates: [expired.certPem],
    },
    {
      name: 'path length exceeded',
      leaf: (await workloadSvid(underStrict, BOOKINFO)).certPem,
      intermediates: [underStrict.certPem, strict.certPem],
    },
    { name: "another domain's CA", leaf: (await workloadSvid(otherRoot, BOOKINFO)).certPem, intermediates: [] },
    {
      name: 'look-alike intermediate name',
      leaf: (await workloadSvid(otherInter, BOOKINFO)).certPem,
      intermediates: [otherInter.certPem],
    },
    { name: 'self-signed leaf', leaf: (await issue({ uris: [BOOKINFO] })).certPem, intermediates: [] },
    { name: 'damaged leaf signature', leaf: damaged(viaInter), intermediates: [inter.certPem] },
    { name: 'damaged intermediate signature', leaf: viaInter, intermediates: [damaged(inter.certPem)] },
  );
  const b = parseX509Bundle('cluster.local', root.certPem);
  if (!b.ok) throw new Error(b.reason);
  set = new X509BundleSet([b.value]);
  writeFileSync(join(dir, 'root.pem'), root.certPem);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function openssl(leaf: string, intermediates: string[]): Promise<boolean> {
  writeFileSync(join(dir, 'leaf.pem'), leaf);
  writeFileSync(join(dir, 'untrusted.pem'), intermediates.join('\n'));
  const args = ['verify', '-CAfile', join(dir, 'root.pem')];
  if (intermediates.length > 0) args.push('-untrusted', join(dir, 'untrusted.pem'));
  try {
    await run('openssl', [...args, join(dir, 'leaf.pem')]);
    return true;
  } catch {
    return false;
  }
}

describe('verifyChain agrees with openssl verify', () => {
  it('on every generated and damaged chain', async () => {
    const verdicts: string[] = [];
    for (const c of cases) {
      const blocks = parsePemBlocks(c.leaf + c.intermediates.join(''));
      const ours = blocks.ok && verifyChain(blocks.value, 'cluster.local', set, new Date()).ok;
      verdicts.push(`${c.name}: ours ${ours}, openssl ${await openssl(c.leaf, c.intermediates)}`);
    }
    // The first three verify, everything else is refused, by both.
    expect(verdicts).toEqual(cases.map((c, i) => `${c.name}: ours ${i < 3}, openssl ${i < 3}`));
  });
});
