// Every relative link in the repository's Markdown resolves to a file or folder that exists.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..', '..');
const markdown = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '*.md'], {
  cwd: root,
  encoding: 'utf8',
})
  .split('\n')
  .filter((f) => f !== '' && existsSync(join(root, f)));

function relativeLinks(text: string): string[] {
  const out: string[] = [];
  // Inline links outside code spans; images too.
  for (const m of text.replace(/```[\s\S]*?```/g, '').matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
    const target = m[1]!;
    if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith('#')) continue;
    out.push(target.split('#')[0]!);
  }
  return out;
}

describe('documentation links', () => {
  it('finds the Markdown files', () => {
    expect(markdown).toContain('README.md');
    expect(markdown).toContain('docs/design.md');
  });

  it.each(markdown)('%s: every relative link resolves', (file) => {
    const broken = relativeLinks(readFileSync(join(root, file), 'utf8')).filter(
      (target) => target !== '' && !existsSync(join(root, dirname(file), decodeURIComponent(target))),
    );
    expect(broken).toEqual([]);
  });
});
