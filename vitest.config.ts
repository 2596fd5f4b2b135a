import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    coverage: {
      provider: 'v8',
      include: ['src/**/*.ts'],
      reporter: ['text-summary', 'json-summary'],
      // What the suite reached in-process when the threshold was set, less a margin for timing-dependent
      // paths; code run only inside `serve` child processes is not counted.
      thresholds: { lines: 75, functions: 75, branches: 65, statements: 75 },
    },
  },
});
