// The files of a policy folder, as both the folder watcher and the build see them. A folder is
// development input, but it is shipped and can be a mounted volume: the walk follows symlinks (a
// ConfigMap mount is made of them) yet refuses any whose target lies outside the folder (their content
// would become policy data), and reaches each real directory at most once, so a symlink loop (two
// self-links made the old walk exponential) is refused instead of walked.
import { readdirSync, realpathSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

/** a policy folder larger than this (files) is not a policy folder */
const MAX_FOLDER_FILES = 2_000;

export interface FolderWalkOptions {
  /** names (not paths) to leave out, folders included; hidden names are always left out, as opa build does */
  skip?: (name: string) => boolean;
}

/** Relative paths of the files under dir, sorted; throws, saying why, on a loop, an escape or too many files. */
export function listPolicyFolder(dir: string, opts: FolderWalkOptions = {}): string[] {
  const root = realpathSync(dir);
  const inside = (real: string) => real === root || real.startsWith(root + sep);
  const seenDirs = new Set<string>([root]);
  const out: string[] = [];
  const walk = (rel: string): void => {
    const names = readdirSync(join(dir, rel)).sort();
    for (const name of names) {
      if (name.startsWith('.') || opts.skip?.(name)) continue;
      const path = rel ? `${rel}/${name}` : name;
      let real: string;
      try {
        real = realpathSync(join(dir, path));
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code === 'ENOENT') continue; // a dangling symlink mid-swap
        if (code === 'ELOOP') throw new Error(`policy folder ${dir}: ${path} is a symlink loop`);
        throw e;
      }
      if (!inside(real))
        throw new Error(`policy folder ${dir}: ${path} points outside the folder (to ${relative(root, real)})`);
      const info = statSync(real);
      if (info.isDirectory()) {
        if (seenDirs.has(real))
          throw new Error(
            `policy folder ${dir}: ${path} reaches ${relative(root, real) || '.'} a second time (a symlink loop or a second link)`,
          );
        seenDirs.add(real);
        walk(path);
      } else if (info.isFile()) {
        out.push(path);
        if (out.length > MAX_FOLDER_FILES)
          throw new Error(`policy folder ${dir} has more than ${MAX_FOLDER_FILES} files`);
      }
    }
  };
  walk('');
  return out;
}
