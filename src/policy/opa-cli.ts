// The `opa` CLI is a build tool here, never a server: it compiles Rego to Wasm (`opa build -t wasm`) and
// runs Rego unit tests (`opa test`). Evaluation happens in-process with the Wasm SDK (see policy.ts).
import { execFile } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleModulePath, DEFAULT_ENTRYPOINT, readBundleFiles, writeBundleFiles } from './bundle.js';
import { signBundleFiles, SIGNATURES_FILE, type BundleSigningKey } from './bundle-signing.js';
import { listPolicyFolder } from './policy-folder.js';
import { footprintStamp, inputFootprint, MANIFEST_METADATA_KEY } from './input-footprint.js';
import { isDirectory } from '../common/files.js';
import { errorMessage } from '../common/errors.js';

/**
 * Names OPA skips when it loads a policy folder, for `build` and `test` alike: case files are inputs
 * for `egress-authz test`, not policy data (OPA would otherwise load every .json as data).
 */
const POLICY_IGNORES: readonly string[] = ['cases', '.*'];

/** Test files are excluded from bundles only; `opa test` needs them. */
const BUILD_IGNORES: readonly string[] = [...POLICY_IGNORES, '*_test.rego'];

const BUILD_TIMEOUT_MS = 120_000;
const MAX_OUTPUT_BYTES = 16 * 1024 * 1024;

class OpaNotFoundError extends Error {
  override name = 'OpaNotFoundError';
}

/** The folder holding this package's package.json, from src/ (vitest, tsx) and dist/ (built) alike. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown }).name === 'egress-authz') return dir;
      } catch {
        // not ours; keep walking up
      }
    }
    const parent = dirname(dir);
    if (parent === dir)
      throw new Error(
        'egress-authz: cannot find the package root (package.json) above ' + fileURLToPath(import.meta.url),
      );
    dir = parent;
  }
}

/**
 * The opa binary to run: $EGRESS_AUTHZ_OPA if set, else the project's pinned copy in .tools/bin, else
 * `opa` on PATH. Throws OpaNotFoundError naming the install script when none is usable.
 */
export function locateOpa(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env['EGRESS_AUTHZ_OPA'];
  if (explicit) {
    if (isExecutable(explicit)) return explicit;
    throw new OpaNotFoundError(`EGRESS_AUTHZ_OPA=${explicit} is not an executable file`);
  }
  const root = packageRoot();
  const pinned = join(root, '.tools', 'bin', 'opa');
  if (isExecutable(pinned)) return pinned;
  for (const dir of (env['PATH'] ?? '').split(delimiter)) {
    if (dir && isExecutable(join(dir, 'opa'))) return join(dir, 'opa');
  }
  throw new OpaNotFoundError(
    `the opa CLI was not found (looked at $EGRESS_AUTHZ_OPA, ${pinned}, PATH); install it with: bash ${join(root, 'scripts', 'install-opa.sh')}`,
  );
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

interface RunOutput {
  code: number;
  stdout: string;
  stderr: string;
}

function runOpa(args: string[], cwd?: string): Promise<RunOutput> {
  const opa = locateOpa();
  return new Promise((resolve, reject) => {
    execFile(
      opa,
      args,
      { cwd, timeout: BUILD_TIMEOUT_MS, maxBuffer: MAX_OUTPUT_BYTES, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') {
          reject(
            new Error(
              `opa ${args[0] ?? ''} could not run: ${err.killed ? `timed out after ${BUILD_TIMEOUT_MS} ms` : err.message}`,
            ),
          );
          return;
        }
        resolve({ code: typeof err?.code === 'number' ? err.code : 0, stdout, stderr });
      },
    );
  });
}

function ignoreArgs(names: readonly string[]): string[] {
  return names.flatMap((n) => ['--ignore', n]);
}

export interface BuildOptions {
  /** written into the bundle manifest; `loadPolicy` reports it as the policy revision */
  revision?: string;
  /** sign the bundle (`.signatures.json`, as `opa build --signing-key` writes it) */
  signing?: BundleSigningKey;
}

