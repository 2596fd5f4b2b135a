// X-Egress-Cache-Ttl: how long the iRule may reuse an answer. Only a policy answer that is a function of
// the fields the iRule's cache key covers may be reused; anything else (a failure, an unknown or
// non-deterministic footprint, a policy reading headers) gets 0.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Decision } from '../../src/decision/decision.js';
import { sidebandCacheTtl } from '../../src/transport/sideband.js';
import { loadPolicy } from '../../src/lifecycle/bundle-source.js';
import { POLICY_DIR, startTestService, type TestService } from '../support/service.js';
import { makeBigipCerts, startSidebandService, type BigipCerts } from './sideband-service.js';

let certs: BigipCerts;
let memo: TestService;
let noFootprint: TestService;

beforeAll(async () => {
  certs = await makeBigipCerts();
  memo = await startSidebandService();
  // a bundle loaded without its footprint: what the policy reads is unknown
  noFootprint = await startTestService({
    policy: await loadPolicy(POLICY_DIR, { memoize: false }),
    sidebandCacheTtlS: 30,
  });
});
afterAll(async () => {
  await Promise.all([memo?.close(100), noFootprint?.close(100)]);
  certs?.cleanup();
});

async function ttl(s: TestService, body: string): Promise<string | null> {
  // On a loaded machine an evaluation can exceed its budget: that answer is a policy failure (TTL 0,
  // rightly); ask again for the policy's own answer.
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(`http://127.0.0.1:${s.httpPort}/v1/sideband`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-pem-file' },
      body,
    });
    await res.text();
    if (attempt < 4 && (res.headers.get('x-egress-reason') ?? '').startsWith('policy error')) continue;
    return res.headers.get('x-egress-cache-ttl');
  }
}

describe('X-Egress-Cache-Ttl', () => {
  it('is the configured bound (10 s by default) for the default policy, allow and deny alike', async () => {
    expect(await ttl(memo, certs.files.bookinfo!.pem)).toBe('10');
    expect(await ttl(memo, certs.files.apigw!.pem)).toBe('10');
  });

  it('is 0 when the footprint is unknown, and for a refused certificate or a malformed body', async () => {
    expect(await ttl(noFootprint, certs.files.bookinfo!.pem)).toBe('0');
    expect(await ttl(memo, certs.files.twoUris!.pem)).toBe('0');
    expect(await ttl(memo, 'garbage')).toBe('0');
  });

  it('is 0 unless every field the answer depends on is in the cache key', () => {
    const d = (input_keys?: string[]) => ({ input_keys }) as unknown as Decision;
    expect(sidebandCacheTtl(d(['identity', 'destination', 'sideband']), 10)).toBe(10);
    expect(sidebandCacheTtl(d(['identity', 'attributes']), 10)).toBe(0);
    expect(sidebandCacheTtl(d(['identity', 'parsed_path']), 10)).toBe(0);
    expect(sidebandCacheTtl(d(undefined), 10)).toBe(0);
    expect(sidebandCacheTtl(d(['identity']), 0)).toBe(0);
  });
});
