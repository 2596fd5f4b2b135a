// No Docker engine runs here, so the Dockerfile is checked against the repository instead: what it
// copies exists (and is not excluded by .dockerignore) or comes from an earlier stage, the entrypoint
// is the package's CLI, the default command is a real subcommand, the policy it serves is the bundle
// an earlier stage compiles, and the runtime user is not root.
import { existsSync, readFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../e2e/support/envoy.js';

interface Instruction {
  op: string;
  args: string;
  stage: string;
}

function parseDockerfile(text: string): { instructions: Instruction[]; stages: string[] } {
  const instructions: Instruction[] = [];
  const stages: string[] = [];
  let stage = '';
  const logical = text.replace(/\\\n/g, ' ').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
  for (const line of logical) {
    const [, op = '', args = ''] = /^(\S+)\s*(.*)$/.exec(line) ?? [];
    if (op.toUpperCase() === 'FROM') {
      stage = /\sAS\s+(\S+)/i.exec(args)?.[1] ?? `stage${stages.length}`;
      stages.push(stage);
    }
    instructions.push({ op: op.toUpperCase(), args, stage });
  }
  return { instructions, stages };
}

const dockerfile = parseDockerfile(readFileSync(join(repoRoot, 'Dockerfile'), 'utf8'));
const runtime = dockerfile.stages.at(-1)!;
const inRuntime = (op: string) => dockerfile.instructions.filter((i) => i.stage === runtime && i.op === op);
const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as {
  bin: Record<string, string>;
  scripts: Record<string, string>;
};
const ignored = readFileSync(join(repoRoot, '.dockerignore'), 'utf8')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l !== '' && !l.startsWith('#'));

function copyParts(args: string): { from?: string; sources: string[]; dest: string } {
  const words = args.split(/\s+/);
  const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
  const paths = words.filter((w) => !w.startsWith('--'));
  return { from, sources: paths.slice(0, -1), dest: paths.at(-1)! };
}

function workdirAt(stage: string): string {
  const ownStages = [stage];
  // a stage built FROM an earlier one inherits its WORKDIR
  const base = dockerfile.instructions.find((i) => i.op === 'FROM' && i.stage === stage)!.args.split(/\s+/)[0]!;
  if (dockerfile.stages.includes(base)) ownStages.unshift(base);
  const dirs = dockerfile.instructions.filter((i) => ownStages.includes(i.stage) && i.op === 'WORKDIR');
  return dirs.at(-1)?.args ?? '/';
}

describe('Dockerfile', () => {
  it('copies only files that exist in the build context or stages defined before', () => {
    const copies = dockerfile.instructions.filter((i) => i.op === 'COPY');
    expect(copies.length).toBeGreaterThan(0);
    for (const copy of copies) {
      const { from, sources } = copyParts(copy.args);
      if (from !== undefined) {
        const stages = dockerfile.stages.slice(0, dockerfile.stages.indexOf(copy.stage));
        expect(stages, `COPY --from=${from}`).toContain(from);
        continue;
      }
      for (const source of sources) {
        expect(existsSync(join(repoRoot, source)), `COPY source ${source}`).toBe(true);
        expect(ignored, `COPY source ${source} is excluded by .dockerignore`).not.toContain(source.split('/')[0]);
      }
    }
  });

  it('runs the package CLI as its entrypoint with a subcommand the CLI has', () => {
    const entrypoint = JSON.parse(inRuntime('ENTRYPOINT').at(-1)!.args) as string[];
    expect(entrypoint[0]).toBe('node');
    expect(entrypoint.at(-1)).toBe(pkg.bin['egress-authz']!.replace(/^\.\//, ''));
    const cmd = JSON.parse(inRuntime('CMD').at(-1)!.args) as string[];
    const cli = readFileSync(join(repoRoot, 'src/cli.ts'), 'utf8');
    const table = /const commands\b.*?=\s*\{([^}]*)\}/s.exec(cli)?.[1] ?? '';
    expect(table.split(',').map((e) => e.split(':')[0]!.trim()), 'subcommands in src/cli.ts').toContain(cmd[0]);
  });

  it('runs node with the flags `npm start` gives it: NODE_OPTIONS plus the V8 flags NODE_OPTIONS refuses', () => {
    const entrypoint = JSON.parse(inRuntime('ENTRYPOINT').at(-1)!.args) as string[];
    const env = inRuntime('ENV').map((i) => /NODE_OPTIONS="([^"]*)"/.exec(i.args)?.[1]).find((v) => v !== undefined);
    expect(env, 'ENV NODE_OPTIONS in the runtime stage').toBeDefined();
    const image = [...env!.split(' '), ...entrypoint.slice(1, -1)];
    const start = pkg.scripts.start!.split(' ');
    expect(image.sort()).toEqual(start.slice(start.indexOf('node') + 1, start.indexOf('dist/cli.js')).sort());
  });

  it('serves the policy bundle compiled by an earlier stage and copied into the runtime', () => {
    const cmd = JSON.parse(inRuntime('CMD').at(-1)!.args) as string[];
    const served = cmd[cmd.indexOf('--policy') + 1]!;
    const build = dockerfile.instructions.find((i) => i.op === 'RUN' && /cli\.js build --out (\S+)/.test(i.args))!;
    expect(build, 'a RUN that compiles the policy with `egress-authz build --out`').toBeDefined();
    const out = /--out (\S+)/.exec(build.args)![1]!;
    expect(posix.resolve(workdirAt(build.stage), out)).toBe(served);
    const copied = inRuntime('COPY').map((i) => copyParts(i.args)).find((c) => c.from === build.stage);
    expect(copied, `COPY --from=${build.stage} in the runtime stage`).toBeDefined();
    expect(served.startsWith(posix.resolve(workdirAt(runtime), copied!.dest))).toBe(true);
  });

  it('leaves the worker count to the container CPU limit: no --workers, serve reads the cgroup quota', () => {
    const cmd = JSON.parse(inRuntime('CMD').at(-1)!.args) as string[];
    expect(cmd).not.toContain('--workers');
    expect(inRuntime('ENV').some((i) => /EGRESS_AUTHZ_WORKERS/.test(i.args))).toBe(false);
  });

  it('installs production dependencies only and runs as a non-root user, exposing gRPC 9191 and HTTP 8181', () => {
    expect(inRuntime('RUN').some((i) => /npm ci\b.*--omit=dev/.test(i.args))).toBe(true);
    const user = inRuntime('USER').at(-1)?.args;
    expect(user).toBeDefined();
    expect(['root', '0', '0:0']).not.toContain(user);
    expect(inRuntime('EXPOSE').flatMap((i) => i.args.split(/\s+/))).toEqual(expect.arrayContaining(['9191', '8181']));
  });

  it('compiles with the same opa version as scripts/install-opa.sh', () => {
    const pinned = /OPA_VERSION:-(v[\d.]+)/.exec(readFileSync(join(repoRoot, 'scripts/install-opa.sh'), 'utf8'))![1];
    expect(dockerfile.instructions.find((i) => i.op === 'ARG' && i.args.startsWith('OPA_VERSION='))?.args).toBe(`OPA_VERSION=${pinned}`);
  });
});
