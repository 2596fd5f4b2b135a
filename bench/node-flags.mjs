// The node flags `npm start` runs the service with, read from package.json so that the benchmark, the
// soak and the no-op ceiling run the same runtime as users do. EGRESS_AUTHZ_BENCH_NODE_FLAGS replaces
// them for an A/B run (e.g. EGRESS_AUTHZ_BENCH_NODE_FLAGS="--max-old-space-size=128").
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));

export function startNodeFlags() {
  const override = process.env.EGRESS_AUTHZ_BENCH_NODE_FLAGS;
  if (override !== undefined) return override.split(/\s+/).filter(Boolean);
  const words = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).scripts.start.split(/\s+/);
  return words.slice(words.indexOf('node') + 1, words.indexOf('dist/cli.js'));
}
