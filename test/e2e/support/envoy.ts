// The Envoy binary installed by scripts/install-envoy.sh, and its config validation mode.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const repoRoot = resolve(import.meta.dirname, '../../..');
export const ENVOY = join(repoRoot, '.tools/bin/envoy');

/** The Envoy binary path; throws (failing the suite, never skipping it) when it is not installed. */
export function envoyBinary(): string {
  if (!existsSync(ENVOY)) throw new Error(`Envoy is not installed at ${ENVOY}: run bash scripts/install-envoy.sh`);
  return ENVOY;
}

/** Runs `envoy --mode validate -c <file>`: Envoy loads the whole config (TLS files included) but serves nothing. */
export function validateEnvoyConfig(configFile: string): Promise<{ ok: boolean; output: string }> {
  return new Promise((done) => {
    execFile(
      envoyBinary(),
      ['--mode', 'validate', '-c', configFile, '--log-level', 'error', '--disable-hot-restart'],
      { timeout: 30_000 },
      (error, stdout, stderr) => {
        done({ ok: !error, output: `${stdout}${stderr}` });
      },
    );
  });
}
