import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_SPIFFE_ID_BYTES, MAX_TRUST_DOMAIN_BYTES, parseSpiffeId } from '../../src/identity/spiffe-id.js';

const TD_CHARSET =
  'invalid SPIFFE ID: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores';
const PATH_CHARSET =
  'invalid SPIFFE ID: path segment characters are limited to letters, numbers, dots, dashes, and underscores';

describe('parseSpiffeId: valid IDs', () => {
  const valid: Array<[string, string, string]> = [
    ['spiffe://cluster.local/ns/bookinfo/sa/default', 'cluster.local', '/ns/bookinfo/sa/default'],
    ['spiffe://cluster.local', 'cluster.local', ''],
    [
      'spiffe://example.org/9eebccd2-12bf-40a6-b262-65fe0487d453',
      'example.org',
      '/9eebccd2-12bf-40a6-b262-65fe0487d453',
    ],
    [
      'spiffe://trust_domain-name.example.com/Payments/Web_FE.v2',
      'trust_domain-name.example.com',
      '/Payments/Web_FE.v2',
    ],
    ['spiffe://192.168.0.1/workload', '192.168.0.1', '/workload'],
    // Syntactically fine look-alike: whether "bookinfo-evil" is welcome is the policy's call.
    ['spiffe://cluster.local/ns/bookinfo-evil/sa/x', 'cluster.local', '/ns/bookinfo-evil/sa/x'],
    // Only "." and ".." are dot segments.
    ['spiffe://example.org/.../.a/a./..b', 'example.org', '/.../.a/a./..b'],
  ];
  it.each(valid)('%s', (text, trustDomain, path) => {
    expect(parseSpiffeId(text)).toEqual({ ok: true, value: { uri: text, trustDomain, path } });
  });

  it('accepts an ID of exactly the maximum length and refuses one byte more', () => {
    const prefix = 'spiffe://example.org/';
    const atLimit = prefix + 'a'.repeat(MAX_SPIFFE_ID_BYTES - prefix.length);
    expect(atLimit).toHaveLength(2048);
    expect(parseSpiffeId(atLimit).ok).toBe(true);
    expect(parseSpiffeId(atLimit + 'a')).toEqual({
      ok: false,
      code: 'spiffe_id',
      reason: 'invalid SPIFFE ID: longer than 2048 bytes',
    });
  });

  it('accepts a 255-byte trust domain and refuses a 256-byte one', () => {
    const td = 'a'.repeat(MAX_TRUST_DOMAIN_BYTES);
    expect(parseSpiffeId(`spiffe://${td}/x`).ok).toBe(true);
    expect(parseSpiffeId(`spiffe://${td}a/x`)).toEqual({
      ok: false,
      code: 'spiffe_id',
      reason: 'invalid SPIFFE ID: trust domain is longer than 255 bytes',
    });
  });
});

