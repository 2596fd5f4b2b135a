// Differential fuzzing of the Check path's X.509-SVID reader (src/identity/svid-der.ts, with its
// fallback) against the reference validator (pkijs object model): every certificate shape the suite
// knows, made now by @peculiar/x509 and by openssl, then damaged (bit flips, byte edits near the
// extensions the rules read, truncation, inserted and deleted bytes, length-byte edits) and re-wrapped
// as PEM (line lengths, whitespace, chains, URL encoding). Both must give the same Result every time:
// same verdict, same SPIFFE ID, same reason, same validity period, serial and fingerprint.
// `npm test` runs a few thousand cases; `npm run fuzz` (FUZZ_RUNS=20000) a few hundred thousand.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fastChainShape, UNSURE } from '../../src/identity/svid-der.js';
import {
  clearX509SvidCache,
  parsePemBlocks,
  parseX509Svid,
  parseX509SvidPem,
  parseX509SvidReference,
} from '../../src/identity/x509-svid.js';
// @ts-expect-error plain ESM module without type declarations
import { makePki } from '../../bench/pki.mjs';
import { createCa, EKU, issue, KeyUsage, workloadSvid } from '../support/pki.js';
import { FUZZ_RUNS } from './runs.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/default';
const DAY = 86_400_000;
const NOW = new Date();
// The reference validator costs milliseconds a chain on a loaded machine: allow for it.
const TIMEOUT_MS = Math.max(180_000, FUZZ_RUNS * 60);

interface Shape {
  name: string;
  chain: Uint8Array[];
}

const shapes: Shape[] = [];
let tmp: string;

/**
 * Certificates as openssl makes them (the bench's PKI: EC, a subject, critical SAN), and an RSA
 * self-signed SVID (NULL algorithm parameters) with an email and an IP SAN around the URI.
 */
