// The policy input document. For Envoy it is opa-envoy-plugin's document (the CheckRequest in protojson
// form plus parsed_path, parsed_query, parsed_body, version), so policies written for that plugin port
// over; every caller adds `caller`, the validated `identity` and a normalised `destination`.
import type { Identity } from '../identity/identity.js';

/** The transport a request came in on. In the policy input and the decision log it is `caller` (a
 * contract, docs/design.md); inside the code it is a transport, since `caller` is the TLS peer. */
export type Transport = 'envoy' | 'sideband' | 'cli';

export interface Destination {
  /** lowercased host name or IP address; "" when the caller did not say */
  host: string;
  port?: number;
}

export interface PolicyInput {
  caller: Transport;
  /** null only when identity resolution failed; the policy is never asked then (see decision.ts) */
  identity: Identity | null;
  identity_error?: string;
  destination: Destination;
  [field: string]: unknown;
}

/** A CheckRequest as @grpc/proto-loader decodes it with the options in envoy-protos.ts. */
export interface CheckRequest {
  attributes?: {
    source?: Peer;
    destination?: Peer;
    request?: { time?: { seconds?: string; nanos?: number }; http?: HttpRequest };
    contextExtensions?: Record<string, string>;
    metadataContext?: unknown;
    routeMetadataContext?: unknown;
    tlsSession?: { sni?: string };
    [field: string]: unknown;
  };
}

export interface Peer {
  address?: { socketAddress?: { address?: string; portValue?: number } };
  service?: string;
  labels?: Record<string, string>;
  principal?: string;
  certificate?: string;
}

export interface HttpRequest {
  id?: string;
  method?: string;
  headers?: Record<string, string>;
  headerMap?: { headers?: Array<{ key?: string; value?: string; rawValue?: Buffer }> };
  path?: string;
  host?: string;
  scheme?: string;
  query?: string;
  fragment?: string;
  size?: string;
  protocol?: string;
  body?: string;
  rawBody?: Buffer;
}

const VERSION_V3 = Object.freeze({ encoding: 'protojson', ext_authz: 'v3' });

export function buildEnvoyInput(req: CheckRequest, identity: Identity | null, identityError?: string): PolicyInput {
  const attributes = protojsonAttributes(req.attributes ?? {});
  const http = req.attributes?.request?.http;
  const path = http?.path ?? '';
  const { parsedPath, parsedQuery } = parsePathAndQuery(path);
  const headers = http ? requestHeaders(http) : {};
  const input: PolicyInput = {
    caller: 'envoy',
    identity,
    destination: parseDestination(http?.host ?? ''),
    attributes,
    parsed_path: parsedPath,
    parsed_query: parsedQuery,
    parsed_body: parseJsonBody(headers, http?.body),
    truncated_body: isTruncated(headers, http?.body),
    source_principal: req.attributes?.source?.principal ?? '',
    version: VERSION_V3,
  };
  if (identityError !== undefined) input.identity_error = identityError;
  return input;
}

export interface SidebandRequest {
  /** the PEM the BIG-IP sent (leaf first) */
  certificatePem: string;
  virtualServer?: string;
  clientAddress?: string;
  destination?: string;
  requestId?: string;
  /** the sideband request's own headers, lowercased names */
  headers: Record<string, string>;
}

export function buildSidebandInput(
  req: SidebandRequest,
  identity: Identity | null,
  identityError?: string,
): PolicyInput {
  const client = splitHostPort(req.clientAddress ?? '');
  const source: Record<string, unknown> = { certificate: encodeURIComponent(req.certificatePem) };
  if (identity) source.principal = identity.spiffe_id;
  if (client.host)
    source.address = { socketAddress: { address: client.host, ...(client.port ? { portValue: client.port } : {}) } };
  const input: PolicyInput = {
    caller: 'sideband',
    identity,
    destination: parseDestination(req.destination ?? ''),
    attributes: { source, request: { http: { headers: req.headers, host: req.destination ?? '' } } },
    sideband: { virtual_server: req.virtualServer ?? '', client_address: req.clientAddress ?? '' },
    version: VERSION_V3,
  };
  if (identityError !== undefined) input.identity_error = identityError;
  return input;
}

