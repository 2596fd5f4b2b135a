// TLS and mTLS for both listeners: the service's own certificate (its SVID), the CA its callers'
// certificates must chain to, and the SPIFFE IDs allowed to ask for decisions. Istio and SPIRE rotate
// SVIDs every hour or less, so the files are re-read when they change (a directory watch for speed, a
// poll because watches miss Kubernetes' symlink swaps on some filesystems) and the new material is
// handed to both listeners for new handshakes; established connections keep theirs and are not dropped.
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import { createSecureContext } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { fail, ok, type Result } from '../common/result.js';
import { sameMaterial, type TlsMaterial, type TlsMaterialSource } from '../common/tls-material.js';
import { matchesAny, parseIdPattern, type IdPattern } from '../identity/match.js';
import { parseX509SvidPem } from '../identity/x509-svid.js';
import { errorMessage } from '../common/errors.js';

export interface TlsFiles {
  certFile: string;
  keyFile: string;
  /** when set, every client must present a certificate that chains to this CA bundle */
  clientCaFile?: string;
}

// --------------------------------------------------------------------------------- allowed callers

/** One `--allowed-caller` entry: a SPIFFE ID pattern (identity/match.ts). */
export type CallerPattern = IdPattern;

export function parseAllowedCaller(entry: string): Result<CallerPattern> {
  const p = parseIdPattern(entry);
  return p.ok ? p : fail(`allowed caller ${p.reason}`, p.code);
}

/** What a listener does with a TLS peer: serve it, or refuse it before any decision. */
export type PeerVerdict =
  { ok: true; spiffeId?: string } | { ok: false; refusal: 'unauthenticated' | 'forbidden'; reason: string };

export interface PeerPolicy {
  /** a client certificate verified against the client CA is required */
  requireClientCert: boolean;
  /** empty: any verified client; otherwise its SVID must match one of these */
  allowedCallers: readonly CallerPattern[];
}

/**
 * Judges a TLS peer from what the TLS stack verified: whether the handshake authorized the client
 * certificate, and the leaf's DER. Reasons are fixed texts plus, for a refused caller, its SPIFFE ID.
 */
export function judgePeer(
  policy: PeerPolicy,
  authorized: boolean,
  leafDer: Buffer | undefined,
  now = new Date(),
): PeerVerdict {
  if (!policy.requireClientCert) return { ok: true };
  if (!authorized || leafDer === undefined || leafDer.length === 0) {
    return { ok: false, refusal: 'unauthenticated', reason: 'no verified client certificate' };
  }
  if (policy.allowedCallers.length === 0) return { ok: true };
  // The PEM form goes through the memoised SVID parser: a caller's certificate is parsed once, not
  // on every call over its connection.
  const pem = `-----BEGIN CERTIFICATE-----\n${leafDer.toString('base64')}\n-----END CERTIFICATE-----\n`;
  const svid = parseX509SvidPem(pem, now);
  if (!svid.ok)
    return { ok: false, refusal: 'unauthenticated', reason: `client certificate is not an X.509-SVID: ${svid.reason}` };
  const id = svid.value.spiffeId;
  if (!matchesAny(id, policy.allowedCallers))
    return { ok: false, refusal: 'forbidden', reason: `caller ${id.uri} is not allowed` };
  return { ok: true, spiffeId: id.uri };
}

// -------------------------------------------------------------------------------- certificate files

export interface CertificateFilesOptions {
  /** how often the files are re-read even without a change event; default 5 s */
  pollMs?: number;
  onReload?: (m: TlsMaterial) => void;
  /** a change that could not be used (half-written files, key not matching); the old material stays */
  onError?: (reason: string) => void;
}

/** Reads the files and checks that they make a usable TLS context (the key matches the certificate). */
export function readTlsMaterial(files: TlsFiles): Result<TlsMaterial> {
  let material: TlsMaterial;
  try {
    material = { cert: readFileSync(files.certFile), key: readFileSync(files.keyFile) };
    if (files.clientCaFile !== undefined) material.ca = readFileSync(files.clientCaFile);
  } catch (err) {
    return fail(`cannot read TLS files: ${errorMessage(err)}`);
  }
  try {
    createSecureContext(material);
  } catch (err) {
    return fail(`TLS files do not make a usable certificate and key: ${errorMessage(err)}`);
  }
  return ok(material);
}