async function opensslShapes(): Promise<Shape[]> {
  const pki = await makePki(tmp);
  const der = (pemText: string) => {
    const blocks = parsePemBlocks(pemText);
    if (!blocks.ok) throw new Error(blocks.reason);
    return blocks.value[0]!;
  };
  const ca = der(readFileSync(pki.caFile, 'utf8'));
  const gateway = der(readFileSync(pki.server.certFile, 'utf8'));
  const rsaArgs = ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'rsa.key', '-out', 'rsa.pem'];
  const rsaExt = [
    'basicConstraints=critical,CA:FALSE,pathlen:0',
    'keyUsage=critical,digitalSignature',
    `subjectAltName=critical,email:ops@example.org,URI:${BOOKINFO},IP:10.0.0.1`,
  ];
  execFileSync(
    'openssl',
    [...rsaArgs, '-days', '2', '-subj', '/O=cluster.local/OU=workloads', ...rsaExt.flatMap((e) => ['-addext', e])],
    {
      cwd: tmp,
      stdio: 'pipe',
    },
  );
  return [
    { name: 'openssl EC leaf + CA', chain: [der(pki.clientCertPem), ca] },
    { name: 'openssl gateway leaf', chain: [gateway] },
    { name: 'openssl RSA leaf', chain: [der(readFileSync(join(tmp, 'rsa.pem'), 'utf8'))] },
    { name: 'openssl CA alone (leaf position)', chain: [ca] },
  ];
}

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'svid-diff-'));
  const ca = await createCa();
  const root = await createCa('Example Root CA');
  const intermediate = await createCa('Example Intermediate CA', { issuer: root });
  const other = await workloadSvid(ca, 'spiffe://cluster.local/ns/other/sa/x');
  const leaf = async (name: string, make: Promise<{ der: Uint8Array }>, ...chain: Uint8Array[]) =>
    shapes.push({ name, chain: [(await make).der, ...chain] });
  await leaf('istio SVID', workloadSvid(ca, BOOKINFO));
  await leaf('istio SVID + CA', workloadSvid(ca, BOOKINFO), ca.der);
  await leaf('leaf, intermediate, root', workloadSvid(intermediate, BOOKINFO), intermediate.der, root.der);
  await leaf('non-CA in signing position', workloadSvid(ca, BOOKINFO), other.der);
  await leaf('DNS before URI', workloadSvid(ca, BOOKINFO, { dns: ['details.bookinfo.svc'] }));
  await leaf('DNS after URI', workloadSvid(ca, BOOKINFO, { dns: ['details.bookinfo.svc'], dnsAfterUris: true }));
  await leaf('no EKU', workloadSvid(ca, BOOKINFO, { extKeyUsage: null }));
  await leaf(
    'subject, non-critical SAN',
    workloadSvid(ca, BOOKINFO, { subject: 'CN=details, O=Example Org', sanCritical: false }),
  );
  await leaf('two URI SANs', issue({ issuer: ca, uris: [BOOKINFO, 'spiffe://cluster.local/ns/other/sa/x'] }));
  await leaf('no SAN', issue({ issuer: ca, subject: 'CN=bookinfo' }));
  await leaf('DNS SAN only', issue({ issuer: ca, dns: ['bookinfo.example.com'] }));
  await leaf('CA leaf', workloadSvid(ca, BOOKINFO, { ca: true }));
  await leaf('keyCertSign', workloadSvid(ca, BOOKINFO, { keyUsage: KeyUsage.digitalSignature | KeyUsage.keyCertSign }));
  await leaf('cRLSign', workloadSvid(ca, BOOKINFO, { keyUsage: KeyUsage.digitalSignature | KeyUsage.cRLSign }));
  await leaf('no digitalSignature', workloadSvid(ca, BOOKINFO, { keyUsage: KeyUsage.keyEncipherment }));
  await leaf('no key usage', workloadSvid(ca, BOOKINFO, { keyUsage: null }));
  await leaf('non-critical key usage', workloadSvid(ca, BOOKINFO, { keyUsageCritical: false }));
  await leaf('EKU without clientAuth', workloadSvid(ca, BOOKINFO, { extKeyUsage: [EKU.serverAuth] }));
  await leaf('root SPIFFE ID', workloadSvid(ca, 'spiffe://cluster.local'));
  await leaf('https URI', workloadSvid(ca, 'https://cluster.local/ns/bookinfo/sa/default'));
  await leaf('uppercase trust domain', workloadSvid(ca, 'spiffe://Cluster.local/ns/bookinfo/sa/default'));
  await leaf('dot segment', workloadSvid(ca, 'spiffe://cluster.local/ns/bookinfo/../x'));
  await leaf('empty subject, non-critical SAN', workloadSvid(ca, BOOKINFO, { sanCritical: false }));
  await leaf(
    'expired',
    workloadSvid(ca, BOOKINFO, { notBefore: new Date(Date.now() - 2 * DAY), notAfter: new Date(Date.now() - DAY) }),
  );
  await leaf(
    'not yet valid',
    workloadSvid(ca, BOOKINFO, { notBefore: new Date(Date.now() + DAY), notAfter: new Date(Date.now() + 2 * DAY) }),
  );
  await leaf(
    'after 2050 (GeneralizedTime)',
    workloadSvid(ca, BOOKINFO, {
      notBefore: new Date('2049-12-31T00:00:00Z'),
      notAfter: new Date('2051-06-01T00:00:00Z'),
    }),
  );
  shapes.push({ name: 'CA alone (leaf position)', chain: [ca.der] });
  shapes.push(...(await opensslShapes()));
}, 120_000);

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Fast path with fallback against the reference: the whole Result must be the same. */
function agree(chain: Uint8Array[], now = NOW): void {
  const fast = parseX509Svid(chain, now);
  const reference = parseX509SvidReference(chain, now);
  expect(fast).toEqual(reference);
}

interface Layout {
  /** offsets of every TLV's length byte */
  lengths: number[];
  /** [tag, content start, content end] of every primitive */
  primitives: Array<[number, number, number]>;
}

/** From a lenient walk of the original (undamaged) DER: where the structure is. */
function layout(der: Uint8Array): Layout {
  const lengths: number[] = [];
  const primitives: Array<[number, number, number]> = [];
  const walk = (pos: number, end: number, depth: number) => {
    while (pos + 2 <= end && depth < 12) {
      const tag = der[pos]!;
      let len = der[pos + 1]!;
      lengths.push(pos + 1);
      let start = pos + 2;
      if (len & 0x80) {
        const n = len & 0x7f;
        len = 0;
        for (let i = 0; i < n; i++) len = len * 256 + der[start + i]!;
        start += n;
      }
      if (start + len > end) return;
      if (tag & 0x20) walk(start, start + len, depth + 1);
      // Extension values are OCTET STRINGs holding DER: walk into those too.
      else if (tag === 0x04 && (der[start] === 0x30 || der[start] === 0x03)) walk(start, start + len, depth + 1);
      else primitives.push([tag, start, start + len]);
      pos = start + len;
    }
  };
  walk(0, der.length, 0);
  return { lengths, primitives };
}

