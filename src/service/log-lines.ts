// Whole log lines from many processes onto one stdout. Several processes writing one pipe interleave
// any write larger than PIPE_BUF (4,096 bytes on Linux), and pino's asynchronous destination batches
// lines into writes of tens of KiB: two workers sharing stdout would cut each other's JSON lines. So each
// worker writes to a pipe of its own, and the primary, the only writer of the real stdout, passes on
// complete lines only, whatever their length. Bounded: a slow stdout pauses the pipes (the workers' own
// bounded buffers then drop and count, as one process does), and a line with no end is cut at maxLineBytes.
import type { Readable } from 'node:stream';
import pino from 'pino';

/** pino's destination (SonicBoom, buffer mode): write returns false above its high-water mark, then emits 'drain' */
export interface LineSink {
  write(bytes: Buffer): boolean;
  once(event: 'drain', listener: () => void): unknown;
}

const MAX_LINE_BYTES = 1024 * 1024;

/** A line with no end, ended: decoded and encoded again, so a character cut at its end becomes U+FFFD. */
const cutLine = (data: Buffer): Buffer => Buffer.from(`${data.toString('utf8')}\n`, 'utf8');

/** Copies `from` to `to` in whole lines; resolves when `from` ends (its last partial line written with a newline). */
export function forwardLines(from: Readable, to: LineSink, maxLineBytes = MAX_LINE_BYTES): Promise<void> {
  let rest: Buffer | undefined;
  let paused = false;
  const write = (bytes: Buffer) => {
    if (to.write(bytes) || paused) return;
    paused = true;
    from.pause();
    to.once('drain', () => {
      paused = false;
      from.resume();
    });
  };
  return new Promise((resolve) => {
    from.on('data', (chunk: Buffer) => {
      const data = rest ? Buffer.concat([rest, chunk]) : chunk;
      const nl = data.lastIndexOf(10);
      if (nl < 0) {
        // No end yet: keep it, unless it outgrew any log line we write (then it goes out cut, still one line).
        if (data.length <= maxLineBytes) rest = data;
        else {
          rest = undefined;
          write(cutLine(data));
        }
        return;
      }
      rest = nl === data.length - 1 ? undefined : Buffer.from(data.subarray(nl + 1));
      // A newline byte never occurs inside a UTF-8 sequence, so the lines go on as the bytes they are. The
      // destination keeps the Buffer it is given until written: a pipe's chunk is never reused.
      write(data.subarray(0, nl + 1));
    });
    let finished = false;
    const done = () => {
      if (finished) return;
      finished = true;
      if (rest) write(cutLine(rest));
      rest = undefined;
      resolve();
    };
    from.once('end', done);
    from.once('close', done);
    from.once('error', done);
  });
}

/** pino's asynchronous destination (SonicBoom) in its buffer mode: it keeps the Buffers it is given. */
export interface ByteWriter {
  write(bytes: Buffer): boolean;
  flushSync(): void;
}

/**
 * What batchLines puts in front of the destination: pino writes its lines as strings (write), the decision
 * line is written as bytes into the batch's own buffer (reserve, buffer, commit).
 */
export interface LineBatch {
  write(text: string): boolean;
  flushSync(): void;
  /** Room for one line of at most maxBytes: returns where in `buffer` to write it, then call commit(end). */
  reserve(maxBytes: number): number;
  /** the buffer the reserved line is written into (valid until commit) */
  readonly buffer: Buffer;
  /** the reserved line ends at `end` (exclusive) in `buffer` */
  commit(end: number): void;
}

/**
 * Log lines gathered for up to intervalMs (or until maxBytes are waiting) and handed to `to` as one
 * write. Each write of pino's asynchronous destination is a job for libuv's thread pool, whose thread
 * shares the answering thread's core on a CPU-limited worker: with one write a line, `--cpu-prof` through
 * Envoy at 1,000 Checks/s charged 46 % of the answering thread's busy time to queueing those jobs
 * (docs/performance.md, Decision log writes). Batched, it is at most 1,000 / intervalMs writes a second at
 * any rate. A line waits at most intervalMs; nothing is timed while no line waits.
 *
 * The lines wait as bytes in one reused buffer rather than as a string: a string batch lives through two
 * scavenges while it waits and is promoted to old space (Mark-Compacts under load), the bytes make no
 * garbage at all. A batch is handed on as a copy, because the destination writes it later while the next
 * lines overwrite the buffer; a line never straddles two batches, and a line larger than the buffer is
 * handed on whole, on its own, after the batch before it.
 */
export function batchLines(to: ByteWriter, { intervalMs = 10, maxBytes = 64 * 1024 } = {}): LineBatch {
  const own = Buffer.allocUnsafe(maxBytes);
  let buffer = own;
  let at = 0;
  let timer: NodeJS.Timeout | undefined;
  let accepted = true;
  const handOn = () => {
    clearTimeout(timer);
    timer = undefined;
    if (at === 0) return;
    const batch = Buffer.allocUnsafeSlow(at);
    own.copy(batch, 0, 0, at);
    at = 0;
    accepted = to.write(batch);
  };
  const waiting = () => {
    if (at >= maxBytes) handOn();
    else if (timer === undefined) {
      timer = setTimeout(handOn, intervalMs);
      timer.unref();
    }
  };
  const reserve = (max: number): number => {
    if (at + max <= maxBytes) return at;
    handOn();
    if (max <= maxBytes) return 0;
    // Too large for the buffer: written into one of its own, handed on by commit.
    buffer = Buffer.allocUnsafeSlow(max);
    return 0;
  };
  const commit = (end: number): void => {
    if (buffer === own) {
      at = end;
      waiting();
      return;
    }
    const line = buffer.subarray(0, end);
    buffer = own;
    accepted = to.write(line);
  };
  return {
    get buffer() {
      return buffer;
    },
    reserve,
    commit,
    write(text) {
      // A UTF-16 code unit is at most 3 bytes of UTF-8 (a surrogate pair, two units, is 4).
      const max = text.length * 3;
      const start = max <= maxBytes - at ? at : reserve(Math.min(max, Buffer.byteLength(text)));
      commit(start + buffer.write(text, start, 'utf8'));
      return accepted;
    },
    flushSync() {
      handOn();
      to.flushSync();
    },
  };
}

/** pino's asynchronous destination in its buffer mode, as batchLines and forwardLines write to it. */
export type ByteDestination = Omit<ReturnType<typeof pino.destination>, 'write'> & ByteWriter & LineSink;

export function byteDestination(opts: {
  /** a file or descriptor; stdout without */
  dest?: string | number;
  sync: boolean;
  /** bytes waiting at most: beyond, a write is dropped ('drop' event) */
  maxLength: number;
}): ByteDestination {
  // sonic-boom's types declare only the string write; in buffer mode write takes (and keeps) Buffers.
  return pino.destination({ ...opts, contentMode: 'buffer' }) as unknown as ByteDestination;
}

const NEWLINE = 10;

/** Lines in a batch the destination dropped (its 'drop' event carries the whole batch). */
export function linesIn(batch: Buffer): number {
  let n = 0;
  for (let i = batch.indexOf(NEWLINE); i >= 0; i = batch.indexOf(NEWLINE, i + 1)) n++;
  return n === 0 && batch.length !== 0 ? 1 : n;
}