/** The live TLS material of the service, re-read when its files change; subscribers get every new version. */
export class CertificateFiles implements TlsMaterialSource {
  private material: TlsMaterial;
  private readonly listeners = new Set<(m: TlsMaterial) => void>();
  private readonly watchers: FSWatcher[] = [];
  private readonly poll: NodeJS.Timeout;
  private debounce: NodeJS.Timeout | undefined;

  /** Throws when the files are unusable at start: the service must not come up without its certificate. */
  constructor(
    readonly files: TlsFiles,
    private readonly opts: CertificateFilesOptions = {},
  ) {
    const first = readTlsMaterial(files);
    if (!first.ok) throw new Error(first.reason);
    this.material = first.value;
    const paths = [files.certFile, files.keyFile, files.clientCaFile].filter((p): p is string => p !== undefined);
    for (const dir of new Set(paths.map((p) => dirname(p)))) {
      try {
        const w = watch(dir, { persistent: false }, () => this.reloadWhenSettled());
        w.on('error', () => w.close());
        this.watchers.push(w);
      } catch {
        // The poll below still picks changes up.
      }
    }
    this.poll = setInterval(() => this.reload(), opts.pollMs ?? 5000);
    this.poll.unref();
  }

  get current(): TlsMaterial {
    return this.material;
  }

  subscribe(listener: (m: TlsMaterial) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Re-reads the files now; true when new material was taken into use. */
  reload(): boolean {
    const next = readTlsMaterial(this.files);
    if (!next.ok) {
      this.opts.onError?.(next.reason);
      return false;
    }
    if (sameMaterial(next.value, this.material)) return false;
    this.material = next.value;
    for (const listener of this.listeners) listener(next.value);
    this.opts.onReload?.(next.value);
    return true;
  }

  close(): void {
    clearInterval(this.poll);
    clearTimeout(this.debounce);
    for (const w of this.watchers) w.close();
    this.listeners.clear();
  }

  // A rotation writes several files, often in several steps: wait for the writes to settle.
  private reloadWhenSettled(): void {
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.reload(), 100);
    this.debounce.unref();
  }
}

// ------------------------------------------------------------------------------ listener credentials

/** node:https / node:tls server options for the HTTP listener (material from `files.current`). */
export function httpsServerOptions(files: TlsMaterialSource): {
  cert: Buffer;
  key: Buffer;
  ca?: Buffer;
  requestCert: boolean;
  rejectUnauthorized: boolean;
} {
  const m = files.current;
  const mutual = m.ca !== undefined;
  return { cert: m.cert, key: m.key, ...(mutual ? { ca: m.ca } : {}), requestCert: mutual, rejectUnauthorized: mutual };
}

/**
 * gRPC server credentials that follow `files`. grpc-js hands every context update to the HTTP/2
 * server's setSecureContext (new handshakes only), the mechanism its own certificate providers use;
 * subclassing keeps one source of truth for both listeners.
 */
class ReloadingServerCredentials extends grpc.ServerCredentials {
  constructor(files: TlsMaterialSource) {
    const m = files.current;
    const mutual = m.ca !== undefined;
    super({ requestCert: mutual, rejectUnauthorized: mutual }, contextOptions(m));
    files.subscribe((next) => this.updateSecureContextOptions(contextOptions(next)));
  }

  _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }
}

function contextOptions(m: TlsMaterial): { cert: Buffer[]; key: Buffer[]; ca?: Buffer } {
  return { cert: [m.cert], key: [m.key], ...(m.ca !== undefined ? { ca: m.ca } : {}) };
}

export function grpcServerCredentials(files: TlsMaterialSource): grpc.ServerCredentials {
  return new ReloadingServerCredentials(files);
}