/** Where the rules look: the OIDs of SAN, key usage, basic constraints, EKU and the validity times. */
function hotSpots(der: Uint8Array): number[] {
  const b = Buffer.from(der);
  const out: number[] = [];
  for (const pattern of ['0603551d11', '0603551d0f', '0603551d13', '0603551d25', '170d', '180f', '3000', '0101ff']) {
    for (let at = b.indexOf(pattern, 0, 'hex'); at >= 0; at = b.indexOf(pattern, at + 1, 'hex')) out.push(at);
  }
  return out;
}

// Bytes that sit on the readers' decision boundaries (booleans, tags, unused bits, length forms, digits).
const interesting = fc.oneof(
  fc.constantFrom(0x00, 0x01, 0x02, 0x03, 0x04, 0x06, 0x07, 0x08, 0x7f, 0x80, 0x81, 0xff, 0x30, 0x31, 0x86, 0x82),
  fc.constantFrom(0x30, 0x31, 0x32, 0x35, 0x39, 0x5a, 0x2b, 0x2e),
  fc.integer({ min: 0, max: 255 }),
);
const twoDigits = (max: number) => fc.integer({ min: 0, max }).map((n) => String(n).padStart(2, '0'));
/** Times near and past the edges: year 49/50, month 0/12/13, day 0/31/32, hour 24, second 60. */
const timeText = fc
  .tuple(
    fc.oneof(fc.constantFrom('49', '50', '99', '00'), twoDigits(99)),
    twoDigits(13),
    twoDigits(32),
    twoDigits(24),
    twoDigits(60),
    twoDigits(60),
  )
  .map((parts) => parts.join(''));

const damage = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('primitive' as const),
      small: fc.boolean(),
      which: fc.nat(),
      offset: fc.nat(),
      byte: interesting,
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('time' as const),
      which: fc.nat(),
      text: timeText,
      century: fc.constantFrom('19', '20', '00', '99'),
    }),
  },
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({
    kind: fc.constant('near' as const),
    spot: fc.nat(),
    offset: fc.integer({ min: 0, max: 40 }),
    byte: interesting,
  }),
  fc.record({
    kind: fc.constant('length' as const),
    which: fc.nat(),
    edit: fc.constantFrom(-2, -1, 1, 2, 0x80, 0x81, 0x82, 0x00, 0xff),
  }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 3 }) }),
);
type Damage = typeof damage extends fc.Arbitrary<infer T> ? T : never;

function applyDamage(original: Uint8Array, edits: Damage[]): Uint8Array {
  const { lengths, primitives } = layout(original);
  const times = primitives.filter(([tag]) => tag === 0x17 || tag === 0x18);
  // Booleans, versions, key usage bits, short strings: where one byte changes a rule's outcome.
  const small = primitives.filter(([, start, end]) => end - start <= 4);
  const spots = hotSpots(original);
  let der = new Uint8Array(original);
  for (const e of edits) {
    if (der.length === 0) break;
    const at = (n: number) => n % der.length;
    switch (e.kind) {
      case 'flip':
        der[at(e.at)]! ^= 1 << e.bit;
        break;
      case 'set':
        der[at(e.at)] = e.byte;
        break;
      case 'primitive': {
        const pool = e.small && small.length > 0 ? small : primitives;
        const p = pool[e.which % pool.length];
        if (p && p[2] > p[1]) der[at(p[1] + (e.offset % (p[2] - p[1])))] = e.byte;
        break;
      }
      case 'time': {
        const t = times[e.which % times.length];
        if (!t) break;
        const digits = (t[0] === 0x18 ? e.century : '') + e.text;
        const text = (digits + 'Z').slice(0, t[2] - t[1]);
        if (t[2] <= der.length) der.set(Buffer.from(text, 'latin1'), t[1]);
        break;
      }
      case 'near':
        if (spots.length > 0) der[at(spots[e.spot % spots.length]! + e.offset)] = e.byte;
        break;
      case 'length': {
        const i = at(lengths[e.which % lengths.length] ?? 0);
        der[i] = e.edit >= 0x80 || e.edit === 0 || e.edit === 0xff ? e.edit : (der[i]! + e.edit) & 0xff;
        break;
      }
      case 'truncate':
        der = der.slice(0, at(e.at));
        break;
      case 'insert': {
        const i = e.at % (der.length + 1);
        der = new Uint8Array([...der.subarray(0, i), e.byte, ...der.subarray(i)]);
        break;
      }
      case 'delete': {
        const i = at(e.at);
        der = new Uint8Array([...der.subarray(0, i), ...der.subarray(i + e.count)]);
        break;
      }
    }
  }
  return der;
}