/** `eval --spiffe-id/--cert`: the smallest input that the policy needs, shaped like the Envoy one. */
export function buildCliInput(destination: string, identity: Identity | null, identityError?: string): PolicyInput {
  const input: PolicyInput = {
    caller: 'cli',
    identity,
    destination: parseDestination(destination),
    attributes: { source: identity ? { principal: identity.spiffe_id } : {}, request: { http: { host: destination } } },
    version: VERSION_V3,
  };
  if (identityError !== undefined) input.identity_error = identityError;
  return input;
}

/** "host", "host:port", "[v6]:port" → Destination; anything unparseable gives host "" (unknown). */
export function parseDestination(text: string): Destination {
  // splitHostPort's answer has a port only when there is one: already the Destination.
  return splitHostPort(text.trim().toLowerCase());
}

function splitHostPort(text: string): { host: string; port?: number } {
  if (text === '') return { host: '' };
  let host = text;
  let portText: string | undefined;
  if (text.startsWith('[')) {
    const end = text.indexOf(']');
    if (end < 0) return { host: '' };
    host = text.slice(1, end);
    const rest = text.slice(end + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) return { host: '' };
      portText = rest.slice(1);
    }
  } else {
    const colon = text.lastIndexOf(':');
    if (colon >= 0) {
      if (text.indexOf(':') !== colon) return { host: text }; // bare IPv6 address, no port
      host = text.slice(0, colon);
      portText = text.slice(colon + 1);
    }
  }
  if (portText === undefined) return { host };
  if (!/^[0-9]{1,5}$/.test(portText)) return { host: '' };
  const port = Number(portText);
  if (port < 1 || port > 65535) return { host: '' };
  return { host, port };
}

export function requestHeaders(http: HttpRequest): Record<string, string> {
  if (http.headers && hasOwnKey(http.headers)) return http.headers;
  // Envoy sends header_map instead of headers when encode_raw_headers is set.
  const out: Record<string, string> = {};
  for (const h of http.headerMap?.headers ?? []) {
    if (!h.key) continue;
    out[h.key.toLowerCase()] = h.value ?? (h.rawValue ? Buffer.from(h.rawValue).toString('utf8') : '');
  }
  return out;
}

function hasOwnKey(o: object): boolean {
  // Object.keys would build an array of every header name on every Check just to count it.
  for (const key in o) if (Object.hasOwn(o, key)) return true;
  return false;
}

/**
 * parsed_path and parsed_query as the WHATWG URL parser gives them (parsePathAndQueryReference), without
 * building a URL for the common request path: one whose characters that parser and the decoders leave
 * as they are (no '%', '+', '\\', '#', controls, spaces or non-ASCII), with no dot segment to remove and
 * no leading '//' that would read as an authority. Anything else takes the reference. Held to it by
 * test/fuzz/input-fast-path.fuzz.test.ts.
 */
export function parsePathAndQuery(path: string): ParsedPathAndQuery {
  if (!isPlainPath(path)) return parsePathAndQueryReference(path);
  const parsedQuery: Record<string, string[]> = {};
  const q = path.indexOf('?');
  if (q < 0) return { parsedPath: path.slice(1).split('/'), parsedQuery };
  for (const pair of path.slice(q + 1).split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    addQueryValue(parsedQuery, eq < 0 ? pair : pair.slice(0, eq), eq < 0 ? '' : pair.slice(eq + 1));
  }
  return { parsedPath: path.slice(1, q).split('/'), parsedQuery };
}

export interface ParsedPathAndQuery {
  parsedPath: string[];
  parsedQuery: Record<string, string[]>;
}

function isPlainPath(path: string): boolean {
  if (path.charCodeAt(0) !== 0x2f || path.charCodeAt(1) === 0x2f) return false;
  let query = false;
  for (let i = 1; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c === 0x3f)
      query = true; // '?': '/' and '.' mean nothing after it
    else if (!query && c === 0x2e && path.charCodeAt(i - 1) === 0x2f)
      return false; // "/." may be a dot segment
    else if (c >= 128 || PLAIN[c] === 0) return false;
  }
  return true;
}

/** ASCII characters that mean the same to the URL parser, URLSearchParams and decodeURIComponent. */
const PLAIN = (() => {
  const table = new Uint8Array(128);
  const chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&()*,;=:@/?';
  for (let i = 0; i < chars.length; i++) table[chars.charCodeAt(i)] = 1;
  return table;
})();

