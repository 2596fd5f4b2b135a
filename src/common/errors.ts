// What a caught value says: code that catches `unknown` reads it through here instead of casting.

/** The message of anything thrown: an Error's, or the value itself as text. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
