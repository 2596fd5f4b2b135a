import { describe, expect, it } from 'vitest';
import { correlationOf } from '../../src/decision/correlation.js';

const TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

describe('traceparent validation (W3C Trace Context)', () => {
  const valid = [
    TRACEPARENT,
    '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00',
    // a future version may append fields: the 55 known characters are kept
    'cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-will-be-like',
  ];
  const invalid = [
    '',
    'ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    '00-00000000000000000000000000000000-b7ad6b7169203331-01',
    '00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01',
    '00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01',
    '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra',
    '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331',
    'cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x',
    ' 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  ];
  it.each(valid)('keeps %s', (tp) => {
    expect(correlationOf(undefined, tp).traceparent).toBe(tp.slice(0, 55));
  });
  it.each(invalid)('drops %j', (tp) => {
    expect(correlationOf(undefined, tp).traceparent).toBeUndefined();
  });
  it('drops non-strings', () => {
    expect(correlationOf(['x'], 42)).toEqual({});
  });
});
