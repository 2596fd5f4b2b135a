// Property-based fuzzing of the identity step, beyond the parser tests in test/identity (which throw
// random text at both parsers): here the inputs are *near misses* of valid identities — mutated Istio
// SPIFFE IDs, real SVIDs whose URI SAN bytes are rewritten in place, and re-wrapped or damaged PEM —
// and the property is the security one: whatever is accepted is exactly a valid identity, never a
// look-alike.
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { resolveIdentity } from '../../src/identity/identity.js';
import { parseSpiffeId } from '../../src/identity/spiffe-id.js';
import { parsePemBlocks, parseX509Svid, parseX509SvidPem } from '../../src/identity/x509-svid.js';
import { createCa, workloadSvid, type IssuedCert } from '../support/pki.js';
import { FUZZ_RUNS } from './runs.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const NOW = new Date();

/** The grammar of the SPIFFE ID standard, written independently of src/spiffe-id.ts. */
function isValidSpiffeId(text: string): boolean {
  const m = /^spiffe:\/\/([a-z0-9._-]+)((?:\/[A-Za-z0-9._-]+)*)$/.exec(text);
  if (!m || Buffer.byteLength(text) > 2048 || (m[1] ?? '').length > 255) return false;
  return !(m[2] ?? '').split('/').some((s) => s === '.' || s === '..');
}

/** Edits that keep an ID looking like the original: the shapes of real confusion attacks. */
const mutation = fc.oneof(
  fc.record({
    kind: fc.constant('insert' as const),
    at: fc.nat(),
    text: fc.constantFrom(
      '/',
      '-evil',
      '.',
      '..',
      '%2F',
      '%2f',
      ' ',
      '\u0000',
      'é',
      '/./',
      '//',
      ':443',
      '@',
      '?x',
      '#x',
      'B',
      '\u0430',
    ),
  }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 4 }) }),
  fc.record({ kind: fc.constant('replace' as const), at: fc.nat(), text: fc.string({ minLength: 1, maxLength: 2 }) }),
  fc.record({ kind: fc.constant('upper' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 8 }) }),
);
type Mutation = typeof mutation extends fc.Arbitrary<infer T> ? T : never;

function mutate(text: string, edits: Mutation[]): string {
  let s = text;
  for (const e of edits) {
    const at = e.at % (s.length + 1);
    if (e.kind === 'insert') s = s.slice(0, at) + e.text + s.slice(at);
    else if (e.kind === 'delete') s = s.slice(0, at) + s.slice(at + e.count);
    else if (e.kind === 'replace') s = s.slice(0, at) + e.text + s.slice(at + e.text.length);
    else s = s.slice(0, at) + s.slice(at, at + e.count).toUpperCase() + s.slice(at + e.count);
  }
  return s;
}

const seedIds = fc.constantFrom(
  BOOKINFO,
  'spiffe://cluster.local/ns/bookinfo/sa/default',
  'spiffe://cluster.local/ns/sm-apigw-a/sa/nettools',
  'spiffe://cluster.local',
);
const mutatedId = fc
  .tuple(seedIds, fc.array(mutation, { minLength: 1, maxLength: 3 }))
  .map(([id, edits]) => mutate(id, edits));

describe('fuzz: SPIFFE IDs near valid ones', () => {
  it('a mutated ID is accepted only when it is valid, and then names exactly itself and its Istio parts', () => {
    fc.assert(
      fc.property(mutatedId, (text) => {
        const parsed = parseSpiffeId(text);
        expect(parsed.ok).toBe(isValidSpiffeId(text));
        const identity = resolveIdentity({ principal: text }, NOW);
        // A trust domain's root ID is a valid SPIFFE ID but names no workload.
        expect(identity.ok).toBe(parsed.ok && parsed.value.path !== '');
        if (identity.ok) {
          expect(identity.value.spiffe_id).toBe(text);
          // The namespace is only ever the exact segment after /ns/ in a four-segment Istio path.
          const istio = /^spiffe:\/\/[^/]+\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(text);
          expect(identity.value.namespace).toBe(istio?.[1]);
          expect(identity.value.service_account).toBe(istio?.[2]);
        }
      }),
      { numRuns: FUZZ_RUNS * 5 },
    );
  });
});

