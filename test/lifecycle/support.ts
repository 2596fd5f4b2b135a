// Policy variants made at test time from the default policy folder, a service whose live policy comes
// from a PolicyStore, a load loop of real gRPC Checks, and small waiting helpers.
import { cpSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { openBundleSource, type BundleSourceOptions } from '../../src/lifecycle/bundle-source.js';
import { ServiceMetrics } from '../../src/service/metrics.js';
import { buildWasmBundle } from '../../src/policy/opa-cli.js';
import { PolicyStore, reloadStatus, type ReloadOutcome } from '../../src/lifecycle/policy-store.js';
import {
  check,
  checkClient,
  checkRequest,
  POLICY_DIR,
  startTestService,
  type TestService,
} from '../support/service.js';

export const BOOKINFO = 'spiffe://cluster.local/ns/bookinfo/sa/productpage';

export interface VariantOptions {
  /** bookinfo's SNAT pool */
  pool?: string;
  /** more tenants: namespace → pool */
  tenants?: Record<string, string>;
  /** keep the default policy's cases/ and Rego unit tests (they expect bookinfo_snat) */
  withTests?: boolean;
}

/** A copy of the default policy folder with its data changed. */
export function policyVariant(root: string, name: string, opts: VariantOptions = {}): string {
  const dir = join(root, name);
  rmSync(dir, { recursive: true, force: true });
  cpSync(POLICY_DIR, dir, { recursive: true });
  if (!opts.withTests) {
    rmSync(join(dir, 'cases'), { recursive: true, force: true });
    rmSync(join(dir, 'egress_authz_test.rego'), { force: true });
  }
  writeData(dir, opts);
  return dir;
}

export function writeData(dir: string, opts: VariantOptions): void {
  const data = JSON.parse(readFileSync(join(POLICY_DIR, 'data.json'), 'utf8'));
  data.egress.tenants.bookinfo.snat_pool = opts.pool ?? 'bookinfo_snat';
  for (const [ns, pool] of Object.entries(opts.tenants ?? {})) data.egress.tenants[ns] = { snat_pool: pool };
  writeFileSync(join(dir, 'data.json'), `${JSON.stringify(data, null, 2)}\n`);
}

/** An OPA Wasm bundle of a variant, with a manifest revision. */
export async function variantBundle(
  root: string,
  name: string,
  opts: VariantOptions & { revision: string },
): Promise<Buffer> {
  const dir = policyVariant(root, `${name}-src`, opts);
  const out = join(root, `${name}.tar.gz`);
  await buildWasmBundle(dir, out, undefined, { revision: opts.revision });
  return readFileSync(out);
}

/** Replaces a file atomically (write beside it, rename over it), as a careful deploy does. */
export function replaceFile(path: string, bytes: Uint8Array, tag: string): void {
  const tmp = `${path}.${tag}.tmp`;
  writeFileSync(tmp, bytes);
  renameSync(tmp, path);
}

/**
 * A folder laid out as kubelet mounts a ConfigMap: `<dir>/bundle.tar.gz -> ..data/bundle.tar.gz`,
 * `..data -> ..<version>`. An update writes a new `..<version>` folder and renames a new `..data`
 * symlink over the old one.
 */
export class ConfigMapDir {
  private generation = 0;
  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
  }
  get path(): string {
    return join(this.dir, 'bundle.tar.gz');
  }
  update(bytes: Uint8Array): void {
    const previous = `..gen_${this.generation}`;
    const next = `..gen_${++this.generation}`;
    mkdirSync(join(this.dir, next));
    writeFileSync(join(this.dir, next, 'bundle.tar.gz'), bytes);
    symlinkSync(next, join(this.dir, '..data_tmp'));
    renameSync(join(this.dir, '..data_tmp'), join(this.dir, '..data'));
    if (this.generation === 1) symlinkSync(join('..data', 'bundle.tar.gz'), this.path);
    else rmSync(join(this.dir, previous), { recursive: true, force: true });
  }
}

export interface StoreService {
  svc: TestService;
  store: PolicyStore;
  metrics: ServiceMetrics;
  /** the store's log lines (reloads, refusals) */
  storeLog: Record<string, unknown>[];
  close(): Promise<void>;
}

/** The service with its live policy from a watched PolicyStore, as `serve --policy` wires it. */
export async function startStoreService(
  location: string,
  sourceOpts: BundleSourceOptions = {},
  casesPath?: string,
): Promise<StoreService> {
  const metrics = new ServiceMetrics();
  const storeLog: Record<string, unknown>[] = [];
  const log = pino(
    { level: 'info' },
    { write: (line: string) => void storeLog.push(JSON.parse(line) as Record<string, unknown>) },
  );
  const store = await PolicyStore.open(
    await openBundleSource(location, { debounceMs: 20, pollMs: 250, ...sourceOpts }),
    { log, metrics, casesPath },
  );
  const svc = await startTestService({
    policy: store.current!,
    policies: store,
    metrics,
    readyDetail: () => reloadStatus(store),
  });
  store.start();
  return {
    svc,
    store,
    metrics,
    storeLog,
    async close() {
      store.stop();
      await svc.close(1000);
    },
  };
}

/** Resolves with the next reload that did something (success or failure). */
export function nextReload(store: PolicyStore, timeoutMs = 10_000): Promise<ReloadOutcome> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no reload within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = store.onReload((o) => {
      if (o.result === 'unchanged') return;
      clearTimeout(timer);
      off();
      resolve(o);
    });
  });
}

export async function metricsText(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return res.text();
}

/** The value of one sample in Prometheus text, or undefined; `labels` as written, e.g. `policy="live",result="failure"`. */
export function sample(text: string, name: string, labels = ''): number | undefined {
  const want = labels ? `${name}{${labels}}` : name;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${want} `)) return Number(line.slice(want.length + 1));
  }
  return undefined;
}

export function snatPool(res: Record<string, any>): string | undefined {
  const list = (res.okResponse ?? res.deniedResponse)?.headers ?? [];
  return list.find((h: any) => h.header.key === 'x-egress-snat-pool')?.header.value;
}

export interface LoopResult {
  sentAt: number;
  receivedAt: number;
  /** the SNAT pool of an allow; undefined on a deny */
  pool: string | undefined;
  /** a transport error (the check failed) */
  error?: string;
}

/** `workers` concurrent Check loops on one connection until stop() is called. */
export function checkLoop(port: number, workers = 4) {
  const client = checkClient(port);
  const results: LoopResult[] = [];
  let running = true;
  const req = checkRequest({ principal: BOOKINFO });
  const worker = async () => {
    while (running) {
      const sentAt = performance.now();
      try {
        const res = await check(client, req);
        results.push({
          sentAt,
          receivedAt: performance.now(),
          pool: res.status.code === 0 ? snatPool(res) : undefined,
        });
      } catch (err) {
        results.push({ sentAt, receivedAt: performance.now(), pool: undefined, error: (err as Error).message });
      }
    }
  };
  const done = Promise.all(Array.from({ length: workers }, worker));
  return {
    results,
    async stop(): Promise<LoopResult[]> {
      running = false;
      await done;
      client.close();
      return results;
    },
  };
}

/** Polls until the predicate (sync or async) holds; an async one is awaited, never taken as truthy. */
export async function waitFor(
  predicate: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<number> {
  const started = performance.now();
  while (!(await predicate())) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
  return performance.now() - started;
}
