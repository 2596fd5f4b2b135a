// The lifecycle as an operator drives it: `build --revision`, then `serve` (the built bin, a child
// process) with a bundle file and a shadow policy; SIGHUP re-checks and reloads; /metrics and /readyz.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBundle } from '../../src/policy/bundle.js';
import { metricsText, policyVariant, replaceFile, sample, waitFor } from './support.js';

const run = promisify(execFile);
const BIN = join(import.meta.dirname, '..', '..', 'dist', 'cli.js');

describe('egress-authz build --revision and serve with reload', () => {
  let root: string;
  let child: ChildProcess | undefined;
  const lines: Record<string, any>[] = [];
  let httpPort = 0;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'egress-authz-cli-lifecycle-'));
  });
  afterAll(async () => {
    if (child && child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child!.once('exit', r));
    }
    rmSync(root, { recursive: true, force: true });
  });

  it('build writes a standard OPA Wasm bundle with the entrypoint and the manifest revision', async () => {
    const out = join(root, 'bundle.tar.gz');
    await run('node', [
      BIN,
      'build',
      '--revision',
      'v1.0.0',
      '--out',
      out,
      policyVariant(root, 'v1', { pool: 'pool_v1' }),
    ]);
    const bundle = await readBundle(readFileSync(out));
    expect(bundle.manifest).toMatchObject({
      revision: 'v1.0.0',
      wasm: [{ entrypoint: 'egress/authz/decision', module: '/policy.wasm' }],
    });
    expect(bundle.data).toMatchObject({ egress: { tenants: { bookinfo: { snat_pool: 'pool_v1' } } } });
  });

  it('serve reloads on file change and on SIGHUP, with a shadow policy; /readyz and /metrics tell', async () => {
    const bundle = join(root, 'bundle.tar.gz');
    const shadowDir = policyVariant(root, 'shadow', { pool: 'pool_shadow' });
    child = spawn(
      'node',
      [
        BIN,
        'serve',
        '--grpc-addr',
        '127.0.0.1:0',
        '--http-addr',
        '127.0.0.1:0',
        '--policy',
        bundle,
        '--shadow-policy',
        shadowDir,
        '--policy-poll-interval',
        '500ms',
      ],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let buffered = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const parts = buffered.split('\n');
      buffered = parts.pop()!;
      for (const p of parts) lines.push(JSON.parse(p));
    });
    await waitFor(() => lines.some((l) => l.msg === 'egress-authz serving'), 20_000, 'serve to start');
    httpPort = lines.find((l) => l.msg === 'egress-authz serving')!.http_port;

    const readyz = async () =>
      (await fetch(`http://127.0.0.1:${httpPort}/readyz`)).json() as Promise<Record<string, any>>;
    expect(await readyz()).toMatchObject({
      status: 'ready',
      policy_revision: 'v1.0.0',
      shadow_policy_revision: expect.stringMatching(/^sha256:/),
    });

    process.kill(child.pid!, 'SIGHUP');
    await waitFor(
      () => lines.filter((l) => l.msg === 'policy reloaded' && l.trigger === 'SIGHUP').length === 2,
      10_000,
      'SIGHUP reloads of live and shadow',
    );
    const text = await metricsText(httpPort);
    expect(sample(text, 'egress_authz_policy_reloads_total', 'policy="live",result="success"')).toBe(1);
    expect(sample(text, 'egress_authz_policy_reloads_total', 'policy="shadow",result="success"')).toBe(1);
    expect(text).toMatch(/^process_cpu_seconds_total /m); // runtime metrics are on for serve

    const next = join(root, 'v2.tar.gz');
    await run('node', [
      BIN,
      'build',
      '--revision',
      'v2.0.0',
      '--out',
      next,
      policyVariant(root, 'v2', { pool: 'pool_v2' }),
    ]);
    replaceFile(bundle, readFileSync(next), 'v2');
    await waitFor(
      () => lines.some((l) => l.msg === 'policy reloaded' && l.policy_revision === 'v2.0.0'),
      10_000,
      'the file change to be picked up',
    );
    expect((await readyz()).policy_revision).toBe('v2.0.0');
    expect(
      sample(await metricsText(httpPort), 'egress_authz_policy_revision_info', 'policy="live",revision="v2.0.0"'),
    ).toBe(1);

    child.kill('SIGTERM');
    expect(await new Promise((r) => child!.once('exit', r))).toBe(0);
  });

  it('refuses a malformed --policy-poll-interval', async () => {
    const r = await run('node', [BIN, 'serve', '--policy-poll-interval', 'soon']).catch((e) => e);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--policy-poll-interval "soon"/);
  });
});
