// Property-based fuzzing of the whole pipeline (input builder, identity, policy, decision) with random
// CheckRequests. The gRPC transport hands the Authorizer decoded protos, but `eval --input` hands it
// arbitrary JSON, so fields get values of any type: strings where objects belong, arrays, numbers,
// null. Properties: nothing throws, and every allow carries a valid bookinfo identity that the
// request's evidence really names.
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { Authorizer } from '../../src/decision/authorizer.js';
import type { Decision } from '../../src/decision/decision.js';
import type { CheckRequest } from '../../src/decision/input.js';
import { parseSpiffeId } from '../../src/identity/spiffe-id.js';
import { MutablePolicySource } from '../../src/service/service.js';
import { createCa, workloadSvid, type IssuedCert } from '../support/pki.js';
import { loadDefaultPolicy } from '../support/service.js';
import { FUZZ_RUNS } from './runs.js';

const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';
const CERT_ID = 'spiffe://cluster.local/ns/bookinfo/sa/details';

let authorizer: Authorizer;
let certs: IssuedCert[];

beforeAll(async () => {
  const ca = await createCa();
  certs = [
    await workloadSvid(ca, CERT_ID),
    await workloadSvid(ca, 'spiffe://cluster.local/ns/bookinfo-evil/sa/details'),
  ];
  authorizer = new Authorizer({ policies: new MutablePolicySource(await loadDefaultPolicy()), sink: () => {} });
});

/** Every allow names a valid cluster.local identity in namespace bookinfo, with bookinfo's pool. */
let allows = 0;
function expectSafe(d: Decision, evidence: unknown[]): void {
  expect(typeof d.allow).toBe('boolean');
  if (d.allow) allows++;
  expect(d.reason).toMatch(/^[\x20-\x7e]*$/);
  if (!d.allow) {
    expect(d.snat_pool).toBe('');
    return;
  }
  expect(d.identity).not.toBeNull();
  const id = parseSpiffeId(d.identity!.spiffe_id);
  expect(id.ok).toBe(true);
  expect(d.identity!.trust_domain).toBe('cluster.local');
  expect(d.identity!.namespace).toBe('bookinfo');
  expect(d.identity!.spiffe_id.startsWith('spiffe://cluster.local/ns/bookinfo/sa/')).toBe(true);
  expect(d.snat_pool).toBe('bookinfo_snat');
  // The identity is one the request's own evidence carried, not something the input made up.
  const named = evidence.some(
    (e) =>
      typeof e === 'string' &&
      (e === d.identity!.spiffe_id || (d.identity!.spiffe_id === CERT_ID && e.includes('BEGIN'))),
  );
  expect(named).toBe(true);
}

const weird = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.oneof(fc.string(), fc.integer()), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), { maxKeys: 3 }),
  fc.string({ maxLength: 20 }),
);
const principal = fc.oneof(
  fc.constantFrom(
    BOOKINFO,
    'spiffe://cluster.local/ns/bookinfo-evil/sa/x',
    'spiffe://cluster.local/ns/bookinfo',
    'spiffe://other/ns/bookinfo/sa/x',
    'CN=bookinfo',
    '',
  ),
  fc.string(),
  weird,
);
const certificate = fc.oneof(
  fc.constantFrom(0, 1).map((i) => ({ pick: i, encode: true })),
  fc.constantFrom(0, 1).map((i) => ({ pick: i, encode: false })),
  weird,
);
const hostish = fc.oneof(
  fc.constantFrom('www.example.com:443', '[::1]:8443', 'A.EXAMPLE', ':::', '[x', 'h:99999', ''),
  fc.string(),
  weird,
);
const headers = fc.oneof(
  fc.dictionary(
    fc.oneof(
      fc.constantFrom(
        ':authority',
        'x-request-id',
        'content-type',
        'content-length',
        'x-forwarded-client-cert',
        'x-spiffe-id',
      ),
      fc.string({ maxLength: 8 }),
    ),
    fc.oneof(fc.string(), weird),
    {
      maxKeys: 4,
    },
  ),
  weird,
);
const headerMap = fc.oneof(
  fc.record(
    {
      headers: fc.oneof(
        fc.array(
          fc.record({ key: fc.oneof(fc.string(), weird), value: fc.oneof(fc.string(), weird) }, { requiredKeys: [] }),
          { maxLength: 3 },
        ),
        weird,
      ),
    },
    { requiredKeys: [] },
  ),
  weird,
);
const http = fc.oneof(
  fc.record(
    {
      host: hostish,
      path: fc.oneof(fc.constantFrom('/a?b=c&b=d', '%zz', '//x/../y', ''), fc.string(), weird),
      method: fc.oneof(fc.constantFrom('CONNECT', 'GET'), weird),
      headers,
      headerMap,
      body: fc.oneof(fc.constantFrom('{"a":1}', '{'), fc.string(), weird),
      rawBody: fc.oneof(
        fc.uint8Array({ maxLength: 8 }).map((b) => Buffer.from(b)),
        weird,
      ),
    },
    { requiredKeys: [] },
  ),
  weird,
);
const request = fc.oneof(
  fc.record(
    {
      time: fc.oneof(
        fc.record(
          { seconds: fc.oneof(fc.string(), weird), nanos: fc.oneof(fc.integer(), weird) },
          { requiredKeys: [] },
        ),
        weird,
      ),
      http,
    },
    { requiredKeys: [] },
  ),
  weird,
);
const metadata = fc.oneof(
  fc.record(
    {
      filterMetadata: fc.oneof(
        fc.dictionary(
          fc.string({ maxLength: 4 }),
          fc.oneof(
            fc.record({
              fields: fc.oneof(fc.dictionary(fc.string({ maxLength: 4 }), fc.anything({ maxDepth: 2 })), weird),
            }),
            weird,
          ),
          { maxKeys: 2 },
        ),
        weird,
      ),
    },
    { requiredKeys: [] },
  ),
  weird,
  fc.anything({ maxDepth: 2 }),
);
const checkRequestArb = fc.record(
  {
    attributes: fc.oneof(
      fc.record(
        {
          source: fc.oneof(
            fc.record({ principal, certificate, address: fc.anything({ maxDepth: 2 }) }, { requiredKeys: [] }),
            weird,
          ),
          destination: fc.oneof(fc.record({ principal }, { requiredKeys: [] }), weird),
          request,
          contextExtensions: fc.oneof(fc.dictionary(fc.string({ maxLength: 4 }), fc.string({ maxLength: 4 })), weird),
          metadataContext: metadata,
          routeMetadataContext: metadata,
          tlsSession: fc.oneof(fc.record({ sni: fc.oneof(fc.string(), weird) }), weird),
        },
        { requiredKeys: [] },
      ),
      weird,
    ),
  },
  { requiredKeys: [] },
);

