import { createHash, hash } from 'node:crypto';

/** The SHA-256 of bytes (or of a string's UTF-8), as lower-case hex. */
export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * The SHA-256 of a string's UTF-8 as a 32-character Latin-1 string: a cache key of one fixed size (48
 * bytes of heap) whatever the text's, for the caches keyed by a certificate's exact text.
 */
export function sha256Key(text: string): string {
  if (text !== last.text) last = { text, key: hash('sha256', text, 'binary') };
  return last.key;
}

// A Check keys the same certificate text twice in a row (the certificate cache, then the chain
// cache): the second is a string comparison instead of a SHA-256 over a few KiB.
let last = { text: '', key: hash('sha256', '', 'binary') };
