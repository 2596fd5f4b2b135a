// x-request-id and traceparent come from the client when Envoy preserves them: they reach the decision
// log bounded, and traceparent only when it is a valid W3C value.
import { describe, expect, it } from 'vitest';
import { Authorizer } from '../../src/decision/authorizer.js';
import type { DecisionLogEntry } from '../../src/decision/decision-log.js';
import { checkRequest, loadDefaultPolicy } from '../support/service.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

async function logged(headers: Record<string, string>): Promise<DecisionLogEntry> {
  const entries: DecisionLogEntry[] = [];
  const authorizer = new Authorizer({ policies: { current: await loadDefaultPolicy() }, sink: (e) => entries.push(e) });
  authorizer.checkEnvoy(checkRequest({ principal: BOOKINFO, headers }));
  return entries[0]!;
}

describe('correlation fields in the decision log', () => {
  it('a 50 KB x-request-id gives a bounded log line', async () => {
    const entry = await logged({ 'x-request-id': 'r'.repeat(50_000), traceparent: 't'.repeat(50_000) });
    expect(entry.x_request_id.length).toBeLessThanOrEqual(256);
    expect(JSON.stringify(entry).length).toBeLessThan(2000);
    expect(entry.traceparent).toBe('');
  });

  it('keeps a valid traceparent and an ordinary request id as they are', async () => {
    const entry = await logged({ 'x-request-id': 'b1946ac9-2f2e-4c1e-9b43-3f4a1b2c3d4e', traceparent: TRACEPARENT });
    expect(entry.x_request_id).toBe('b1946ac9-2f2e-4c1e-9b43-3f4a1b2c3d4e');
    expect(entry.traceparent).toBe(TRACEPARENT);
  });

  it('a request id with control characters cannot break the line', async () => {
    const entry = await logged({ 'x-request-id': 'a\nb\u0000c"d' });
    expect(entry.x_request_id).toMatch(/^[\x20-\x7e]*$/);
  });
});
