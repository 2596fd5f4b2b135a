// The XFCC parser against Envoy's grammar: hand-written cases, then generated headers written by an
// encoder that follows Envoy's docs (quote a value holding , ; = or ", escape " and \), parsed back.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseXfcc, xfccEvidence, MAX_XFCC_CHARS, type XfccElement } from '../../src/identity/xfcc.js';
import { FUZZ_RUNS } from '../fuzz/runs.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const APIGW = 'spiffe://cluster.local/ns/sm-apigw-a/sa/default';

describe('parseXfcc', () => {
  it("reads Envoy's documented example", () => {
    const header =
      'By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;' +
      'Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com';
    expect(parseXfcc(header)).toEqual({
      ok: true,
      value: [
        [
          { key: 'by', value: 'http://frontend.lyft.com' },
          { key: 'hash', value: '468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688' },
          { key: 'subject', value: '/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client' },
          { key: 'uri', value: 'http://testclient.lyft.com' },
        ],
      ],
    });
  });

  it('splits elements and pairs only outside quotes, and unescapes \\" and \\\\', () => {
    const r = parseXfcc('By=a;Subject="x,y;z=\\"q\\"\\\\";URI=u1, By=b;URI=u2');
    expect(r).toEqual({
      ok: true,
      value: [
        [
          { key: 'by', value: 'a' },
          { key: 'subject', value: 'x,y;z="q"\\' },
          { key: 'uri', value: 'u1' },
        ],
        [
          { key: 'by', value: 'b' },
          { key: 'uri', value: 'u2' },
        ],
      ],
    });
  });

  it('keeps an RFC 2253 escape (\\,) as written', () => {
    const r = parseXfcc('Subject="O=x\\,URI=spiffe://a/b,CN=evil";URI=spiffe://a/c');
    expect(r.ok && r.value[0]).toEqual([
      { key: 'subject', value: 'O=x\\,URI=spiffe://a/b,CN=evil' },
      { key: 'uri', value: 'spiffe://a/c' },
    ]);
  });

  it('lowercases keys', () => {
    expect(parseXfcc('uRi=x').ok && parseXfcc('uRi=x')).toEqual({ ok: true, value: [[{ key: 'uri', value: 'x' }]] });
  });

  const malformed = [
    '',
    'URI',
    '=x',
    'URI=x;',
    'URI=x,',
    ',URI=x',
    'URI=x;;By=y',
    'Subject="unterminated',
    'Subject="a"b;URI=x',
    'URI=a"b',
    'U RI=x',
    'Subject="a\\"',
  ];
  it.each(malformed)('refuses %j', (h) => {
    expect(parseXfcc(h).ok).toBe(false);
  });

  it('refuses a header above the size limit before parsing it', () => {
    expect(parseXfcc(`URI=${'a'.repeat(MAX_XFCC_CHARS)}`)).toEqual({
      ok: false,
      reason: `x-forwarded-client-cert is longer than ${MAX_XFCC_CHARS} characters`,
      code: 'malformed',
    });
  });
});

describe('xfccEvidence', () => {
  it('takes the URI and Cert of the only element', () => {
    expect(xfccEvidence(`By=spiffe://td/gw;Hash=1;Cert="%2D%2D";Subject="";URI=${BOOKINFO};DNS=a;DNS=b`)).toEqual({
      ok: true,
      value: { by: 'spiffe://td/gw', uri: BOOKINFO, certificatePem: '%2D%2D' },
    });
  });
  it('uses Chain when there is no Cert', () => {
    expect(xfccEvidence('Chain="%2D";URI=')).toEqual({ ok: true, value: { certificatePem: '%2D' } });
  });
  const denied: Array<[string, string]> = [
    [`URI=${APIGW},URI=${BOOKINFO}`, 'more than one element'],
    [`URI=${APIGW};URI=${BOOKINFO}`, 'more than one URI'],
    [`Cert="a";Cert="b";URI=${BOOKINFO}`, 'more than one cert pair'],
    [`By=a;By=b;URI=${BOOKINFO}`, 'more than one by pair'],
    ['Subject="CN=x";URI=', 'neither a URI nor a Cert'],
  ];
  it.each(denied)('denies %j', (h, reason) => {
    const r = xfccEvidence(h);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toContain(reason);
  });
});

// ------------------------------------------------------------------------------- generated headers

/** Envoy's documented writing rule, independent of the parser. */
function encodeValue(v: string, quote: boolean): string {
  if (!quote && !/[,;="\\]/.test(v) && v === v.trim() && v !== '') return v;
  return `"${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}
function encode(elements: XfccElement[], quoteAll: boolean[]): string {
  return elements
    .map((e, i) => e.map((p) => `${p.key}=${encodeValue(p.value, quoteAll[i % quoteAll.length] ?? false)}`).join(';'))
    .join(',');
}

const key = fc.constantFrom('by', 'hash', 'cert', 'chain', 'subject', 'uri', 'dns', 'x-other');
// Values full of the characters that matter: separators, quotes, backslashes, spaces, look-alike pairs.
const value = fc.oneof(
  fc.string({ unit: fc.constantFrom('a', 'Z', '0', ',', ';', '=', '"', '\\', ' ', '/', ':', 'URI=', 'spiffe://x/y') }),
  fc.string(),
  fc.constantFrom(BOOKINFO, `CN=evil,O=x\\,URI=${BOOKINFO}`, `a",URI=${BOOKINFO}`),
);
const element = fc.array(fc.record({ key, value }), { minLength: 1, maxLength: 6 });

describe('parseXfcc over generated headers', () => {
  it('parses back exactly what the encoder wrote (values with any characters)', () => {
    fc.assert(
      fc.property(
        fc.array(element, { minLength: 1, maxLength: 4 }),
        fc.array(fc.boolean(), { minLength: 1 }),
        (els, q) => {
          const header = encode(els, q);
          expect(parseXfcc(header)).toEqual({ ok: true, value: els });
        },
      ),
      { numRuns: FUZZ_RUNS },
    );
  });

  it('a quoted Subject never yields a URI, whatever it says', () => {
    fc.assert(
      fc.property(value, (subject) => {
        const r = xfccEvidence(`Hash=1;Subject=${encodeValue(subject, true)};URI=${APIGW}`);
        expect(r).toEqual({ ok: true, value: { uri: APIGW } });
      }),
      { numRuns: FUZZ_RUNS },
    );
  });

  it('never throws on arbitrary or damaged text, and never names an identity absent from a URI pair', () => {
    const damaged = fc
      .tuple(fc.array(element, { minLength: 1, maxLength: 3 }), fc.nat(), fc.string({ maxLength: 4 }))
      .map(([els, at, junk]) => {
        const h = encode(els, [false]);
        const i = at % (h.length + 1);
        return h.slice(0, i) + junk + h.slice(i);
      });
    fc.assert(
      fc.property(fc.oneof(fc.string(), damaged), (h) => {
        const r = xfccEvidence(h);
        if (r.ok && r.value.uri !== undefined) {
          const parsed = parseXfcc(h);
          expect(parsed.ok && parsed.value.length).toBe(1);
          expect(parsed.ok && parsed.value[0]!.filter((p) => p.key === 'uri').map((p) => p.value)).toContain(
            r.value.uri,
          );
        }
      }),
      { numRuns: FUZZ_RUNS },
    );
  });
});
