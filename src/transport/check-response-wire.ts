// Decision → CheckResponse bytes, written straight from the decision. protobufjs's way (toCheckResponse
// then proto-loader's serialize: fromObject builds a message object per nested field, then encodes) was
// ~9 KB of garbage and as much CPU as the rest of a cached Check (`npm run bench:pipeline` measures
// both). The message is small and its shape fixed, so it is written back to front into one reused
// buffer: a nested message's length is known once its fields are written, so nothing is sized ahead and
// no object is made per field (a tree of field objects sized first was 3.4 KB a Check). toCheckResponse
// stays the reference: test/fuzz/check-response-wire.fuzz.test.ts requires the very bytes protobufjs
// writes for every decision, fields in number order, defaults written as it writes them (status code 0,
// empty strings, append false).
import type { Decision } from '../decision/decision.js';
import { GRPC_DECISION_ID_HEADER, GRPC_SNAT_POOL_HEADER } from './headers.js';
import { CHECK_OK, CHECK_PERMISSION_DENIED } from './envoy-response.js';

const VARINT = 0;
const LEN = 2;
const tagOf = (field: number, wire: number) => (field << 3) | wire;

function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    size++;
  }
  return size;
}

// The answer is written from the end of `buf` towards its start; `at` is the first byte written so far.
const SCRATCH_BYTES = 64 * 1024;
const scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
let buf = scratch;
let at = 0;

function putVarint(n: number): void {
  at -= varintSize(n);
  let i = at;
  while (n >= 0x80) {
    buf[i++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 0x80);
  }
  buf[i] = n;
}

// Strings go out as well-formed UTF-8: a lone surrogate (possible in a policy's JSON answer) becomes
// U+FFFD, as Buffer writes it, where protobufjs would write bytes Envoy's parser refuses.
function putStr(field: number, s: string): void {
  const len = Buffer.byteLength(s);
  at -= len;
  buf.write(s, at, len, 'utf8');
  putVarint(len);
  buf[--at] = tagOf(field, LEN);
}

function putInt(field: number, n: number): void {
  putVarint(n);
  buf[--at] = tagOf(field, VARINT);
}

/** Closes a nested message whose fields were written since `end` was read from `at`. */
function close(field: number, end: number): void {
  putVarint(end - at);
  buf[--at] = tagOf(field, LEN);
}

/** HeaderValueOption{header: {key, value}, append: BoolValue{false}}: Envoy overwrites, never appends. */
function putHeader(field: number, key: string, value: string): void {
  const option = at;
  const append = at;
  putInt(1, 0);
  close(2, append);
  const header = at;
  putStr(2, value);
  putStr(1, key);
  close(1, header);
  close(field, option);
}

/** One entry of google.protobuf.Struct's map<string, Value>. */
function putStructString(key: string, value: string): void {
  const entry = at;
  const v = at;
  putStr(3, value);
  close(2, v);
  putStr(1, key);
  close(1, entry);
}

function putStructBool(key: string, value: boolean): void {
  const entry = at;
  const v = at;
  putInt(4, value ? 1 : 0);
  close(2, v);
  putStr(1, key);
  close(1, entry);
}

/** The policy's extra headers, last first (written back to front, they come out in their order). */
function putExtraHeaders(headers: Record<string, string>): void {
  const keys = Object.keys(headers);
  for (let i = keys.length - 1; i >= 0; i--) putHeader(2, keys[i]!, headers[keys[i]!]!);
}

/**
 * More than the answer can take: 3 bytes a UTF-16 unit of every string it carries, counted as often as it
 * is written (the decision id twice, the SNAT pool twice), and 64 bytes a field, where a field's tag,
 * length and the fixed names and numbers around it take under 40.
 */
function upperBound(d: Decision): number {
  let n = d.decision_id.length * 3 + d.snat_pool.length * 2 + d.reason.length + d.body.length;
  n += (d.identity?.spiffe_id.length ?? 0) + d.policy_revision.length;
  let fields = 40;
  for (const k in d.headers) {
    n += k.length + (d.headers[k]?.length ?? 0);
    fields += 4;
  }
  return 3 * n + 64 * fields;
}

// field numbers: envoy.service.auth.v3.CheckResponse, OkHttpResponse, DeniedHttpResponse;
// google.rpc.Status; envoy.type.v3.HttpStatus; google.protobuf.Value (string_value 3, bool_value 4)
export function encodeCheckResponse(d: Decision): Buffer {
  return encode(d, false);
}

/** The same bytes as one gRPC message frame (flag 0, 4-byte length), for check-stream.ts to send as is. */
export function encodeCheckResponseFrame(d: Decision): Buffer {
  return encode(d, true);
}

function encode(d: Decision, frame: boolean): Buffer {
  const bound = upperBound(d) + 5;
  buf = bound <= SCRATCH_BYTES ? scratch : Buffer.allocUnsafe(bound);
  at = buf.length;
  const end = at;
  // dynamic_metadata (4)
  const metadata = at;
  putStructString('policy_revision', d.policy_revision);
  putStructBool('allow', d.allow);
  putStructString('snat_pool', d.snat_pool);
  putStructString('spiffe_id', d.identity?.spiffe_id ?? '');
  putStructString('decision_id', d.decision_id);
  close(4, metadata);
  if (d.allow) {
    // ok_response (3)
    const ok = at;
    putExtraHeaders(d.headers);
    putHeader(2, GRPC_DECISION_ID_HEADER, d.decision_id);
    if (d.snat_pool) putHeader(2, GRPC_SNAT_POOL_HEADER, d.snat_pool);
    close(3, ok);
    const status = at;
    putStr(2, '');
    putInt(1, CHECK_OK);
    close(1, status);
  } else {
    // denied_response (2)
    const denied = at;
    putStr(3, `${d.body}\n`);
    putExtraHeaders(d.headers);
    putHeader(2, 'content-type', 'text/plain');
    putHeader(2, GRPC_DECISION_ID_HEADER, d.decision_id);
    const httpStatus = at;
    putInt(1, d.http_status);
    close(1, httpStatus);
    close(2, denied);
    const status = at;
    putStr(2, d.reason);
    putInt(1, CHECK_PERMISSION_DENIED);
    close(1, status);
  }
  if (frame) {
    // Written back to front like the rest, so the answer is copied out of the scratch buffer once.
    const length = end - at;
    at -= 5;
    buf[at] = 0;
    buf.writeUInt32BE(length, at + 1);
  }
  const out = Buffer.allocUnsafe(end - at);
  buf.copy(out, 0, at, end);
  buf = scratch;
  return out;
}
