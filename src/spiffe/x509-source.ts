// The workload's live X.509 identity from the Workload API, like go-spiffe's workloadapi.X509Source: the
// default SVID and the bundle set, replaced together on every update the agent pushes. Chain
// verification consumes the bundles through `subscribe` + `context.bundles` (trust domain → CAs). It also serves
// the SVID as TLS material for egress-authz's own listeners (the same subscribe-and-swap contract as
// CertificateFiles), so a rotation reaches new handshakes while open connections keep theirs.
import { fail, ok, type Result } from '../common/result.js';
import { sameMaterial, type TlsMaterial, type TlsMaterialSource } from '../common/tls-material.js';
import type { WorkloadSvid, X509Context } from './x509-context.js';
import { WorkloadApiClient, workloadApiTarget, type Backoff } from './workload-api.js';

export interface X509SourceOptions {
  /** how long open() waits for the first SVID; default 30 s */
  waitMs?: number;
  backoff?: Backoff;
  onUpdate?: (ctx: X509Context) => void;
  onError?: (reason: string) => void;
}

export class X509Source {
  private ctx: X509Context;
  private material: TlsMaterial;
  private readonly listeners = new Set<() => void>();
  private readonly tlsListeners = new Set<(m: TlsMaterial) => void>();

  /**
   * Connects and waits for the first usable SVID. Fails with the last reason heard (socket missing, no
   * registration entry for this workload, a refused update) when none arrives within `waitMs`.
   */
  static open(address: string, opts: X509SourceOptions = {}): Promise<Result<X509Source>> {
    const target = workloadApiTarget(address);
    if (!target.ok) return Promise.resolve(target);
    const client = new WorkloadApiClient(target.value, opts.backoff);
    const waitMs = opts.waitMs ?? 30_000;
    return new Promise((resolveOpen) => {
      let source: X509Source | undefined;
      let lastError = 'no answer';
      const timer = setTimeout(() => {
        client.close();
        resolveOpen(fail(`no X.509-SVID from the Workload API at ${address} within ${waitMs} ms: ${lastError}`));
      }, waitMs);
      client.watchX509Context({
        onUpdate: (ctx) => {
          if (source) return source.apply(ctx);
          clearTimeout(timer);
          source = new X509Source(client, ctx);
          opts.onUpdate?.(ctx);
          source.onUpdate = opts.onUpdate;
          resolveOpen(ok(source));
        },
        onError: (reason) => {
          lastError = reason;
          opts.onError?.(reason);
        },
      });
    });
  }

  private onUpdate: ((ctx: X509Context) => void) | undefined;

  private constructor(
    private readonly client: WorkloadApiClient,
    first: X509Context,
  ) {
    this.ctx = first;
    this.material = tlsMaterial(first);
  }

  get context(): X509Context {
    return this.ctx;
  }

  /** the default identity: the first SVID of the last update */
  get svid(): WorkloadSvid {
    return this.ctx.svids[0]!;
  }

  /**
   * Whether the default SVID is still valid at `now`. An agent that stays away past the SVID's expiry
   * leaves the listeners presenting a certificate every caller refuses: the service is then not ready
   * (so the load balancer sends Checks elsewhere) until an update brings a fresh one.
   */
  svidCurrent(now = Date.now()): boolean {
    return now <= this.svid.notAfter.getTime();
  }

  /** the CA certificates of a trust domain (own or federated) from the last update, or undefined */
  bundleFor(trustDomain: string) {
    return this.ctx.bundles.get(trustDomain);
  }

  /** called after every accepted update (SVID or bundles changed); read `context` for the new state */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The default SVID, its key, and its own trust domain's bundle as the client CA, for the listeners. */
  readonly tls: TlsMaterialSource = ((source: X509Source): TlsMaterialSource => ({
    get current() {
      return source.material;
    },
    subscribe(listener) {
      source.tlsListeners.add(listener);
      return () => source.tlsListeners.delete(listener);
    },
  }))(this);

  close(): void {
    this.client.close();
    this.listeners.clear();
    this.tlsListeners.clear();
  }

  private apply(ctx: X509Context): void {
    this.ctx = ctx;
    const next = tlsMaterial(ctx);
    const changed = !sameMaterial(next, this.material);
    this.material = next;
    this.onUpdate?.(ctx);
    for (const l of this.listeners) l();
    if (changed) for (const l of this.tlsListeners) l(next);
  }
}

/**
 * Only the SVID's own trust domain vouches for callers of the listeners: Node's TLS stack chains a
 * client certificate to any CA it is given, whatever trust domain the leaf names, so handing it the
 * federated bundles too would let a partner's CA mint identities of ours.
 */
function tlsMaterial(ctx: X509Context): TlsMaterial {
  const svid = ctx.svids[0]!;
  const own = ctx.bundles.get(svid.trustDomain)?.authorities ?? [];
  return {
    cert: Buffer.from(svid.certPem),
    key: Buffer.from(svid.keyPem),
    ca: Buffer.from(own.map((c) => c.toString()).join('')),
  };
}