describe('parseSpiffeId: invalid IDs, each with its precise reason', () => {
  const invalid: Array<[string, string]> = [
    ['', 'invalid SPIFFE ID: cannot be empty'],
    ['SPIFFE://cluster.local/ns/bookinfo/sa/default', 'invalid SPIFFE ID: scheme is missing or invalid'],
    ['Spiffe://cluster.local/ns/bookinfo/sa/default', 'invalid SPIFFE ID: scheme is missing or invalid'],
    ['http://cluster.local/ns/bookinfo/sa/default', 'invalid SPIFFE ID: scheme is missing or invalid'],
    ['spiffe:/cluster.local/ns/bookinfo', 'invalid SPIFFE ID: scheme is missing or invalid'],
    ['cluster.local/ns/bookinfo/sa/default', 'invalid SPIFFE ID: scheme is missing or invalid'],
    [' spiffe://cluster.local/ns/bookinfo', 'invalid SPIFFE ID: scheme is missing or invalid'],
    ['spiffe://', 'invalid SPIFFE ID: trust domain is missing'],
    ['spiffe:///ns/bookinfo/sa/default', 'invalid SPIFFE ID: trust domain is missing'],
    ['spiffe://Cluster.local/ns/bookinfo/sa/default', TD_CHARSET],
    ['spiffe://CLUSTER.LOCAL/ns/bookinfo/sa/default', TD_CHARSET],
    ['spiffe://[::1]/ns/bookinfo', TD_CHARSET],
    ['spiffe://cluster local/ns/bookinfo', TD_CHARSET],
    ['spiffe://cluster.local:443/ns/bookinfo/sa/default', 'invalid SPIFFE ID: trust domain cannot contain a port'],
    ['spiffe://cluster.local:/ns/bookinfo', 'invalid SPIFFE ID: trust domain cannot contain a port'],
    ['spiffe://user@cluster.local/ns/bookinfo/sa/default', 'invalid SPIFFE ID: trust domain cannot contain userinfo'],
    [
      'spiffe://cluster%2elocal/ns/bookinfo',
      'invalid SPIFFE ID: trust domain cannot contain percent-encoded characters',
    ],
    ['spiffe://cluster.local?ns=bookinfo', 'invalid SPIFFE ID: query is not allowed'],
    ['spiffe://cluster.local#bookinfo', 'invalid SPIFFE ID: fragment is not allowed'],
    [
      'spiffe://cluster.local/ns%2Fbookinfo/sa/default',
      'invalid SPIFFE ID: path cannot contain percent-encoded characters',
    ],
    ['spiffe://cluster.local/ns/bookinfo/sa/default?x=1', 'invalid SPIFFE ID: query is not allowed'],
    ['spiffe://cluster.local/ns/bookinfo/sa/default#x', 'invalid SPIFFE ID: fragment is not allowed'],
    ['spiffe://cluster.local/ns/bookinfo/../evil/sa/x', 'invalid SPIFFE ID: path cannot contain dot segments'],
    ['spiffe://cluster.local/./ns/bookinfo', 'invalid SPIFFE ID: path cannot contain dot segments'],
    ['spiffe://cluster.local/ns/bookinfo/..', 'invalid SPIFFE ID: path cannot contain dot segments'],
    ['spiffe://cluster.local/ns/bookinfo/.', 'invalid SPIFFE ID: path cannot contain dot segments'],
    ['spiffe://cluster.local/ns/bookinfo/sa/default/', 'invalid SPIFFE ID: path cannot have a trailing slash'],
    ['spiffe://cluster.local/', 'invalid SPIFFE ID: path cannot have a trailing slash'],
    ['spiffe://cluster.local//ns/bookinfo', 'invalid SPIFFE ID: path cannot contain empty segments'],
    ['spiffe://cluster.local/ns//sa/default', 'invalid SPIFFE ID: path cannot contain empty segments'],
    ['spiffe://cluster.local/ns/book info', PATH_CHARSET],
    ['spiffe://cluster.local/ns/bööking', PATH_CHARSET],
    ['spiffe://cluster.local/ns/bookinfo\n', PATH_CHARSET],
    ['spiffe://cluster.local/ns/bookinfo\u0000/sa/x', PATH_CHARSET],
    ['spiffe://cluster.local/ns/bookinfo;sa=x', PATH_CHARSET],
    ['spiffe://cluster.local/ns/bookinfo\\sa', PATH_CHARSET],
  ];
  it.each(invalid)('%j', (text, reason) => {
    expect(parseSpiffeId(text)).toEqual({ ok: false, code: 'spiffe_id', reason });
  });

  it('gives short single-line ASCII reasons that never echo the input', () => {
    for (const [text] of invalid) {
      const result = parseSpiffeId(text);
      if (result.ok) throw new Error(`accepted ${text}`);
      expect(result.reason).toMatch(/^[\x20-\x7e]{1,160}$/);
      if (text.length > 12) expect(result.reason).not.toContain(text);
    }
  });
});

describe('parseSpiffeId: properties', () => {
  // An independent statement of the grammar: scheme, [a-z0-9._-]+ trust domain, [A-Za-z0-9._-]+ segments.
  const grammar = /^spiffe:\/\/([a-z0-9._-]{1,255})((?:\/[A-Za-z0-9._-]+)*)$/;
  function satisfiesGrammar(text: string): boolean {
    const m = grammar.exec(text);
    if (m === null || text.length > 2048) return false;
    return !(m[2] ?? '').split('/').some((segment) => segment === '.' || segment === '..');
  }

  const alphabet = fc.constantFrom(
    'a',
    'z',
    'Q',
    '0',
    '9',
    '.',
    '-',
    '_',
    '/',
    '/',
    ':',
    '@',
    '%',
    '?',
    '#',
    ' ',
    'é',
    '\n',
  );
  const idLike = fc
    .tuple(
      fc.constantFrom('spiffe://', 'spiffe://', 'spiffe:/', 'SPIFFE://', ''),
      fc.string({ unit: alphabet, maxLength: 40 }),
    )
    .map(([a, b]) => a + b);

  it('never throws, and accepts exactly the strings the grammar describes', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string({ unit: 'grapheme' }), idLike), (text) => {
        const result = parseSpiffeId(text);
        expect(result.ok).toBe(satisfiesGrammar(text));
        if (result.ok) expect(`spiffe://${result.value.trustDomain}${result.value.path}`).toBe(text);
      }),
      { numRuns: 3000 },
    );
  });
});
