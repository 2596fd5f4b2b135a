// Matching SPIFFE IDs against configured patterns (go-spiffe's spiffeid/match.go): which callers may
// ask for decisions is configuration, and the comparison lives with the ID, not with TLS.
import { fail, ok, type Result } from '../common/result.js';
import { parseSpiffeId, type SpiffeId } from './spiffe-id.js';

/**
 * An exact SPIFFE ID, or a SPIFFE ID followed by `/*`, meaning that ID and every ID below it on
 * path-segment boundaries:
 *   spiffe://cluster.local/ns/istio-system/*  matches …/ns/istio-system and …/ns/istio-system/sa/gw,
 *                                             never …/ns/istio-system-evil/…
 *   spiffe://cluster.local/*                  matches every ID of the trust domain cluster.local
 * Both parts are parsed as SPIFFE IDs, so the comparison is between canonical forms.
 */
export interface IdPattern {
  readonly id: SpiffeId;
  readonly subtree: boolean;
}

export function parseIdPattern(entry: string): Result<IdPattern> {
  const subtree = entry.endsWith('/*');
  const base = subtree ? entry.slice(0, -2) : entry;
  const id = parseSpiffeId(base);
  if (!id.ok) return fail(`"${entry}": ${id.reason}`, 'spiffe_id');
  return ok({ id: id.value, subtree });
}

function matchesPattern(id: SpiffeId, pattern: IdPattern): boolean {
  if (pattern.id.trustDomain !== id.trustDomain) return false;
  if (id.path === pattern.id.path) return true;
  return pattern.subtree && id.path.startsWith(`${pattern.id.path}/`);
}

export function matchesAny(id: SpiffeId, patterns: readonly IdPattern[]): boolean {
  return patterns.some((pattern) => matchesPattern(id, pattern));
}
