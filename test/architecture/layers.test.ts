// The folders are layers in pipeline order and every import points down (or stays in its folder):
// metrics observe the pipeline from the side, the lifecycle reports to interfaces it defines.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { expect, it } from 'vitest';

const ORDER = ['common', 'identity', 'policy', 'decision', 'lifecycle', 'spiffe', 'transport', 'service', 'cli'];
const SRC = resolve(import.meta.dirname, '..', '..', 'src');

function modules(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return modules(path);
    return path.endsWith('.ts') ? [path] : [];
  });
}

function layer(file: string): number {
  const rel = relative(SRC, file);
  return ORDER.indexOf(rel.includes('/') ? rel.split('/')[0]! : 'cli');
}

it('every module of src/ is in a known layer and imports only its own or lower layers', () => {
  const upward: string[] = [];
  const files = modules(SRC);
  for (const file of files) {
    expect(layer(file), relative(SRC, file)).toBeGreaterThanOrEqual(0);
    const text = readFileSync(file, 'utf8');
    const specifiers = [
      ...text.matchAll(/^(?:import|export)[^'"]*?from\s+'(\.[^']+)'/gms),
      ...text.matchAll(/import\(\s*'(\.[^']+)'\s*\)|new URL\('(\.[^']+)'/g),
    ].map((m) => m[1] ?? m[2]!);
    for (const spec of specifiers) {
      const target = resolve(dirname(file), spec).replace(/\.js$/, '.ts');
      if (layer(target) > layer(file)) upward.push(`${relative(SRC, file)} -> ${relative(SRC, target)}`);
    }
  }
  expect(files.length).toBeGreaterThan(50);
  expect(upward).toEqual([]);
});