/** The careful parse, by the WHATWG URL parser: what the fast path is held to. */
export function parsePathAndQueryReference(path: string): ParsedPathAndQuery {
  const parsedQuery: Record<string, string[]> = {};
  let url: URL;
  try {
    url = new URL(path, 'http://authority.invalid');
  } catch {
    return { parsedPath: [''], parsedQuery };
  }
  let pathname = url.pathname;
  try {
    pathname = decodeURIComponent(pathname);
  } catch {
    // keep the raw form: the policy still sees something, and the decision does not depend on it
  }
  const parsedPath = pathname.replace(/^\/+/, '').split('/');
  for (const [k, v] of url.searchParams) addQueryValue(parsedQuery, k, v);
  return { parsedPath, parsedQuery };
}

/**
 * parsed_query[name].push(value) for any name a client sends: "constructor" or "toString" found the
 * inherited member instead of a list (and the Check threw), "__proto__" would set the prototype.
 */
function addQueryValue(query: Record<string, string[]>, name: string, value: string): void {
  if (Object.hasOwn(query, name)) query[name]!.push(value);
  else if (name === '__proto__')
    Object.defineProperty(query, name, { value: [value], enumerable: true, writable: true, configurable: true });
  else query[name] = [value];
}

function parseJsonBody(headers: Record<string, string>, body: string | undefined): unknown {
  if (!body || !(headers['content-type'] ?? '').includes('application/json') || isTruncated(headers, body)) return null;
  try {
    return JSON.parse(body) as unknown;
  } catch {
    return null;
  }
}

function isTruncated(headers: Record<string, string>, body: string | undefined): boolean {
  const cl = headers['content-length'];
  if (cl === undefined || body === undefined) return false;
  const n = Number(cl);
  return Number.isFinite(n) && n > Buffer.byteLength(body);
}

// proto-loader gives Timestamps as {seconds, nanos}, bytes as Buffers and Structs as {fields: …};
// protojson gives RFC 3339 strings, base64 and plain JSON. Convert the few places where they differ.
function protojsonAttributes(attrs: NonNullable<CheckRequest['attributes']>): Record<string, unknown> {
  const request = attrs.request;
  const needsRequest = request !== undefined && (request.time !== undefined || request.http?.rawBody !== undefined);
  if (!needsRequest && !attrs.metadataContext && !attrs.routeMetadataContext) return attrs;
  const out: Record<string, unknown> = Object.assign({}, attrs);
  if (request && needsRequest) {
    const r: Record<string, unknown> = Object.assign({}, request);
    if (request.time) r.time = timestampToRfc3339(request.time);
    if (request.http?.rawBody)
      r.http = Object.assign({}, request.http, { rawBody: Buffer.from(request.http.rawBody).toString('base64') });
    out.request = r;
  }
  if (attrs.metadataContext) out.metadataContext = metadataToJson(attrs.metadataContext);
  if (attrs.routeMetadataContext) out.routeMetadataContext = metadataToJson(attrs.routeMetadataContext);
  return out;
}

function timestampToRfc3339(ts: { seconds?: string; nanos?: number }): string {
  const ms = Number(ts.seconds ?? 0) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6);
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

function metadataToJson(md: unknown): unknown {
  const m = md as { filterMetadata?: Record<string, unknown>; typedFilterMetadata?: unknown };
  if (!m.filterMetadata) return {};
  const filterMetadata: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m.filterMetadata)) filterMetadata[k] = structToJson(v);
  return { filterMetadata };
}

function structToJson(s: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const fields = (s as { fields?: Record<string, unknown> } | undefined)?.fields ?? {};
  for (const [k, v] of Object.entries(fields)) out[k] = valueToJson(v);
  return out;
}

function valueToJson(v: unknown): unknown {
  const x = v as Record<string, unknown>;
  if (x == null) return null;
  if ('stringValue' in x) return x.stringValue;
  if ('numberValue' in x) return x.numberValue;
  if ('boolValue' in x) return x.boolValue;
  if ('structValue' in x) return structToJson(x.structValue);
  if ('listValue' in x) return ((x.listValue as { values?: unknown[] })?.values ?? []).map(valueToJson);
  return null;
}
