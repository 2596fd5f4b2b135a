// The decision line's own serializer against pino's: for any decision, at any level, with or without a
// worker id, the bytes written are the ones `logger.info(entry, 'decision')` (or `error`) writes, through
// the byte batch (batchLines) the serve command puts before its destination, and through the destination
// itself into a file, against pino's own string written by the destination as the service did before the
// batch held bytes (lone surrogates included: both write EF BF BD).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { decisionLogEntry, type DecisionLogEntry } from '../../src/decision/decision-log.js';
import { REASON_CLASSES, type Decision } from '../../src/decision/decision.js';
import { batchLines, byteDestination, type LineBatch } from '../../src/service/log-lines.js';
import { createServiceLog, jsonString } from '../../src/service/service-log.js';

const RUNS = Number(process.env.FUZZ_RUNS ?? 2000);

/** A batch whose writes are kept; `bytes()` flushes it and gives each write. */
function capture(maxBytes?: number): { bytes: () => string[]; destination: LineBatch } {
  const writes: Buffer[] = [];
  const destination = batchLines(
    { write: (b: Buffer) => (writes.push(Buffer.from(b)), true), flushSync: () => {} },
    maxBytes === undefined ? {} : { maxBytes },
  );
  return {
    destination,
    bytes: () => {
      destination.flushSync();
      // latin1 keeps every byte as one character: the comparison is of bytes, not of decoded text
      return writes.map((b) => b.toString('latin1'));
    },
  };
}

// Strings pino writes in each of its ways: plain, with quotes or backslashes, with control characters,
// longer than 100 characters, with lone surrogates, U+2028 and astral characters.
const anyCodeUnit = fc.integer({ min: 0, max: 0xffff }).map((n) => String.fromCharCode(n));
const text = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: anyCodeUnit, maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 30 }),
  fc.string({ minLength: 95, maxLength: 140 }),
  fc.constantFrom('', '"', '\\', 'a"b\\c', '\u2028', '\ud800', '\udc00x', '\x7f', '\n', '\x1f', 'é', '😀'),
);
const number = fc.oneof(
  fc.double(),
  fc.double({ min: 0, max: 5000, noNaN: true }).map((n) => Math.round(n * 1000) / 1000),
  fc.constantFrom(NaN, Infinity, -Infinity, -0, 1e21, 5e-7, 0.1 + 0.2),
);
const decision = fc.record(
  {
    decision_id: text,
    caller: fc.constantFrom('envoy', 'sideband', 'cli'),
    allow: fc.boolean(),
    snat_pool: text,
    reason: text,
    reason_class: fc.constantFrom(...REASON_CLASSES),
    destination: text,
    policy_revision: text,
    eval_ms: number,
    identity: fc.option(fc.record({ spiffe_id: text, namespace: fc.option(text, { nil: undefined }) }), { nil: null }),
    policy_error: text,
    failure_code: fc.constantFrom('pem', 'svid', 'validity', 'mismatch', 'chain', 'malformed'),
  },
  {
    requiredKeys: [
      'decision_id',
      'caller',
      'allow',
      'snat_pool',
      'reason',
      'reason_class',
      'destination',
      'policy_revision',
      'eval_ms',
      'identity',
    ],
  },
) as fc.Arbitrary<unknown> as fc.Arbitrary<Decision>;
const correlation = fc.record({
  requestId: fc.option(text, { nil: undefined }),
  traceparent: fc.option(text, { nil: undefined }),
});
const level = fc.constantFrom('trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent');
const worker = fc.option(fc.nat(64), { nil: undefined });
// 1970 to 2100, and the odd millisecond
const clock = fc.integer({ min: 0, max: 4_102_444_800_000 });

function pinoLine(entry: DecisionLogEntry, opts: { level: string; worker?: number; now: number }): string[] {
  const out = capture();
  const { logger } = createServiceLog({ ...opts, now: () => opts.now, destination: out.destination });
  if (entry.policy_error !== undefined) logger.error(entry, 'decision');
  else logger.info(entry, 'decision');
  return out.bytes();
}

function ownLine(
  entry: DecisionLogEntry,
  opts: { level: string; worker?: number; now: number },
  maxBytes?: number,
): string[] {
  const out = capture(maxBytes);
  createServiceLog({ ...opts, now: () => opts.now, destination: out.destination }).decisionLine(entry);
  return out.bytes();
}

