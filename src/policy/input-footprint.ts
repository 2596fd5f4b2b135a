// Which part of the input a policy can see, read off its Rego source when the bundle is built. When
// every reference to `input` in every module is `input.<name>`, the policy cannot observe any other
// top-level field, so it can be given only those fields; and when it also calls no builtin whose
// answer depends on anything but its arguments (time, randomness, the network, the runtime), its
// answer is a function of those fields and the data alone, so equal fields give an equal answer and
// the answer can be remembered (policy.ts).
//
// This is a conservative lexical scan, not a parser: whatever it does not recognise (a bare `input`,
// `input[...]`, a template string) turns the optimisation off. It can only miss a chance, never
// produce a different decision. It must see every module: a Wasm bundle does not carry the source of
// its entrypoint rule, so the scan runs on the policy folder at `build` time and the result travels in
// the bundle manifest's metadata; a bundle without it gets the whole input and nothing is remembered.
import { sha256Hex } from '../common/hash.js';

export interface InputFootprint {
  /** the top-level input fields the policy reads; null when they cannot be known from the source */
  keys: readonly string[] | null;
  /** answers depend only on input and data (no clock, randomness, network, runtime, printing) */
  deterministic: boolean;
  /** why keys is null or deterministic is false; "" when neither */
  why: string;
}

/** Where the footprint lives in a bundle's `.manifest`: `metadata.egress_authz_input`. */
export const MANIFEST_METADATA_KEY = 'egress_authz_input';

// Builtins whose result is not a function of their arguments, or that have side effects.
const NON_DETERMINISTIC = [
  'time.now_ns',
  'rand.intn',
  'uuid.rfc4122',
  'http.send',
  'net.lookup_ip_addr',
  'opa.runtime',
  'io.jwt.decode_verify',
  'crypto.x509.parse_and_verify_certificates',
  'crypto.x509.parse_and_verify_certificates_with_options',
  'providers.aws.sign_req',
  'trace',
  'print',
];

const IDENT_START = /[A-Za-z_]/;
const IDENT_CHAR = /[A-Za-z0-9_]/;

/** Analyses all the Rego modules of one policy (a rule in any module can read input). */
export function inputFootprint(modules: readonly string[]): InputFootprint {
  if (modules.length === 0) return { keys: null, deterministic: false, why: 'no Rego source' };
  const keys = new Set<string>();
  let deterministic = true;
  let why = '';
  for (const source of modules) {
    const code = stripLiterals(source);
    if (code === null) return { keys: null, deterministic: false, why: 'template strings are not analysed' };
    for (const next of inputRefs(code)) {
      if (next === undefined) return { keys: null, deterministic: false, why: 'input is used as a whole' };
      keys.add(next);
    }
    if (deterministic) {
      const called = NON_DETERMINISTIC.find((b) =>
        new RegExp(`(?<![A-Za-z0-9_.])${b.replace(/\./g, '\\.')}\\s*\\(`).test(code),
      );
      if (called) {
        deterministic = false;
        why = `calls ${called}`;
      }
    }
  }
  return { keys: [...keys].sort(), deterministic, why };
}

/** The stamp as `build` writes it: the footprint and the SHA-256 (hex) of the module it describes. */
export interface FootprintStamp extends InputFootprint {
  module_sha256: string;
}

export function footprintStamp(footprint: InputFootprint, module: Uint8Array): FootprintStamp {
  return { ...footprint, module_sha256: sha256Hex(module) };
}

const MAX_STAMP_KEYS = 256;
const MAX_STAMP_WHY_CHARS = 256;

/**
 * The footprint a bundle's manifest carries, if it carries a well-formed one made for this very
 * module. The stamp is only a claim about the Rego the module was compiled from: a `.manifest` copied
 * from another build (`opa build -b` keeps it) would otherwise hand a new rule only the old fields.
 */
export function footprintFromManifest(manifest: unknown, module: Uint8Array): InputFootprint | undefined {
  const meta = (manifest as { metadata?: Record<string, unknown> } | undefined)?.metadata?.[MANIFEST_METADATA_KEY] as
    Partial<FootprintStamp> | undefined;
  if (typeof meta !== 'object' || meta === null) return undefined;
  if (typeof meta.module_sha256 !== 'string' || meta.module_sha256 !== sha256Hex(module)) return undefined;
  const keys =
    meta.keys === null
      ? null
      : Array.isArray(meta.keys) &&
          meta.keys.length <= MAX_STAMP_KEYS &&
          meta.keys.every((k) => typeof k === 'string' && /^[A-Za-z_][A-Za-z0-9_]{0,127}$/.test(k))
        ? meta.keys
        : undefined;
  if (keys === undefined || typeof meta.deterministic !== 'boolean') return undefined;
  const why =
    typeof meta.why === 'string' && meta.why.length <= MAX_STAMP_WHY_CHARS && /^[\x20-\x7e]*$/.test(meta.why)
      ? meta.why
      : '';
  return { keys, deterministic: meta.deterministic, why };
}

/** Fields for the log line that says how a policy is evaluated. */
export function footprintFields(f: InputFootprint | undefined): Record<string, unknown> {
  if (!f) return { policy_input: 'whole (no footprint in the bundle)', policy_memoised: false };
  return {
    policy_input: f.keys ?? 'whole',
    policy_memoised: f.keys !== null && f.deterministic,
    ...(f.why ? { policy_memo_off_because: f.why } : {}),
  };
}

/** For each root `input` token: the field name that directly follows (`input.x` → "x"), or undefined. */
function* inputRefs(code: string): Generator<string | undefined> {
  let i = 0;
  while (i < code.length) {
    if (!IDENT_START.test(code[i]!)) {
      i++;
      continue;
    }
    const start = i;
    while (i < code.length && IDENT_CHAR.test(code[i]!)) i++;
    // A name after a dot is a field (data.x.input), not the input root.
    if (code.slice(start, i) !== 'input' || (start > 0 && code[start - 1] === '.')) continue;
    if (code[i] !== '.' || !IDENT_START.test(code[i + 1] ?? '')) {
      yield undefined;
      continue;
    }
    let j = i + 1;
    while (j < code.length && IDENT_CHAR.test(code[j]!)) j++;
    yield code.slice(i + 1, j);
  }
}

/**
 * The source with comments removed and string literals emptied (so that "input" in a message is not a
 * reference). Returns null for template strings ($"…{expr}…"), whose embedded expressions would be lost.
 */
function stripLiterals(source: string): string | null {
  let out = '';
  let i = 0;
  while (i < source.length) {
    const c = source[i]!;
    if (c === '$' && (source[i + 1] === '"' || source[i + 1] === '`')) return null;
    if (c === '#') {
      while (i < source.length && source[i] !== '\n') i++;
      continue;
    }
    if (c === '"' || c === '`') {
      i++;
      while (i < source.length && source[i] !== c) i += c === '"' && source[i] === '\\' ? 2 : 1;
      i++;
      out += '""';
      continue;
    }
    out += c;
    i++;
  }
  return out;
}
