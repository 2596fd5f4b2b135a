// The serve command's logger and its decision lines. The decision line is the one line written for
// every Check, so it has a serializer of its own: pino's general one walks the entry's keys, looks up
// serializers and builds a string for each field, 3.6 KB of garbage and 1.7 µs a line, where one template
// over the known fields makes 1.5 KB in 0.9 µs (npm run bench:alloc). The bytes are pino's own for the
// same entry (test/service/service-log.test.ts holds the two to equality over generated entries), so a
// log pipeline parsing the service's lines sees no difference.
import pino from 'pino';
import type { DecisionLogEntry } from '../decision/decision-log.js';

export interface ServiceLogOptions {
  level: string;
  /** the worker's id under `serve --workers`: on every line of that worker */
  worker?: number;
  destination: pino.DestinationStream;
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
  const logger = pino({ level: opts.level, base, timestamp: time }, opts.destination);
  const bindings = `,"service":"egress-authz"${opts.worker !== undefined ? `,"worker":${jsonNumber(opts.worker)}` : ''}`;
  const out = opts.destination;

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
      out.write(
        `{"level":${level}${time()}${bindings},"decision_id":${jsonString(e.decision_id)},"caller":${jsonString(e.caller)},"spiffe_id":${jsonString(e.spiffe_id)},"namespace":${jsonString(e.namespace)},"allow":${e.allow},"snat_pool":${jsonString(e.snat_pool)},"reason":${jsonString(e.reason)},"reason_class":${jsonString(e.reason_class)},"destination":${jsonString(e.destination)},"x_request_id":${jsonString(e.x_request_id)},"traceparent":${jsonString(e.traceparent)},"policy_revision":${jsonString(e.policy_revision)},"eval_ms":${jsonNumber(e.eval_ms)}${e.policy_error === undefined ? '' : `,"policy_error":${jsonString(e.policy_error)}`}${e.failure_code === undefined ? '' : `,"failure_code":${jsonString(e.failure_code)}`},"msg":"decision"}\n`,
      );
    },
  };
}