describe('decision lines', () => {
  it('are the bytes pino writes for the same entry, for any decision, level and worker', () => {
    fc.assert(
      fc.property(decision, correlation, level, worker, clock, (d, c, lvl, w, now) => {
        const entry = decisionLogEntry(d, c);
        const opts = { level: lvl, now, ...(w === undefined ? {} : { worker: w }) };
        expect(ownLine(entry, opts)).toEqual(pinoLine(entry, opts));
      }),
      { numRuns: RUNS },
    );
  });

  it('are the same bytes when a line does not fit the batch buffer and is written into one of its own', () => {
    fc.assert(
      fc.property(decision, correlation, worker, clock, (d, c, w, now) => {
        const entry = decisionLogEntry(d, c);
        const opts = { level: 'info', now, ...(w === undefined ? {} : { worker: w }) };
        const own = ownLine(entry, opts, 256);
        expect(own).toEqual(pinoLine(entry, opts));
        expect(own).toHaveLength(1);
      }),
      { numRuns: Math.ceil(RUNS / 4) },
    );
  });

  it("reach the file as the bytes pino's own lines reached it through the string destination", () => {
    const dir = mkdtempSync(join(tmpdir(), 'service-log-'));
    try {
      const entries = fc.sample(fc.tuple(decision, correlation), { numRuns: 300, seed: 7 });
      entries.push([
        { ...(entries[0]?.[0] as Decision), reason: 'lone \ud800 high, \udc00 low, pair \ud83d\ude00, \u2028' },
        { requestId: '\udfff', traceparent: undefined },
      ]);
      const now = Date.UTC(2026, 11, 5);
      // Before: pino's string, written by the destination in its string mode.
      const before = join(dir, 'before.log');
      const stringDestination = pino.destination({ dest: before, sync: true });
      // pino's logger writes its strings as they are (write); only decision lines use reserve and commit
      const direct: LineBatch = {
        write: (text: string) => stringDestination.write(text),
        flushSync: () => stringDestination.flushSync(),
        reserve: () => {
          throw new Error('not a decision line');
        },
        buffer: Buffer.alloc(0),
        commit: () => {},
      };
      const reference = createServiceLog({ level: 'info', worker: 3, now: () => now, destination: direct }).logger;
      for (const [d, c] of entries) {
        const entry = decisionLogEntry(d, c);
        if (entry.policy_error !== undefined) reference.error(entry, 'decision');
        else reference.info(entry, 'decision');
        stringDestination.flushSync();
      }
      // After: the decision line's bytes, batched, written by the destination in its buffer mode.
      const after = join(dir, 'after.log');
      const bytes = byteDestination({ dest: after, sync: true, maxLength: 16 * 1024 * 1024 });
      const batch = batchLines(bytes, { maxBytes: 4096 });
      const { decisionLine } = createServiceLog({ level: 'info', worker: 3, now: () => now, destination: batch });
      for (const [d, c] of entries) decisionLine(decisionLogEntry(d, c));
      batch.flushSync();
      const written = readFileSync(after);
      expect(
        written.includes(Buffer.from('lone \xef\xbf\xbd high, \xef\xbf\xbd low, pair \xf0\x9f\x98\x80', 'latin1')),
      ).toBe(true);
      expect(written.toString('latin1').split('\n')).toEqual(readFileSync(before, 'latin1').split('\n'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('leave an entry with a field of the wrong type to pino, which writes it as it is', () => {
    const wrong = fc.constantFrom<[keyof DecisionLogEntry, unknown]>(
      ['reason', 42],
      ['allow', 'yes'],
      ['eval_ms', '1.5'],
      ['spiffe_id', null],
      ['policy_error', { nested: true }],
      ['failure_code', 7],
    );
    fc.assert(
      fc.property(decision, correlation, wrong, clock, (d, c, [key, value], now) => {
        const entry: DecisionLogEntry = { ...decisionLogEntry(d, c), [key]: value };
        const opts = { level: 'info', now };
        const own = ownLine(entry, opts);
        expect(own).toEqual(pinoLine(entry, opts));
        expect(own).toHaveLength(1);
      }),
      { numRuns: Math.ceil(RUNS / 4) },
    );
  });

  it('are one JSON line each that reads back as the entry', () => {
    const entry = decisionLogEntry(
      {
        decision_id: 'd-1',
        caller: 'envoy',
        allow: false,
        snat_pool: '',
        reason: 'say "no"\\\n',
        reason_class: 'policy_error',
        destination: 'legacy.example:443',
        policy_revision: 'sha256:00',
        eval_ms: 0.25,
        identity: null,
        policy_error: 'undefined',
        failure_code: 'policy',
      } as unknown as Decision,
      { requestId: 'r-1' },
    );
    const lines = ownLine(entry, { level: 'info', worker: 2, now: Date.UTC(2026, 11, 5) });
    expect(lines).toHaveLength(1);
    const line = Buffer.from(lines[0] ?? '', 'latin1').toString('utf8');
    expect(line.endsWith('}\n')).toBe(true);
    expect(JSON.parse(line)).toEqual({
      level: 50,
      time: '2026-12-05T00:00:00.000Z',
      service: 'egress-authz',
      worker: 2,
      ...entry,
      msg: 'decision',
    });
  });

  it('write strings as JSON that reads back the same (lone surrogates aside, as pino)', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 200 }), (s) => {
        expect(JSON.parse(jsonString(s))).toBe(s);
      }),
      { numRuns: RUNS },
    );
  });
});
