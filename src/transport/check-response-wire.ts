// Decision → CheckResponse bytes, written straight from the decision. protobufjs's way (toCheckResponse
// then proto-loader's serialize: fromObject builds a message object per nested field, then encodes) was
// ~9 KB of garbage and as much CPU as the rest of a cached Check (`npm run bench:pipeline` measures
// both). The message is small and its shape fixed, so each field is sized, then written once into one
// buffer. toCheckResponse stays the reference: test/fuzz/check-response-wire.fuzz.test.ts requires the
// very bytes protobufjs writes for every decision, fields in number order, defaults written as it
// writes them (status code 0, empty strings, append false).
import type { Decision } from '../decision/decision.js';
import { GRPC_DECISION_ID_HEADER, GRPC_SNAT_POOL_HEADER } from './headers.js';
import { CHECK_OK, CHECK_PERMISSION_DENIED } from './envoy-response.js';

const VARINT = 0;
const LEN = 2;

/** A field whose value is a string (UTF-8), a varint, or a nested message (its fields). */
interface Part {
  tag: number;
  /** bytes of the value: a string's UTF-8 length, a message's encoded length */
  len: number;
  str?: string;
  int?: number;
  sub?: Part[];
}

const tagOf = (field: number, wire: number) => (field << 3) | wire;

function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    size++;
  }
  return size;
}

// Strings go out as well-formed UTF-8: a lone surrogate (possible in a policy's JSON answer) becomes
// U+FFFD, as Buffer writes it, where protobufjs would write bytes Envoy's parser refuses.
function str(field: number, s: string): Part {
  return { tag: tagOf(field, LEN), len: Buffer.byteLength(s), str: s };
}

function int(field: number, n: number): Part {
  return { tag: tagOf(field, VARINT), len: varintSize(n), int: n };
}

function msg(field: number, sub: Part[]): Part {
  return { tag: tagOf(field, LEN), len: sizeOf(sub), sub };
}

function partSize(p: Part): number {
  // every tag here is below 128: one byte
  return p.int !== undefined ? 1 + p.len : 1 + varintSize(p.len) + p.len;
}

function sizeOf(parts: Part[]): number {
  let n = 0;
  for (const p of parts) n += partSize(p);
  return n;
}

function writeVarint(buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 0x80);
  }
  buf[at++] = n;
  return at;
}

function writeParts(buf: Buffer, at: number, parts: Part[]): number {
  for (const p of parts) {
    buf[at++] = p.tag;
    if (p.int !== undefined) {
      at = writeVarint(buf, at, p.int);
      continue;
    }
    at = writeVarint(buf, at, p.len);
    if (p.str !== undefined) at += buf.write(p.str, at, p.len, 'utf8');
    else at = writeParts(buf, at, p.sub!);
  }
  return at;
}

/** HeaderValueOption{header: {key, value}, append: BoolValue{false}}: Envoy overwrites, never appends. */
function header(field: number, key: string, value: string): Part {
  return msg(field, [msg(1, [str(1, key), str(2, value)]), msg(2, [int(1, 0)])]);
}

/** One entry of google.protobuf.Struct's map<string, Value>. */
function structEntry(key: string, value: Part): Part {
  return msg(1, [str(1, key), msg(2, [value])]);
}

// field numbers: envoy.service.auth.v3.CheckResponse, OkHttpResponse, DeniedHttpResponse;
// google.rpc.Status; envoy.type.v3.HttpStatus; google.protobuf.Value (string_value 3, bool_value 4)
export function encodeCheckResponse(d: Decision): Buffer {
  const parts: Part[] = [];
  const extra = Object.entries(d.headers);
  if (d.allow) {
    parts.push(msg(1, [int(1, CHECK_OK), str(2, '')]));
    const headers: Part[] = [];
    if (d.snat_pool) headers.push(header(2, GRPC_SNAT_POOL_HEADER, d.snat_pool));
    headers.push(header(2, GRPC_DECISION_ID_HEADER, d.decision_id));
    for (const [k, v] of extra) headers.push(header(2, k, v));
    parts.push(msg(3, headers));
  } else {
    parts.push(msg(1, [int(1, CHECK_PERMISSION_DENIED), str(2, d.reason)]));
    const denied: Part[] = [msg(1, [int(1, d.http_status)])];
    denied.push(header(2, GRPC_DECISION_ID_HEADER, d.decision_id), header(2, 'content-type', 'text/plain'));
    for (const [k, v] of extra) denied.push(header(2, k, v));
    denied.push(str(3, `${d.body}\n`));
    parts.push(msg(2, denied));
  }
  parts.push(
    msg(4, [
      structEntry('decision_id', str(3, d.decision_id)),
      structEntry('spiffe_id', str(3, d.identity?.spiffe_id ?? '')),
      structEntry('snat_pool', str(3, d.snat_pool)),
      structEntry('allow', int(4, d.allow ? 1 : 0)),
      structEntry('policy_revision', str(3, d.policy_revision)),
    ]),
  );
  const buf = Buffer.allocUnsafe(sizeOf(parts));
  writeParts(buf, 0, parts);
  return buf;
}