describe('differential: fast X.509-SVID reader vs the pkijs reference', () => {
  it('reads every undamaged shape itself (no fallback) and agrees on it, at every point of the validity period', () => {
    expect(shapes.length).toBeGreaterThan(25);
    for (const { name, chain } of shapes) {
      expect(fastChainShape(chain), name).not.toBe(UNSURE);
      for (const now of [NOW, new Date(0), new Date('2050-06-01T00:00:00Z'), new Date('2100-01-01T00:00:00Z')]) {
        agree(chain, now);
      }
    }
  });

  it(
    'damaged DER in any position of the chain: same verdict, SPIFFE ID and reason',
    () => {
      fc.assert(
        fc.property(
          fc.nat(),
          fc.nat(),
          fc.array(damage, { minLength: 1, maxLength: 3 }),
          (shapeIndex, position, edits) => {
            const { chain } = shapes[shapeIndex % shapes.length]!;
            const i = position % chain.length;
            const damaged = chain.map((der, j) => (j === i ? applyDamage(der, edits) : der));
            agree(damaged);
          },
        ),
        { numRuns: FUZZ_RUNS * 4 },
      );
    },
    TIMEOUT_MS,
  );

  it(
    'certificates spliced into chains of up to four: same Result',
    () => {
      const der = fc.nat().map((n) => shapes[n % shapes.length]!.chain[0]!);
      fc.assert(
        fc.property(fc.array(der, { minLength: 1, maxLength: 4 }), (chain) => agree(chain)),
        { numRuns: FUZZ_RUNS * 2 },
      );
    },
    TIMEOUT_MS,
  );

  const pem = (der: Uint8Array, width: number, eol: string) => {
    const body = Buffer.from(der).toString('base64');
    const lines = body.match(new RegExp(`.{1,${width}}`, 'g')) ?? [];
    return `-----BEGIN CERTIFICATE-----${eol}${lines.join(eol)}${eol}-----END CERTIFICATE-----${eol}`;
  };
  const wrapped = fc.record({
    shape: fc.nat(),
    width: fc.integer({ min: 1, max: 120 }),
    eol: fc.constantFrom('\n', '\r\n', '\n\n', ' \n', '\t\n'),
    lead: fc.constantFrom('', '\n', '  ', '\r\n'),
    between: fc.constantFrom('', '\n', ' \n ', 'x'),
    encode: fc.constantFrom('none', 'component', 'envoy', 'partial'),
    damage: fc.option(fc.tuple(fc.nat(), fc.string({ minLength: 1, maxLength: 3 })), { freq: 3 }),
    derDamage: fc.option(fc.array(damage, { minLength: 1, maxLength: 2 }), { freq: 3 }),
  });

  it(
    're-wrapped PEM (line lengths, whitespace, chains, URL encoding as Envoy sends, damage): same Result',
    () => {
      fc.assert(
        fc.property(wrapped, (w) => {
          const { chain } = shapes[w.shape % shapes.length]!;
          const ders = w.derDamage ? [applyDamage(chain[0]!, w.derDamage), ...chain.slice(1)] : chain;
          let text = w.lead + ders.map((der) => pem(der, w.width, w.eol)).join(w.between);
          if (w.damage) {
            const [at, s] = w.damage;
            const i = at % text.length;
            text = text.slice(0, i) + s + text.slice(i + s.length);
          }
          if (w.encode === 'component') text = encodeURIComponent(text);
          // Envoy's percent-encoding leaves unreserved characters and '/' as they are.
          if (w.encode === 'envoy') text = text.replace(/[^A-Za-z0-9\-._~/]/g, (c) => encodeURIComponent(c));
          if (w.encode === 'partial') text = text.replace(/\n/g, '%0A');
          clearX509SvidCache();
          const fast = parseX509SvidPem(text, NOW);
          const cached = parseX509SvidPem(text, NOW);
          const blocks = parsePemBlocks(text);
          const reference = blocks.ok ? parseX509SvidReference(blocks.value, NOW) : blocks;
          expect(fast).toEqual(reference);
          expect(cached).toEqual(reference);
        }),
        { numRuns: FUZZ_RUNS * 5 },
      );
    },
    TIMEOUT_MS,
  );
});
