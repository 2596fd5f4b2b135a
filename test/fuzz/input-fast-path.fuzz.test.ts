// Differential test of the input document's fast paths (src/decision/input.ts) against what they
// replaced: parsePathAndQuery's plain-path reader against the WHATWG URL parser
// (parsePathAndQueryReference), requestHeaders' key test against Object.keys, parseDestination against
// the shape it had when it copied splitHostPort's answer (no
// `port: undefined` key). Generated and damaged paths, headers and hosts near the
// ones Envoy sends; both must give the same answer (or throw the same way).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  parseDestination,
  parsePathAndQuery,
  parsePathAndQueryReference,
  requestHeaders,
  type HttpRequest,
} from '../../src/decision/input.js';
import { FUZZ_RUNS } from './runs.js';

function outcome<T>(f: () => T): { value: T } | { threw: string } {
  try {
    return { value: f() };
  } catch (e) {
    return { threw: (e as Error).constructor.name };
  }
}

/** Path text from the characters the parsers treat differently, around real request paths. */
const pathChar = fc.constantFrom(
  ...'abcXYZ019-._~!$&\'()*+,;=:@/?#%[]{}|^`"<> \\\t\n\r\u0000\u007fé€'.split(''),
  '%2e',
  '%2E',
  '%2F',
  '%zz',
  '%e9',
  '..',
  './',
  '//',
  '__proto__',
  'constructor',
);
const seeds = fc.constantFrom(
  '/api/v1/orders',
  '/api/v1/orders?limit=10&offset=20&limit=',
  '/',
  '',
  '/a/b/',
  '/.well-known/x',
  '/a/../b',
  '//evil.example/x',
  '/search?q=a+b&&x&=y&z==',
  '*',
  'relative/path',
);
const path = fc.oneof(
  fc.string({ unit: pathChar, maxLength: 24 }).map((s) => `/${s}`),
  fc.string({ unit: pathChar, maxLength: 24 }),
  fc
    .tuple(
      seeds,
      fc.array(fc.tuple(fc.nat(), fc.string({ unit: pathChar, maxLength: 3 }), fc.nat(2)), { maxLength: 3 }),
    )
    .map(([seed, edits]) =>
      edits.reduce<string>((s, [at, text, cut]) => {
        const i = at % (s.length + 1);
        return s.slice(0, i) + text + s.slice(i + cut);
      }, seed),
    ),
);

// The functions as they were, for the properties below.
function requestHeadersReference(http: HttpRequest): Record<string, string> {
  if (http.headers && Object.keys(http.headers).length > 0) return http.headers;
  const out: Record<string, string> = {};
  for (const h of http.headerMap?.headers ?? []) {
    if (!h.key) continue;
    out[h.key.toLowerCase()] = h.value ?? (h.rawValue ? Buffer.from(h.rawValue).toString('utf8') : '');
  }
  return out;
}

describe('input document fast paths against the reference', () => {
  it('parsed_path and parsed_query: the same as the URL parser gives, for plain, odd and damaged paths', () => {
    fc.assert(
      fc.property(path, (p) => {
        expect(outcome(() => parsePathAndQuery(p))).toEqual(outcome(() => parsePathAndQueryReference(p)));
      }),
      { numRuns: FUZZ_RUNS * 50 },
    );
  });

  it('request headers: headers when it has an own key, else header_map (inherited keys do not count)', () => {
    const name = fc.constantFrom('x-request-id', 'Content-Type', ':path', '', 'toString');
    const headers = fc.oneof(
      fc.constant(undefined),
      fc.dictionary(name, fc.string({ maxLength: 4 }), { maxKeys: 3 }),
      fc.constant(Object.create({ inherited: 'x' }) as Record<string, string>),
    );
    const headerMap = fc.option(
      fc.record({
        headers: fc.array(
          fc.record(
            { key: name, value: fc.string({ maxLength: 4 }), rawValue: fc.constant(Buffer.from('raw')) },
            { requiredKeys: [] },
          ),
          { maxLength: 3 },
        ),
      }),
      { nil: undefined },
    );
    fc.assert(
      fc.property(headers, headerMap, (h, m) => {
        const http: HttpRequest = { headers: h, headerMap: m };
        expect(requestHeaders(http)).toEqual(requestHeadersReference(http));
        expect(requestHeaders(http) === http.headers).toBe(requestHeadersReference(http) === http.headers);
      }),
      { numRuns: FUZZ_RUNS * 5 },
    );
  });

  it('destination: the same host and port, and a port key only when there is a port', () => {
    const host = fc.string({ unit: fc.constantFrom(...'aZ09.-:[]% '.split('')), maxLength: 20 });
    fc.assert(
      fc.property(host, (h) => {
        const d = parseDestination(h);
        expect(Object.keys(d)).toEqual(d.port === undefined ? ['host'] : ['host', 'port']);
        expect(typeof d.host).toBe('string');
        if (d.port !== undefined) expect(Number.isInteger(d.port) && d.port >= 1 && d.port <= 65535).toBe(true);
      }),
      { numRuns: FUZZ_RUNS * 5 },
    );
  });
});
