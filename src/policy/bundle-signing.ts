// OPA bundle signatures (`.signatures.json`), made and checked as OPA makes and checks them, so that a
// bundle signed by `opa build --signing-key` verifies here and one signed by `egress-authz build`
// verifies with `opa run --verification-key`. The file holds one JWS (compact JWT) whose payload lists
// every file of the bundle with its hash; the JWS itself is made and checked by `jose`, and keys are
// read by node:crypto: no cryptography is written here, only OPA's rules around it:
// - exactly one signature; the configured key and algorithm, whatever the token's header names;
// - the token's `scope` claim equals the configured scope ("" when none);
// - every file of the bundle but `.signatures.json` is listed, every listed file is in the bundle, and
//   each hash matches. JSON files (data.json, .manifest) are hashed in OPA's canonical form (keys
//   sorted, no insignificant whitespace), so re-indenting them does not break a signature.
import { createHash, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { CompactSign, compactVerify } from 'jose';
import { errorMessage } from '../common/errors.js';

export const SIGNATURES_FILE = '.signatures.json';
export const DEFAULT_SIGNING_ALG = 'RS256';
/** What `opa build` and `opa run` call the key when no key id is given. */
const DEFAULT_KEY_ID = 'default';

const ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512'];
const HMAC_ALGORITHMS = ['HS256', 'HS384', 'HS512'];
export const SIGNING_ALGORITHMS: readonly string[] = [...ALGORITHMS, ...HMAC_ALGORITHMS];

// OPA's names for file hash algorithms. MD5 and SHA-1, which OPA also accepts, are refused: a signer's
// choice of a broken hash would let a colliding file pass under a good signature.
const FILE_HASHES: Record<string, string> = {
  'SHA-224': 'sha224',
  'SHA-256': 'sha256',
  'SHA-384': 'sha384',
  'SHA-512': 'sha512',
  'SHA-512-224': 'sha512-224',
  'SHA-512-256': 'sha512-256',
};

/** The key material as read from the key file; plain data, so it can cross to a worker thread. */
export interface BundleSigningKey {
  /** the file's bytes: a PEM key (RSA, ECDSA) or, for HS*, the shared secret itself */
  key: Uint8Array;
  alg: string;
}

export interface BundleVerification extends BundleSigningKey {
  /** the key's name; OPA uses it to pick a key from its keys table, with one key it only labels it */
  keyId?: string;
  /** the `scope` claim the signature must carry; default "" */
  scope?: string;
}

interface FileInfo {
  name: string;
  hash: string;
  algorithm: string;
}

/** A usage problem with a key or algorithm given on the command line, or undefined when fine. */
export function keyProblem(k: BundleSigningKey, use: 'sign' | 'verify'): string | undefined {
  if (!SIGNING_ALGORITHMS.includes(k.alg))
    return `unsupported signing algorithm ${JSON.stringify(k.alg)} (one of ${SIGNING_ALGORITHMS.join(', ')})`;
  try {
    cryptoKey(k, use);
  } catch (e) {
    return `the key is not a usable ${k.alg} ${use === 'sign' ? 'signing' : 'verification'} key: ${errorMessage(e)}`;
  }
  return undefined;
}

function cryptoKey(k: BundleSigningKey, use: 'sign' | 'verify'): KeyObject | Uint8Array {
  if (HMAC_ALGORITHMS.includes(k.alg)) {
    if (k.key.byteLength === 0) throw new Error('the HMAC secret is empty');
    return k.key;
  }
  const pem = Buffer.from(k.key);
  const key = use === 'sign' ? createPrivateKey(pem) : createPublicKey(pem);
  const type = key.asymmetricKeyType;
  const curve = key.asymmetricKeyDetails?.namedCurve;
  const fits = k.alg.startsWith('ES')
    ? type === 'ec' && curve === EC_CURVES[k.alg]
    : type === 'rsa' || (type === 'rsa-pss' && k.alg.startsWith('PS'));
  if (!fits) throw new Error(`a ${type ?? 'unknown'}${curve ? ` ${curve}` : ''} key does not fit ${k.alg}`);
  return key;
}

const EC_CURVES: Record<string, string> = { ES256: 'prime256v1', ES384: 'secp384r1', ES512: 'secp521r1' };

/** The `.signatures.json` for these files (every file but an existing `.signatures.json`). */
export async function signBundleFiles(
  files: ReadonlyMap<string, Uint8Array>,
  k: BundleSigningKey & { keyId?: string },
): Promise<Uint8Array> {
  const keyId = k.keyId ?? DEFAULT_KEY_ID;
  const list: FileInfo[] = [];
  for (const [name, body] of [...files].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (name === SIGNATURES_FILE) continue;
    list.push({ name, hash: fileHash(name, body, 'sha256'), algorithm: 'SHA-256' });
  }
  // `keyid` in the payload is deprecated in OPA but still written by `opa build`; kept for old verifiers.
  const payload = Buffer.from(JSON.stringify({ files: list, keyid: keyId }));
  const jws = await new CompactSign(payload)
    .setProtectedHeader({ alg: k.alg, kid: keyId, typ: 'JWT' })
    .sign(cryptoKey(k, 'sign'));
  return Buffer.from(`${JSON.stringify({ signatures: [jws] }, null, 1)}\n`);
}

/**
 * Rejects, saying why, unless the bundle carries a signature by the configured key over exactly its
 * files. Resolves when it does.
 */
export async function verifyBundleFiles(files: ReadonlyMap<string, Uint8Array>, v: BundleVerification): Promise<void> {
  const raw = files.get(SIGNATURES_FILE);
  if (!raw) throw new Error(`bundle is not signed (no ${SIGNATURES_FILE}) and a verification key is configured`);
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(raw));
  } catch (e) {
    throw new Error(`bundle ${SIGNATURES_FILE} is not valid JSON: ${errorMessage(e)}`);
  }
  const signatures = (doc as { signatures?: unknown } | null)?.signatures;
  if (!Array.isArray(signatures) || signatures.length === 0)
    throw new Error(`bundle ${SIGNATURES_FILE}: missing JWT (expected exactly one)`);
  if (signatures.length > 1)
    throw new Error(`bundle ${SIGNATURES_FILE}: multiple JWTs not supported (expected exactly one)`);
  const token: unknown = signatures[0];
  if (typeof token !== 'string') throw new Error(`bundle ${SIGNATURES_FILE}: the JWT is not a string`);

  let payload: Uint8Array;
  try {
    ({ payload } = await compactVerify(token, cryptoKey(v, 'verify'), { algorithms: [v.alg] }));
  } catch (e) {
    throw new Error(`bundle signature is not valid for the verification key: ${errorMessage(e)}`);
  }
  let claims: { files?: unknown; scope?: unknown };
  try {
    claims = JSON.parse(Buffer.from(payload).toString('utf8')) as typeof claims;
  } catch {
    throw new Error('bundle signature payload is not JSON');
  }
  if ((claims.scope ?? '') !== (v.scope ?? ''))
    throw new Error(`bundle signature scope mismatch (signed for ${JSON.stringify(claims.scope ?? '')})`);
  if (!Array.isArray(claims.files)) throw new Error('bundle signature lists no files');

  const listed = new Map<string, FileInfo>();
  for (const f of claims.files as Partial<FileInfo>[]) {
    if (typeof f?.name !== 'string' || typeof f.hash !== 'string' || typeof f.algorithm !== 'string')
      throw new Error('bundle signature has a malformed file entry');
    listed.set(f.name.replace(/^\/+/, ''), f as FileInfo);
  }
  for (const [name, body] of files) {
    if (name === SIGNATURES_FILE) continue;
    const f = listed.get(name);
    if (!f) throw new Error(`bundle file ${name} is not included in the bundle signature`);
    const algorithm = FILE_HASHES[f.algorithm];
    if (!algorithm) throw new Error(`bundle file ${name}: unsupported hash algorithm ${JSON.stringify(f.algorithm)}`);
    let hash: string;
    try {
      hash = fileHash(name, body, algorithm);
    } catch (e) {
      throw new Error(`bundle file ${name} cannot be hashed: ${errorMessage(e)}`);
    }
    if (hash !== f.hash.toLowerCase()) throw new Error(`bundle file ${name}: digest mismatch with its signature`);
    listed.delete(name);
  }
  if (listed.size > 0)
    throw new Error(
      `bundle signature names files the bundle does not have: ${[...listed.keys()].slice(0, 5).join(', ')}`,
    );
}