/**
 * Compiles a policy folder (Rego + data.json files) into an OPA Wasm bundle at outFile
 * (`opa build -t wasm -e <entrypoint>`), skipping `cases/`, hidden files and `*_test.rego`.
 * Rejects with opa's own compiler messages when the policy does not compile.
 */
export async function buildWasmBundle(
  policyDir: string,
  outFile: string,
  entrypoint = DEFAULT_ENTRYPOINT,
  opts: BuildOptions = {},
): Promise<void> {
  if (!(await isDirectory(policyDir))) throw new Error(`policy folder ${policyDir} does not exist or is not a folder`);
  const sources = policyRegoSources(policyDir);
  const out = await withOfflineCapabilities((capabilities) => {
    const args = ['build', '-t', 'wasm', '-e', entrypoint, '-o', resolve(outFile), '--capabilities', capabilities];
    args.push(...ignoreArgs(BUILD_IGNORES));
    if (opts.revision !== undefined) args.push('--revision', opts.revision);
    // Built from inside the folder, so file paths in the bundle (and its content hash, the default
    // revision) do not depend on where the folder lives.
    args.push('.');
    return runOpa(args, resolve(policyDir));
  });
  if (out.code !== 0) {
    throw new Error(`opa build failed for ${policyDir}:\n${(out.stderr || out.stdout).trim()}`);
  }
  await stampInputFootprint(outFile, sources, entrypoint, opts.signing);
}

/**
 * The Rego modules `opa build` compiles from a folder: every .rego file outside what BUILD_IGNORES
 * names. The walk (policy-folder.ts) also refuses symlink loops and links out of the folder, before
 * opa reads anything.
 */
function policyRegoSources(dir: string): string[] {
  return listPolicyFolder(dir, { skip: (name) => name === 'cases' || name.endsWith('_test.rego') })
    .filter((path) => path.endsWith('.rego'))
    .map((path) => readFileSync(join(dir, path), 'utf8'));
}

/**
 * Writes the footprint of the policy's source into the bundle manifest (see input-footprint.ts), bound
 * to the module compiled from that source by its hash.
 */
async function stampInputFootprint(
  bundleFile: string,
  sources: string[],
  entrypoint: string,
  signing: BundleSigningKey | undefined,
): Promise<void> {
  const files = await readBundleFiles(readFileSync(bundleFile));
  const manifestBytes = files.get('.manifest');
  const manifest = manifestBytes
    ? (JSON.parse(Buffer.from(manifestBytes).toString('utf8')) as Record<string, unknown>)
    : {};
  const metadata =
    typeof manifest.metadata === 'object' && manifest.metadata !== null
      ? (manifest.metadata as Record<string, unknown>)
      : {};
  const module = files.get(bundleModulePath(manifest, entrypoint));
  if (!module) throw new Error(`opa build wrote ${bundleFile} without its Wasm module`);
  manifest.metadata = { ...metadata, [MANIFEST_METADATA_KEY]: footprintStamp(inputFootprint(sources), module) };
  files.set('.manifest', Buffer.from(JSON.stringify(manifest)));
  // Signed last, over the files as written: the stamp changes .manifest after opa build.
  if (signing) files.set(SIGNATURES_FILE, await signBundleFiles(files, signing));
  writeFileSync(bundleFile, writeBundleFiles(files));
}

/** Builtins that reach the network; policies built or tested here may not call them. */
const NETWORK_BUILTINS: readonly string[] = ['http.send', 'net.lookup_ip_addr'];

let capabilitiesText: Promise<string> | undefined;

/**
 * Runs `use` with a capabilities file for `opa build` and `opa test`: this opa's own (`opa capabilities
 * --current`) without the network builtins, and no hosts for remote schemas. A policy folder reloaded
 * on a change runs its Rego unit tests in opa: without this, a test could `http.send` from the
 * service's host. The text is asked of opa once per process; the file lives in a temporary folder
 * removed when `use` settles (a long-running `serve` reloads a folder many times).
 */
