// The hand-written CheckResponse encoder against the reference: proto-loader's serializer (protobufjs
// fromObject + encode) over toCheckResponse. For every decision, arbitrary strings included, the bytes
// must be the same; where a string is not well-formed UTF-16 (a lone surrogate), protobufjs writes bytes
// that are not UTF-8 and the encoder writes U+FFFD, so the two must then decode to the same message once
// the reference's strings are made well-formed.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeCheckResponse, encodeCheckResponseFrame } from '../../src/transport/check-response-wire.js';
import { toCheckResponse } from '../../src/transport/envoy-response.js';
import { loadAuthorizationService } from '../../src/transport/envoy-protos.js';
import type { Decision } from '../../src/decision/decision.js';
import { FUZZ_RUNS } from './runs.js';

const check = loadAuthorizationService().Check!;
const reference = (d: Decision) => check.responseSerialize(toCheckResponse(d));
const decode = (b: Buffer) => check.responseDeserialize(b) as Record<string, unknown>;

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
const wellFormed = (s: string) => s.replace(LONE_SURROGATE, '\ufffd');
const isWellFormed = (s: string) => !LONE_SURROGATE.test(s);

const surrogateUnit = fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c));
const text = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 60 }),
  fc.string({ unit: fc.oneof(fc.string({ minLength: 1, maxLength: 1 }), surrogateUnit), maxLength: 50 }),
  // lengths around the varint boundaries (127/128 bytes, 16,383/16,384) and protobufjs's 40-character switch
  fc.nat({ max: 17000 }).map((n) => 'x'.repeat(n)),
  fc.constantFrom('', 'bookinfo_snat', 'é'.repeat(64), '😀'.repeat(40)),
);

const decision: fc.Arbitrary<Decision> = fc.record({
  decision_id: fc.oneof(fc.uuid(), text),
  caller: fc.constantFrom('envoy', 'sideband', 'cli'),
  allow: fc.boolean(),
  snat_pool: text,
  reason: text,
  http_status: fc.oneof(fc.integer({ min: 400, max: 599 }), fc.integer({ min: 0, max: 100_000 })),
  headers: fc.dictionary(text, text, { maxKeys: 4 }),
  body: text,
  identity: fc.option(
    fc.record({ spiffe_id: text, trust_domain: fc.constant('cluster.local'), path: fc.constant('/x') }),
    { nil: null },
  ),
  destination: text,
  policy_revision: text,
  eval_ms: fc.double({ noNaN: true }),
  reason_class: fc.constantFrom('allowed', 'identity', 'policy_deny', 'policy_error', 'internal'),
}) as fc.Arbitrary<Decision>;

function strings(d: Decision): string[] {
  return [
    d.decision_id,
    d.snat_pool,
    d.reason,
    d.body,
    d.policy_revision,
    d.identity?.spiffe_id ?? '',
    ...Object.entries(d.headers).flat(),
  ];
}

function wellFormedDecision(d: Decision): Decision {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(d.headers)) headers[wellFormed(k)] = wellFormed(v);
  return {
    ...d,
    decision_id: wellFormed(d.decision_id),
    snat_pool: wellFormed(d.snat_pool),
    reason: wellFormed(d.reason),
    body: wellFormed(d.body),
    policy_revision: wellFormed(d.policy_revision),
    identity: d.identity && { ...d.identity, spiffe_id: wellFormed(d.identity.spiffe_id) },
    headers,
  };
}

describe('CheckResponse bytes: the encoder against protobufjs', () => {
  it('writes the very bytes protobufjs writes, and decodes to the same message otherwise', () => {
    let compared = 0;
    fc.assert(
      fc.property(decision, (d) => {
        const ours = encodeCheckResponse(d);
        // The stream path's frame: flag 0, the length, then the very same bytes.
        const frame = encodeCheckResponseFrame(d);
        expect(frame[0]).toBe(0);
        expect(frame.readUInt32BE(1)).toBe(ours.length);
        expect(frame.subarray(5).equals(ours)).toBe(true);
        if (strings(d).every(isWellFormed)) {
          compared++;
          expect(ours.equals(reference(d))).toBe(true);
        } else {
          const fixed = wellFormedDecision(d);
          // two keys may have become one: the reference then has fewer headers, as Envoy would see them
          if (Object.keys(fixed.headers).length !== Object.keys(d.headers).length) return;
          expect(decode(ours)).toEqual(decode(reference(fixed)));
          expect(ours.equals(encodeCheckResponse(fixed))).toBe(true);
        }
      }),
      { numRuns: FUZZ_RUNS * 5 },
    );
    expect(compared).toBeGreaterThan(FUZZ_RUNS);
  });

  it('answers an allow and a deny with the contract fields (decoded by a client)', () => {
    const base: Decision = {
      decision_id: '6a1f3f55-0ad4-4f8e-9d7b-3c1f2f9b2a10',
      caller: 'envoy',
      allow: true,
      snat_pool: 'bookinfo_snat',
      reason: 'allowed by policy',
      http_status: 200,
      headers: { 'x-tenant': 'bookinfo' },
      body: '',
      identity: {
        spiffe_id: 'spiffe://cluster.local/ns/bookinfo/sa/productpage',
        trust_domain: 'cluster.local',
        path: '/ns/bookinfo/sa/productpage',
        source: 'certificate',
      },
      destination: 'legacy.example:443',
      policy_revision: 'rev-1',
      eval_ms: 0.01,
      reason_class: 'allowed',
    };
    const allow = decode(encodeCheckResponse(base));
    expect(allow).toMatchObject({
      status: { code: 0 },
      okResponse: {
        headers: [
          { header: { key: 'x-egress-snat-pool', value: 'bookinfo_snat' }, append: { value: false } },
          { header: { key: 'x-egress-decision-id', value: base.decision_id }, append: { value: false } },
          { header: { key: 'x-tenant', value: 'bookinfo' }, append: { value: false } },
        ],
      },
      dynamicMetadata: {
        fields: {
          snat_pool: { stringValue: 'bookinfo_snat' },
          decision_id: { stringValue: base.decision_id },
          spiffe_id: { stringValue: base.identity!.spiffe_id },
          allow: { boolValue: true },
        },
      },
    });
    const deny = decode(
      encodeCheckResponse({ ...base, allow: false, snat_pool: '', reason: 'no', http_status: 403, body: 'no' }),
    );
    expect(deny).toMatchObject({
      status: { code: 7, message: 'no' },
      deniedResponse: { status: { code: 'Forbidden' }, body: 'no\n' },
    });
    expect((deny.deniedResponse as { headers: unknown[] }).headers).toHaveLength(3);
  });
});