/** OPA's "structured documents": hashed in canonical JSON form. */
function isStructured(name: string): boolean {
  const base = name.slice(name.lastIndexOf('/') + 1);
  return base === 'data.json' || base === '.manifest' || base === 'data.yaml' || base === 'data.yml';
}

function fileHash(name: string, body: Uint8Array, algorithm: string): string {
  const hash = createHash(algorithm);
  if (!isStructured(name)) return hash.update(body).digest('hex');
  if (!name.endsWith('.json') && !name.endsWith('.manifest')) throw new Error('YAML data is not supported');
  return hash.update(canonicalJson(new TextDecoder('utf-8', { fatal: true }).decode(body)), 'utf8').digest('hex');
}

/**
 * The JSON text as OPA hashes it (bundle/hash.go): object keys sorted by their UTF-8 bytes, the last
 * of duplicate keys kept, no whitespace, numbers exactly as written, strings as Go's encoder writes
 * them without HTML escaping. Throws on text that is not JSON.
 */
export function canonicalJson(text: string): string {
  JSON.parse(text); // validity (and the same refusals) first; what follows assumes well-formed JSON
  let i = 0;
  const skip = () => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i++;
  };
  const string = (): string => {
    const start = i++;
    while (text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    i++;
    return JSON.parse(text.slice(start, i)) as string;
  };
  const value = (): string => {
    skip();
    const c = text[i];
    if (c === '{') {
      i++;
      const members = new Map<string, string>();
      skip();
      if (text[i] === '}') {
        i++;
        return '{}';
      }
      for (;;) {
        skip();
        const key = string();
        skip();
        i++; // ':'
        members.delete(key);
        members.set(key, value());
        skip();
        if (text[i++] === '}') break; // else ','
      }
      const keys = [...members.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
      return `{${keys.map((k) => `${goString(k)}:${members.get(k)!}`).join(',')}}`;
    }
    if (c === '[') {
      i++;
      const items: string[] = [];
      skip();
      if (text[i] === ']') {
        i++;
        return '[]';
      }
      for (;;) {
        items.push(value());
        skip();
        if (text[i++] === ']') break;
      }
      return `[${items.join(',')}]`;
    }
    if (c === '"') return goString(string());
    LITERAL.lastIndex = i;
    const m = LITERAL.exec(text);
    if (!m) throw new Error(`unexpected JSON at offset ${i}`);
    i += m[0].length;
    return m[0];
  };
  return value();
}

const LITERAL = /true|false|null|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

// Go's encoding/json string form with SetEscapeHTML(false): JSON.stringify's, plus U+2028 and U+2029
// escaped (JavaScript leaves them raw).
function goString(s: string): string {
  return JSON.stringify(s)
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}
