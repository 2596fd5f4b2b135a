// The serve command's logger and its decision lines. The decision line is the one line written for
// every Check, so it has a serializer of its own: pino's general one walks the entry's keys, looks up
// serializers and builds a string for each field (4.2 KB of garbage a line), where this one writes the
// line's bytes straight into the log batch's reused buffer (batchLines): ~40 B of garbage, nothing for
// the collector to scavenge or promote while the line waits its 10 ms (npm run bench:alloc,
// docs/performance.md). The bytes are pino's own for the same entry, as its destination wrote pino's
// string (test/service/service-log.test.ts holds the two to equality over generated entries), so a log
// pipeline parsing the service's lines sees no difference.
import pino from 'pino';
import type { DecisionLogEntry } from '../decision/decision-log.js';
import type { LineBatch } from './log-lines.js';

export interface ServiceLogOptions {
  level: string;
  /** the worker's id under `serve --workers`: on every line of that worker */
  worker?: number;
  /** the batch of lines before pino's destination (batchLines): pino writes strings to it, decision lines bytes */
  destination: LineBatch;
  /** the clock (ms since the epoch) of the `time` field; tests fix it */
  now?: () => number;
}

export interface ServiceLog {
  logger: pino.Logger;
  /** writes `entry` exactly as `logger.info(entry, 'decision')` would (`logger.error` with a policy_error) */
  decisionLine: (entry: DecisionLogEntry) => void;
}

const INFO = 30;
const ERROR = 50;

// The string rule of the pino this service runs with (lib/tools.js): up to Node 24, a string of at most
// 100 characters and no control character is written with only `"` and `\` escaped (a lone surrogate
// stays as it is); anything else goes through JSON.stringify. From Node 25 pino always uses JSON.stringify.
const PINO_SHORT_STRINGS = Number(process.versions.node.split('.')[0]) < 25;
const QUOTE_OR_BACKSLASH = /["\\]/g;

export function jsonString(s: string): string {
  if (!PINO_SHORT_STRINGS || s.length > 100) return JSON.stringify(s);
  let escapes = false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 32) return JSON.stringify(s);
    if (c === 34 || c === 92) escapes = true;
  }
  return escapes ? `"${s.replace(QUOTE_OR_BACKSLASH, '\\$&')}"` : `"${s}"`;
}

// pino writes a number as JavaScript prints it, and a non-finite one as null.
const jsonNumber = (n: number): string => (Number.isFinite(n) ? String(n) : 'null');

/** ASCII text as bytes, copied into a line with TypedArray.set (faster than a loop of stores). */
const ascii = (s: string): Buffer => Buffer.from(s, 'latin1');

/**
 * Writes `s` as pino writes it (jsonString) at `at`; returns where it ends. Printable ASCII without `"`
 * or `\` is written as it is by either of pino's rules, byte by byte (most fields); anything else goes
 * through jsonString and Buffer.write, which writes a lone surrogate as EF BF BD, as the destination
 * writes pino's string (test/service/service-log.test.ts holds the two to equality).
 */
function putString(buf: Buffer, at: number, s: string): number {
  buf[at] = 34;
  let p = at + 1;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 32 || c > 126 || c === 34 || c === 92) return at + buf.write(jsonString(s), at, 'utf8');
    buf[p++] = c;
  }
  buf[p++] = 34;
  return p;
}

/** Copies `bytes` into `buf` at `at`; returns where they end. */
function put(buf: Buffer, at: number, bytes: Uint8Array): number {
  buf.set(bytes, at);
  return at + bytes.length;
}

// The most bytes jsonString(s) takes a code unit: 6 escaped (\u001f, \ud800), else at most 3 of UTF-8.
const STRING_BOUND = 6;
// String(n) of any number, with its sign, digits, point and exponent
const NUMBER_BOUND = 32;

const STRING_FIELDS = [
  'decision_id',
  'caller',
  'spiffe_id',
  'namespace',
  'snat_pool',
  'reason',
  'reason_class',
  'destination',
  'x_request_id',
  'traceparent',
  'policy_revision',
] as const;

/** Whether the entry holds the types its type says (else the line is left to pino, which writes anything). */
function wellTyped(e: DecisionLogEntry): boolean {
  for (const k of STRING_FIELDS) if (typeof e[k] !== 'string') return false;
  return (
    typeof e.allow === 'boolean' &&
    typeof e.eval_ms === 'number' &&
    (e.policy_error === undefined || typeof e.policy_error === 'string') &&
    (e.failure_code === undefined || typeof e.failure_code === 'string')
  );
}

// Every fixed byte of a line: the keys, the punctuation, the longest `allow` and the message.
const FIXED_BOUND =
  '{"level":50,"time":"+275760-09-13T00:00:00.000Z","allow":false,"eval_ms":,"policy_error":,"failure_code":,"msg":"decision"}\n'
    .length + STRING_FIELDS.reduce((n, k) => n + k.length + 6, 4);