async function withOfflineCapabilities<T>(use: (file: string) => Promise<T>): Promise<T> {
  capabilitiesText ??= (async () => {
    const out = await runOpa(['capabilities', '--current']);
    if (out.code !== 0) throw new Error(`opa capabilities failed: ${(out.stderr || out.stdout).trim()}`);
    const caps = JSON.parse(out.stdout) as { builtins?: { name?: string }[]; [k: string]: unknown };
    caps.builtins = (caps.builtins ?? []).filter((b) => !NETWORK_BUILTINS.includes(b.name ?? ''));
    caps['allow_net'] = [];
    return JSON.stringify(caps);
  })();
  capabilitiesText.catch(() => (capabilitiesText = undefined));
  const text = await capabilitiesText;
  const dir = await mkdtemp(join(tmpdir(), 'egress-authz-opa-'));
  try {
    const file = join(dir, 'capabilities.json');
    await writeFile(file, text);
    return await use(file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface OpaTestCase {
  name: string;
  pass: boolean;
  /** opa's failure or error text, when the test did not pass */
  detail?: string;
}

export interface OpaTestReport {
  ok: boolean;
  passed: number;
  failed: number;
  tests: OpaTestCase[];
  /** runner-style lines (`✓ data.pkg.test_x`, `✗ …`), then `N passed, N failed`; or opa's error */
  text: string;
}

interface OpaJsonResult {
  package?: string;
  name?: string;
  fail?: boolean;
  skip?: boolean;
  error?: unknown;
  output?: string;
}

/**
 * Runs the Rego unit tests of a policy folder (`opa test`, ignoring `cases/`). Resolves with a report
 * (ok=false on any failure, including a folder that does not compile); rejects only when opa cannot run.
 */
export async function runOpaTest(dir: string): Promise<OpaTestReport> {
  try {
    listPolicyFolder(dir, { skip: (name) => name === 'cases' });
  } catch (e) {
    return {
      ok: false,
      passed: 0,
      failed: 1,
      tests: [],
      text: `✗ opa test ${dir}\n${errorMessage(e)}\n0 passed, 1 failed`,
    };
  }
  const out = await withOfflineCapabilities((capabilities) =>
    runOpa(['test', '--format', 'json', '--capabilities', capabilities, ...ignoreArgs(POLICY_IGNORES), dir]),
  );
  let results: OpaJsonResult[] | undefined;
  try {
    const parsed: unknown = JSON.parse(out.stdout);
    if (Array.isArray(parsed)) results = parsed as OpaJsonResult[];
  } catch {
    results = undefined;
  }
  if (!results) {
    const message = (out.stderr || out.stdout).trim() || `opa test exited with ${out.code}`;
    return { ok: false, passed: 0, failed: 1, tests: [], text: `✗ opa test ${dir}\n${message}\n0 passed, 1 failed` };
  }
  const tests: OpaTestCase[] = results
    .filter((r) => !r.skip)
    .map((r) => {
      const name = `${r.package ?? '?'}.${r.name ?? '?'}`;
      if (r.error !== undefined) return { name, pass: false, detail: describeOpaError(r.error) };
      if (r.fail) return { name, pass: false, detail: r.output?.trim() || 'test failed' };
      return { name, pass: true };
    });
  const passed = tests.filter((t) => t.pass).length;
  const failed = tests.length - passed;
  const lines = tests.map((t) => (t.pass ? `✓ ${t.name}` : `✗ ${t.name} — ${t.detail ?? 'failed'}`));
  lines.push(`${passed} passed, ${failed} failed`);
  return { ok: failed === 0 && out.code === 0, passed, failed, tests, text: lines.join('\n') };
}

function describeOpaError(error: unknown): string {
  if (error && typeof error === 'object' && 'message' in error) return String(error.message);
  return JSON.stringify(error);
}
