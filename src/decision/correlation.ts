// The correlation fields of a decision log line (x-request-id, traceparent). With Envoy's
// preserve_external_request_id, and always on the sideband, a client chooses them: they are bounded and
// made printable before they go anywhere, and traceparent is kept only when it is a valid W3C value.
import type { Correlation } from './decision-log.js';

/** The request headers the correlation fields come from (Envoy's and the iRule's requests). */
export const REQUEST_ID_HEADER = 'x-request-id';
export const TRACEPARENT_HEADER = 'traceparent';

/** Envoy's own ids are UUIDs (36); the iRule's are 22 characters. */
const MAX_REQUEST_ID_CHARS = 128;

// W3C Trace Context §3.2: version-traceid-parentid-flags, lowercase hex, version ff is invalid.
const TRACEPARENT_V00 = /^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/;
const TRACEPARENT_LATER = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(?:-|$)/;
const TRACEPARENT_CHARS = 55;

export function correlationOf(requestId: unknown, traceparent: unknown): Correlation {
  const c: Correlation = {};
  const id = boundedRequestId(requestId);
  if (id !== undefined) c.requestId = id;
  const tp = validTraceparent(traceparent);
  if (tp !== undefined) c.traceparent = tp;
  return c;
}

function boundedRequestId(v: unknown): string | undefined {
  if (typeof v !== 'string' || v === '') return undefined;
  const clipped = v.length > MAX_REQUEST_ID_CHARS ? v.slice(0, MAX_REQUEST_ID_CHARS) : v;
  return clipped.replace(/[^\x20-\x7e]/g, '?');
}

/** The traceparent as a tracer would read it, or undefined when it is not one. */
function validTraceparent(v: unknown): string | undefined {
  if (typeof v !== 'string') return undefined;
  const v00 = TRACEPARENT_V00.exec(v);
  const ids: [string, string] | undefined = v00 ? [v00[1]!, v00[2]!] : laterVersion(v);
  if (!ids || /^0+$/.test(ids[0]) || /^0+$/.test(ids[1])) return undefined;
  return v.slice(0, TRACEPARENT_CHARS);
}

// A version above 00 may append fields after the known ones; they are not ours to keep.
function laterVersion(v: string): [string, string] | undefined {
  if (v.length > 512) return undefined;
  const m = TRACEPARENT_LATER.exec(v);
  if (!m || m[1] === '00' || m[1] === 'ff') return undefined;
  return [m[2]!, m[3]!];
}
