import { describe, expect, it } from 'vitest';
import { buildEnvoyInput, parsePathAndQuery, parsePathAndQueryReference } from '../../src/decision/input.js';

describe('Envoy input document', () => {
  // A query name that is also an Object.prototype member found the inherited member, not a list, and
  // the whole Check threw (an internal-error deny counted as a bug) instead of reaching the policy.
  it.each(['/a?constructor=1&__proto__=2&toString&x=1&x=2', '/a?constructor=1&__proto__=2&toString&x=1&x=2&%41'])(
    'parsed_query keeps names like constructor and __proto__ as lists of their own (%s)',
    (path) => {
      const input = buildEnvoyInput({ attributes: { request: { http: { path, host: 'example.org' } } } }, null);
      const query = input.parsed_query as Record<string, string[]>;
      expect(Object.getPrototypeOf(query)).toBe(Object.prototype);
      expect(Object.keys(query).slice(0, 4)).toEqual(['constructor', '__proto__', 'toString', 'x']);
      expect(JSON.parse(JSON.stringify(query))).toMatchObject({
        constructor: ['1'],
        ['__proto__']: ['2'],
        toString: [''],
        x: ['1', '2'],
      });
      expect(Object.hasOwn(JSON.parse(JSON.stringify(query)) as object, '__proto__')).toBe(true);
    },
  );

  it('the fast reader and the URL parser agree on such names', () => {
    for (const path of ['/a?constructor=1&__proto__=2&hasOwnProperty', '/a?__proto__&__proto__=x+y'])
      expect(JSON.stringify(parsePathAndQuery(path))).toBe(JSON.stringify(parsePathAndQueryReference(path)));
  });
});
