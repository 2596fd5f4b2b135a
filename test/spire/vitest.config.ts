// The real-SPIRE suite runs on its own (npm run test:spire, called by .ci/run): it needs the SPIRE
// binaries (a first build takes minutes) and waits for real SVID rotations, too long for npm test.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/spire/**/*.spire.ts'],
    testTimeout: 120_000,
    hookTimeout: 180_000,
    pool: 'forks',
  },
});