const LEVEL_INFO = ascii(`{"level":${INFO}`);
const LEVEL_ERROR = ascii(`{"level":${ERROR}`);
const key = (name: string): Buffer => ascii(`,"${name}":`);
const DECISION_ID = key('decision_id');
const CALLER = key('caller');
const SPIFFE_ID = key('spiffe_id');
const NAMESPACE = key('namespace');
const SNAT_POOL = key('snat_pool');
const REASON = key('reason');
const REASON_CLASS = key('reason_class');
const DESTINATION = key('destination');
const X_REQUEST_ID = key('x_request_id');
const TRACEPARENT = key('traceparent');
const POLICY_REVISION = key('policy_revision');
const POLICY_ERROR = key('policy_error');
const FAILURE_CODE = key('failure_code');
const ALLOW_TRUE = ascii(',"allow":true');
const ALLOW_FALSE = ascii(',"allow":false');
const EVAL_MS = ascii(',"eval_ms":');
const MSG = ascii(',"msg":"decision"}\n');

export function createServiceLog(opts: ServiceLogOptions): ServiceLog {
  const now = opts.now ?? Date.now;
  // Checks answered within one millisecond share its ISO text: built once, not once a line.
  let lastMs = NaN;
  let lastTime = '';
  const time = (): string => {
    const ms = now();
    if (ms !== lastMs) {
      lastMs = ms;
      lastTime = `,"time":"${new Date(ms).toISOString()}"`;
    }
    return lastTime;
  };
  const base: Record<string, unknown> = { service: 'egress-authz' };
  if (opts.worker !== undefined) base.worker = opts.worker;
  const out = opts.destination;
  const logger = pino({ level: opts.level, base, timestamp: time }, out);
  const bindings = ascii(
    `,"service":"egress-authz"${opts.worker !== undefined ? `,"worker":${jsonNumber(opts.worker)}` : ''}`,
  );
  // the time field's bytes, encoded again when its millisecond changes
  const timeRoom = Buffer.alloc(64);
  let timeBytes: Uint8Array = timeRoom.subarray(0, 0);
  let timeMs = NaN;
  return {
    logger,
    decisionLine(e) {
      const level = e.policy_error === undefined ? INFO : ERROR;
      if (logger.levelVal > level) return;
      if (!wellTyped(e)) {
        if (level === ERROR) logger.error(e, 'decision');
        else logger.info(e, 'decision');
        return;
      }
      const policyError = e.policy_error;
      const failureCode = e.failure_code;
      // Each field by name: a loop over STRING_FIELDS reads them through one megamorphic keyed load.
      const units =
        e.decision_id.length +
        e.caller.length +
        e.spiffe_id.length +
        e.namespace.length +
        e.snat_pool.length +
        e.reason.length +
        e.reason_class.length +
        e.destination.length +
        e.x_request_id.length +
        e.traceparent.length +
        e.policy_revision.length +
        (policyError === undefined ? 0 : policyError.length) +
        (failureCode === undefined ? 0 : failureCode.length);
      let at = out.reserve(FIXED_BOUND + bindings.length + NUMBER_BOUND + STRING_BOUND * units);
      const b = out.buffer;
      const t = time();
      if (lastMs !== timeMs) {
        timeMs = lastMs;
        timeBytes = timeRoom.subarray(0, timeRoom.write(t, 'latin1'));
      }
      at = put(b, at, level === INFO ? LEVEL_INFO : LEVEL_ERROR);
      at = put(b, at, timeBytes);
      at = put(b, at, bindings);
      at = putString(b, put(b, at, DECISION_ID), e.decision_id);
      at = putString(b, put(b, at, CALLER), e.caller);
      at = putString(b, put(b, at, SPIFFE_ID), e.spiffe_id);
      at = putString(b, put(b, at, NAMESPACE), e.namespace);
      at = put(b, at, e.allow ? ALLOW_TRUE : ALLOW_FALSE);
      at = putString(b, put(b, at, SNAT_POOL), e.snat_pool);
      at = putString(b, put(b, at, REASON), e.reason);
      at = putString(b, put(b, at, REASON_CLASS), e.reason_class);
      at = putString(b, put(b, at, DESTINATION), e.destination);
      at = putString(b, put(b, at, X_REQUEST_ID), e.x_request_id);
      at = putString(b, put(b, at, TRACEPARENT), e.traceparent);
      at = putString(b, put(b, at, POLICY_REVISION), e.policy_revision);
      at = put(b, at, EVAL_MS);
      at += b.write(jsonNumber(e.eval_ms), at, 'latin1');
      if (policyError !== undefined) at = putString(b, put(b, at, POLICY_ERROR), policyError);
      if (failureCode !== undefined) at = putString(b, put(b, at, FAILURE_CODE), failureCode);
      out.commit(put(b, at, MSG));
    },
  };
}
