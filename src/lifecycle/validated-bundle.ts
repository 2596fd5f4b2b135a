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
// - A serving process turns it into the policy it answers with: `instantiateValidated(bundle, opts)`,
//   the same code the sandbox ran on the same bytes, so its cost was proven in budget. In one process
//   the store does this itself and serves `store.current`.
// - A refused candidate emits nothing: every serving process keeps its last good policy.
import { loadPolicyBundle, type LoadedPolicy, type LoadPolicyOptions } from '../policy/policy.js';

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
}

/** The serving side of the hand-off: the policy a validated bundle gives. */
export function instantiateValidated(bundle: ValidatedBundle, opts: LoadPolicyOptions = {}): Promise<LoadedPolicy> {
  return loadPolicyBundle(bundle.bytes, { ...opts, source: bundle.source });
}
