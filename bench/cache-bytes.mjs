// Measures what the caches really hold per entry, against the byte estimate they are bounded by:
// fills the certificate cache with N distinct workload SVIDs, the policy memo with N distinct
// projected inputs and the chain-verification cache with the N SVIDs verified against their CA, and
// reports the V8 heap growth per entry (after a full GC) beside the estimate.
// Usage: node --expose-gc bench/cache-bytes.mjs [N]   (npm run bench:cache-bytes)
import { join } from 'node:path';
import { makeIdentitySet } from './identities.mjs';

const n = Number(process.argv[2] ?? 20000);

/** One line: the heap growth (full - empty, after full GCs) and the estimate, per entry. */
function report(cache, entries, full, empty, estimatedBytes, extra = {}) {
  const perEntry = (bytes) => Math.round(bytes / entries);
  const line = { cache, entries, heap_bytes_per_entry: perEntry(full - empty) };
  console.log(JSON.stringify({ ...line, estimated_bytes_per_entry: perEntry(estimatedBytes), ...extra }));
}
const { parseX509SvidPem, x509SvidCacheStats, configureX509SvidCache } = await import('../dist/identity/x509-svid.js');
const { ids, caPem } = await makeIdentitySet(join(import.meta.dirname, 'work', 'identities'), n);
configureX509SvidCache({ entries: n + 1, bytes: 1024 * 1024 * 1024 });
const now = new Date();
const pems = ids.map((id) => encodeURIComponent(id.certPem));
for (const pem of pems) if (!parseX509SvidPem(pem, now).ok) throw new Error('bench identity refused');
globalThis.gc();
const full = process.memoryUsage().heapUsed;
const stats = x509SvidCacheStats();
configureX509SvidCache({ entries: n + 1, bytes: 1024 * 1024 * 1024 });
globalThis.gc();
const empty = process.memoryUsage().heapUsed;
report('svid', stats.entries, full, empty, stats.bytes);

// The policy memo: N distinct identities' decisions (half allowed, half denied) for one destination.
const { policyMemoBytes } = await import('../dist/policy/policy.js');
const { loadPolicy } = await import('../dist/lifecycle/bundle-source.js');
const { toIdentity } = await import('../dist/identity/identity.js');
const { parseSpiffeId } = await import('../dist/identity/spiffe-id.js');
const { defaultPolicyLocation } = await import('../dist/cli.js');
const inputs = ids.map((id) => ({
  identity: toIdentity(parseSpiffeId(id.spiffeId).value, 'certificate'),
  destination: { host: 'legacy.bookinfo.example', port: 443 },
}));
let policy = await loadPolicy(defaultPolicyLocation(), { memoBytes: 1024 * 1024 * 1024, evalBudgetMs: 60_000 });
for (const input of inputs) if (!policy.evaluate(input).ok) throw new Error('policy failed');
globalThis.gc();
const memoFull = process.memoryUsage().heapUsed;
const memoBytes = policyMemoBytes();
policy = await loadPolicy(defaultPolicyLocation(), { memoBytes: 1024 * 1024 * 1024, evalBudgetMs: 60_000 });
policy.evaluate(inputs[0]);
globalThis.gc();
const memoEmpty = process.memoryUsage().heapUsed;
report('policy_memo', inputs.length, memoFull, memoEmpty, memoBytes);

// The chain-verification cache: the N workload chains (as Envoy sends them, URL-encoded) verified
// against their CA as the cluster.local bundle, each remembered once.
const { ChainVerifier } = await import('../dist/identity/chain-verify.js');
const { parseX509Bundle, X509BundleSet } = await import('../dist/identity/x509-bundle.js');
const trust = parseX509Bundle('cluster.local', caPem);
if (!trust.ok) throw new Error(trust.reason);
const bundles = new X509BundleSet([trust.value]);
const huge = { cacheEntries: n + 1, cacheBytes: 1024 * 1024 * 1024 };
function fillChains() {
  const verifier = new ChainVerifier(bundles, huge);
  for (const pem of pems) if (!verifier.verifyPem(pem, 'cluster.local', now).ok) throw new Error('bench chain refused');
  return verifier.cacheStats();
}
const chainStats = fillChains();
globalThis.gc();
const chainFull = process.memoryUsage().heapUsed;
// A new verifier's cache becomes the one /metrics reports, releasing the full one. Measured: collected
// in the same turn, the released cache was still alive (growth ~0); after one turn of the loop it is gone.
const emptied = new ChainVerifier(bundles, huge);
if (emptied.cacheSize !== 0) throw new Error('a new verifier starts empty');
await new Promise((resolve) => setImmediate(resolve));
globalThis.gc();
const chainEmpty = process.memoryUsage().heapUsed;
report('chain', chainStats.entries, chainFull, chainEmpty, chainStats.bytes, {
  default_max_bytes: new ChainVerifier(bundles).cacheStats().maxBytes,
});
