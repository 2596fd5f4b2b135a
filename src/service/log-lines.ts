// Whole log lines from many processes onto one stdout. Several processes writing one pipe interleave
// any write larger than PIPE_BUF (4,096 bytes on Linux), and pino's asynchronous destination batches
// lines into writes of tens of KiB: two workers sharing stdout would cut each other's JSON lines. So each
// worker writes to a pipe of its own, and the primary, the only writer of the real stdout, passes on
// complete lines only, whatever their length. Bounded: a slow stdout pauses the pipes (the workers' own
// bounded buffers then drop and count, as one process does), and a line with no end is cut at maxLineBytes.
import type { Readable } from 'node:stream';

/** pino's destination (SonicBoom): write returns false above its high-water mark, then emits 'drain' */
export interface LineSink {
  write(text: string): boolean;
  once(event: 'drain', listener: () => void): unknown;
}

const MAX_LINE_BYTES = 1024 * 1024;

/** Copies `from` to `to` in whole lines; resolves when `from` ends (its last partial line written with a newline). */
export function forwardLines(from: Readable, to: LineSink, maxLineBytes = MAX_LINE_BYTES): Promise<void> {
  let rest: Buffer | undefined;
  let paused = false;
  const write = (text: string) => {
    if (to.write(text) || paused) return;
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
          write(`${data.toString('utf8')}\n`);
        }
        return;
      }
      rest = nl === data.length - 1 ? undefined : Buffer.from(data.subarray(nl + 1));
      // A newline byte never occurs inside a UTF-8 sequence, so decoding up to it splits no character.
      write(data.toString('utf8', 0, nl + 1));
    });
    let finished = false;
    const done = () => {
      if (finished) return;
      finished = true;
      if (rest) write(`${rest.toString('utf8')}\n`);
      rest = undefined;
      resolve();
    };
    from.once('end', done);
    from.once('close', done);
    from.once('error', done);
  });
}

/** pino's asynchronous destination (SonicBoom), and what batchLines puts in front of it for pino. */
export interface LineWriter {
  write(text: string): boolean;
  flushSync(): void;
}

/**
 * Log lines gathered for up to intervalMs (or maxChars) and handed to `to` as one write. Each write of
 * pino's asynchronous destination is a job for libuv's thread pool, whose thread shares the answering
 * thread's core on a CPU-limited worker: with one write a line, `--cpu-prof` through Envoy at 1,000
 * Checks/s charged 46 % of the answering thread's busy time to queueing those jobs (docs/performance.md,
 * Decision log writes). Batched, it is at most 1,000 / intervalMs writes a second at any rate. A line
 * waits at most intervalMs; nothing is timed while no line waits.
 */
export function batchLines(to: LineWriter, { intervalMs = 10, maxChars = 64 * 1024 } = {}): LineWriter {
  let pending = '';
  let timer: NodeJS.Timeout | undefined;
  let accepted = true;
  const handOn = () => {
    clearTimeout(timer);
    timer = undefined;
    if (pending === '') return;
    const batch = pending;
    pending = '';
    accepted = to.write(batch);
  };
  return {
    write(line) {
      pending += line;
      if (pending.length >= maxChars) handOn();
      else if (timer === undefined) {
        timer = setTimeout(handOn, intervalMs);
        timer.unref();
      }
      return accepted;
    },
    flushSync() {
      handOn();
      to.flushSync();
    },
  };
}

/** Lines in a batch the destination dropped (its 'drop' event carries the whole batch). */
export function linesIn(batch: string): number {
  let n = 0;
  for (let i = batch.indexOf('\n'); i >= 0; i = batch.indexOf('\n', i + 1)) n++;
  return n === 0 && batch !== '' ? 1 : n;
}
