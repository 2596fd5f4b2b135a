// Shape checks for parsed JSON (bundle manifests, trust bundles, case files, policy results).

/** A JSON object: not null, not an array. */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
