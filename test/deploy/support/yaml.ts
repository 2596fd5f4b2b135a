// Reads the YAML documents of a deploy asset. `yaml` (1.x) is not a direct dependency: it arrives
// with @open-policy-agent/opa-wasm, and the lock file pins it.
import { readFileSync } from 'node:fs';
import YAML from 'yaml';

export type Json = Record<string, any>;  

/** Every document of the file as plain data; throws with the file name on the first syntax error. */
export function yamlDocuments(path: string): Json[] {
  const docs = YAML.parseAllDocuments(readFileSync(path, 'utf8'));
  for (const d of docs) {
    if (d.errors.length > 0) throw new Error(`${path}: ${d.errors.map((e) => e.message).join('; ')}`);
  }
  return docs.map((d) => d.toJSON() as Json).filter((d) => d !== null);
}
