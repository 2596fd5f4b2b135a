// The hand-off between the process that validates policy candidates and the ones that serve them.
//
// INTERFACE (for `serve --workers N`, issue 10 item 3):
// - The PolicyStore owns the sources, polling and the sandbox. A candidate is loaded, instantiated
//   and case-checked in a worker thread with a wall-clock and a memory budget (policy-sandbox.ts);
//   only a candidate that finished in budget is accepted.
// - On accept the store emits a ValidatedBundle (`store.onAccepted(listener)`; the last one is
//   `store.accepted`). It is plain data: bytes, strings, a number. It survives structured clone
//   (postMessage, `cluster.setupPrimary({ serialization: 'advanced' })`); over JSON IPC send `bytes`
//   as base64.
// - A serving process turns it into the policy it answers with: `instantiateValidated(bundle, opts)`.
//   With the sandbox's memory image (`image`) that is a compile and a copy, in steps between which the
//   loop answers Checks; nothing is parsed on the serving thread. A serving process handed only the
//   bytes (a `--workers` worker) loads them in a thread of its own with the same budgets first
//   (`loadOffThread`). In one process the store does this itself and serves `store.current`.
// - A refused candidate emits nothing: every serving process keeps its last good policy.
import {
  loadPolicyBundle,
  loadPolicyImage,
  type LoadedPolicy,
  type LoadPolicyOptions,
  type PolicyImage,
} from '../policy/policy.js';
import { checkInSandbox, type SandboxBudget } from './policy-sandbox.js';

export interface ValidatedBundle {
  /** the bundle exactly as fetched, read or compiled (`bundle.tar.gz`) */
  bytes: Uint8Array;
  /** the policy revision those bytes give (manifest revision, else `sha256:<12 hex>`) */
  revision: string;
  /** `--policy` as given: path or URL */
  source: string;
  /** the source's version of it (content hash or ETag) */
  version: string;
  /** how long the sandbox took to load, instantiate and check it */
  sandboxMs: number;
  /** the policy's memory image, as the sandbox captured it (absent: the bytes are loaded again) */
  image?: PolicyImage;
}

/** The serving side of the hand-off: the policy a validated bundle gives. */
export function instantiateValidated(bundle: ValidatedBundle, opts: LoadPolicyOptions = {}): Promise<LoadedPolicy> {
  if (!bundle.image) return loadPolicyBundle(bundle.bytes, { ...opts, source: bundle.source });
  return loadPolicyImage(bundle.image, {
    ...opts,
    source: bundle.source,
    ...(opts.keepBundle ? { bundle: bundle.bytes } : {}),
  });
}

/**
 * Bytes a serving process was handed (already validated elsewhere) become its policy without parsing
 * them on its event loop: loaded in a thread with the sandbox's budgets, then restored from the image.
 * A thread that fails or blows a budget rejects, as a refused candidate does.
 */
export async function loadOffThread(
  bytes: Uint8Array,
  source: string,
  load: LoadPolicyOptions,
  budget?: SandboxBudget,
): Promise<LoadedPolicy> {
  const report = await checkInSandbox({ bytes, source, load }, budget);
  return instantiateValidated(
    {
      bytes,
      revision: report.revision,
      source,
      version: '',
      sandboxMs: report.ms,
      ...(report.image ? { image: report.image } : {}),
    },
    load,
  );
}