/** Replaces the certificate placeholders by real PEMs (URL-encoded as Envoy sends them, or not). */
function materialise(req: Record<string, any>): { req: CheckRequest; evidence: unknown[] } {
  const source = req.attributes?.source;
  const evidence: unknown[] = [];
  if (source && typeof source === 'object' && !Array.isArray(source)) {
    const c = source.certificate;
    if (c && typeof c === 'object' && 'pick' in c) {
      const pem = certs[c.pick as number]!.certPem;
      source.certificate = c.encode ? encodeURIComponent(pem) : pem;
    }
    evidence.push(source.principal, source.certificate);
  }
  return { req: req as CheckRequest, evidence };
}

describe('fuzz: the pipeline with random CheckRequests', () => {
  it('checkEnvoy never throws and never allows without a valid bookinfo identity from the evidence', () => {
    allows = 0;
    fc.assert(
      fc.property(checkRequestArb, (raw) => {
        const { req, evidence } = materialise(raw as Record<string, any>);
        let d: Decision | undefined;
        expect(() => (d = authorizer.checkEnvoy(req))).not.toThrow();
        expectSafe(d!, evidence);
      }),
      { numRuns: FUZZ_RUNS * 2 },
    );
    // The generators reach allows too, so the property above is not vacuous.
    expect(allows).toBeGreaterThan(0);
  });

  it('checkCli --input (arbitrary JSON documents) never throws and never allows without such an identity', () => {
    fc.assert(
      fc.property(
        checkRequestArb,
        fc.dictionary(
          fc.constantFrom('identity', 'caller', 'destination', 'source_principal', 'extra'),
          fc.anything({ maxDepth: 2 }),
          { maxKeys: 3 },
        ),
        fc.option(hostish),
        (raw, extra, destination) => {
          const { req, evidence } = materialise(raw as Record<string, any>);
          const input = JSON.parse(JSON.stringify({ ...extra, ...req })) as Record<string, unknown>;
          let d: Decision | undefined;
          expect(
            () => (d = authorizer.checkCli({ input, ...(typeof destination === 'string' ? { destination } : {}) })),
          ).not.toThrow();
          expectSafe(d!, evidence);
        },
      ),
      { numRuns: FUZZ_RUNS * 2 },
    );
  });

  it('checkCli with an ID or certificate of any type never throws and allows only bookinfo', () => {
    fc.assert(
      fc.property(principal, certificate, (id, cert) => {
        const { evidence, req } = materialise({ attributes: { source: { principal: id, certificate: cert } } });
        const src = (req.attributes as any).source;
        let d: Decision | undefined;
        expect(
          () => (d = authorizer.checkCli({ spiffeId: src.principal, certificatePem: src.certificate })),
        ).not.toThrow();
        expectSafe(d!, evidence);
      }),
      { numRuns: FUZZ_RUNS * 2 },
    );
  });
});