describe('fuzz: X.509-SVIDs near valid ones', () => {
  let svid: IssuedCert;
  let uriAt: number;

  beforeAll(async () => {
    const ca = await createCa();
    svid = await workloadSvid(ca, BOOKINFO);
    uriAt = Buffer.from(svid.der).indexOf(Buffer.from(BOOKINFO));
    expect(uriAt).toBeGreaterThan(0);
  });

  // Same-length rewrites keep the DER well-formed, so the parser reaches the SAN checks every time.
  const sameLengthUri = fc.oneof(
    fc.string({
      unit: fc.constantFrom('a', 'b', '/', '.', '-', '_', ':', 'S', '%', '\u0000', '\u00ff'),
      minLength: BOOKINFO.length,
      maxLength: BOOKINFO.length,
    }),
    fc
      .tuple(fc.array(mutation, { minLength: 1, maxLength: 3 }))
      .map(([edits]) => mutate(BOOKINFO, edits).padEnd(BOOKINFO.length, 'x').slice(0, BOOKINFO.length)),
  );

  it('an SVID whose URI SAN is rewritten in place yields exactly that URI, and only when it is a valid SPIFFE ID', () => {
    fc.assert(
      fc.property(sameLengthUri, (uri) => {
        const der = Buffer.from(svid.der);
        Buffer.from(uri, 'latin1').copy(der, uriAt);
        const result = parseX509Svid([new Uint8Array(der)], NOW);
        const written = der.subarray(uriAt, uriAt + BOOKINFO.length).toString('latin1');
        if (result.ok) {
          expect(result.value.spiffeId.uri).toBe(written);
          expect(isValidSpiffeId(written)).toBe(true);
        } else {
          expect(result.reason).toMatch(/^[\x20-\x7e]+$/);
        }
        if (isValidSpiffeId(written)) expect(result.ok).toBe(true);
      }),
      { numRuns: FUZZ_RUNS * 2 },
    );
  });

  const base64Body = () => svid.certPem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '');
  const wrappedPem = fc.record({
    width: fc.integer({ min: 1, max: 200 }),
    eol: fc.constantFrom('\n', '\r\n', '\n\n', ' \n', '\t\n'),
    lead: fc.constantFrom('', '\n', '  ', '\r\n'),
    trail: fc.constantFrom('', '\n', '  \n', 'junk', '-----END CERTIFICATE-----'),
    urlEncode: fc.boolean(),
    damage: fc.option(fc.tuple(fc.nat(), fc.string({ minLength: 1, maxLength: 3 })), { freq: 3 }),
  });

  it('re-wrapped, URL-encoded or damaged PEM: accepted only with a valid SPIFFE ID the leaf really carries', () => {
    fc.assert(
      fc.property(wrappedPem, (p) => {
        const body = base64Body();
        const lines = body.match(new RegExp(`.{1,${p.width}}`, 'g')) ?? [];
        let pem = `${p.lead}-----BEGIN CERTIFICATE-----${p.eol}${lines.join(p.eol)}${p.eol}-----END CERTIFICATE-----${p.eol}${p.trail}`;
        if (p.damage) {
          const [at, text] = p.damage;
          const i = at % pem.length;
          pem = pem.slice(0, i) + text + pem.slice(i + text.length);
        }
        if (p.urlEncode) pem = encodeURIComponent(pem);
        const blocks = parsePemBlocks(pem);
        const result = parseX509SvidPem(pem, NOW);
        if (result.ok) {
          // A damaged byte elsewhere (key, signature: not verified here, by design) may still parse; the
          // identity is then still a valid SPIFFE ID written in the leaf, and unchanged unless the damage
          // hit the URI itself.
          const uri = result.value.spiffeId.uri;
          expect(isValidSpiffeId(uri)).toBe(true);
          expect(blocks.ok && Buffer.from(blocks.value[0]!).includes(Buffer.from(uri))).toBe(true);
          if (!p.damage) expect(uri).toBe(BOOKINFO);
        }
        // Undamaged, the certificate is accepted however it is wrapped (the trailing END line alone is
        // text outside a block, refused like any other).
        if (!p.damage && p.trail !== 'junk' && p.trail !== '-----END CERTIFICATE-----') expect(result.ok).toBe(true);
      }),
      { numRuns: FUZZ_RUNS * 2 },
    );
  });
});
