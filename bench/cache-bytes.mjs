// Measures what the caches really hold per entry, against the byte estimate they are bounded by:
// fills the certificate cache with N distinct workload SVIDs and the policy memo with N distinct
// projected inputs, and reports the V8 heap growth per entry (after a full GC) beside the estimate.
// Usage: node --expose-gc bench/cache-bytes.mjs [N]   (npm run bench:cache-bytes)
import { join } from 'node:path';
import { makeIdentities } from './identities.mjs';

const n = Number(process.argv[2] ?? 20000);
const { parseX509SvidPem, x509SvidCacheStats, configureX509SvidCache } = await import('../dist/identity/x509-svid.js');
const ids = await makeIdentities(join(import.meta.dirname, 'work', 'identities'), n);
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
console.log(
  JSON.stringify({
    cache: 'svid',
    entries: stats.entries,
    heap_bytes_per_entry: Math.round((full - empty) / stats.entries),
    estimated_bytes_per_entry: Math.round(stats.bytes / stats.entries),
  }),
);

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
console.log(
  JSON.stringify({
    cache: 'policy_memo',
    entries: inputs.length,
    heap_bytes_per_entry: Math.round((memoFull - memoEmpty) / inputs.length),
    estimated_bytes_per_entry: Math.round(memoBytes / inputs.length),
  }),
);
