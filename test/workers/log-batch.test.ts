// The service's own log lines reach pino's asynchronous destination in batches (batchLines): one
// thread-pool write per interval instead of one per Check, as bytes gathered in one reused buffer. What
// must hold: lines in order and whole (pino's string lines and the decision lines' bytes alike), none lost
// or held back past the interval, nothing timed while idle, everything out on flushSync, a batch handed on
// that the next lines cannot overwrite, a line larger than the buffer written whole, and a dropped batch
// counted as the lines it held.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { batchLines, byteDestination, linesIn, type ByteWriter } from '../../src/service/log-lines.js';

/** The destination's writes, as text, and the Buffers themselves. */
function recorder(): ByteWriter & { writes: string[]; buffers: Buffer[]; syncs: number } {
  const r = {
    writes: [] as string[],
    buffers: [] as Buffer[],
    syncs: 0,
    write(bytes: Buffer) {
      r.buffers.push(bytes);
      r.writes.push(bytes.toString('utf8'));
      return true;
    },
    flushSync() {
      r.syncs++;
    },
  };
  return r;
}

describe('batchLines', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('hands the lines of one interval on as one write, in order, and not before the interval', () => {
    const to = recorder();
    const lines = batchLines(to, { intervalMs: 10 });
    for (let i = 0; i < 5; i++) lines.write(`{"n":${i}}\n`);
    vi.advanceTimersByTime(9);
    expect(to.writes).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(to.writes).toEqual(['{"n":0}\n{"n":1}\n{"n":2}\n{"n":3}\n{"n":4}\n']);
    lines.write('{"n":5}\n');
    vi.advanceTimersByTime(10);
    expect(to.writes).toEqual(['{"n":0}\n{"n":1}\n{"n":2}\n{"n":3}\n{"n":4}\n', '{"n":5}\n']);
  });

  it('arms no timer while no line waits', () => {
    const to = recorder();
    const lines = batchLines(to, { intervalMs: 10 });
    expect(vi.getTimerCount()).toBe(0);
    lines.write('a\n');
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(10);
    expect(vi.getTimerCount()).toBe(0);
    vi.advanceTimersByTime(1000);
    expect(to.writes).toEqual(['a\n']);
  });

  it('hands a batch on at once when it fills the buffer, and before a line that would not fit', () => {
    const to = recorder();
    const lines = batchLines(to, { intervalMs: 10, maxBytes: 100 });
    const line = `${'x'.repeat(39)}\n`;
    lines.write(line);
    lines.write(line);
    expect(to.writes).toEqual([]);
    lines.write(line);
    expect(to.writes).toEqual([line.repeat(2)]);
    lines.write(`${'y'.repeat(59)}\n`);
    expect(to.writes).toEqual([line.repeat(2), `${line}${'y'.repeat(59)}\n`]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('hands on a copy: the next lines do not overwrite a batch the destination has not written yet', () => {
    const to = recorder();
    const lines = batchLines(to, { intervalMs: 10, maxBytes: 64 });
    lines.write('first\n');
    lines.flushSync();
    lines.write('other\n');
    lines.flushSync();
    expect(to.buffers.map((b) => b.toString())).toEqual(['first\n', 'other\n']);
  });

  it('writes a line larger than the buffer whole, on its own, after the lines before it', () => {
    const to = recorder();
    const lines = batchLines(to, { intervalMs: 10, maxBytes: 16 });
    const long = `${'é'.repeat(20)}\n`;
    lines.write('a\n');
    lines.write(long);
    lines.write('b\n');
    lines.flushSync();
    expect(to.writes).toEqual(['a\n', long, 'b\n']);
    // and as bytes reserved by the decision line's writer
    const at = lines.reserve(40);
    expect(lines.buffer.length).toBeGreaterThanOrEqual(40);
    lines.commit(at + lines.buffer.write(`${'z'.repeat(39)}\n`, at));
    lines.write('c\n');
    lines.flushSync();
    expect(to.writes.slice(3)).toEqual([`${'z'.repeat(39)}\n`, 'c\n']);
  });

  it("keeps pino's string lines and the bytes written into the buffer in order, UTF-8 encoded", () => {
    const to = recorder();
    const lines = batchLines(to, { intervalMs: 10, maxBytes: 1024 });
    lines.write('{"msg":"é😀"}\n');
    const at = lines.reserve(10);
    lines.commit(at + lines.buffer.write('bytes\n', at, 'latin1'));
    lines.write('{"msg":"after"}\n');
    vi.advanceTimersByTime(10);
    expect(to.writes).toEqual(['{"msg":"é😀"}\nbytes\n{"msg":"after"}\n']);
  });

  it('flushSync hands every waiting line on, then flushes the destination', () => {
    const to = recorder();
    const lines = batchLines(to, { intervalMs: 10 });
    lines.write('a\n');
    lines.write('b\n');
    lines.flushSync();
    expect(to.writes).toEqual(['a\nb\n']);
    expect(to.syncs).toBe(1);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("returns the destination's back-pressure answer from its last write", () => {
    let answer = false;
    const to = { write: () => answer, flushSync: () => {} };
    const lines = batchLines(to, { intervalMs: 10, maxBytes: 4 });
    expect(lines.write('ab\n')).toBe(true);
    expect(lines.write('cd\n')).toBe(false);
    answer = true;
    lines.write('efgh\n');
    expect(lines.write('i\n')).toBe(true);
  });
});

describe('linesIn', () => {
  it('counts the lines of a batch; a batch without a newline is one line', () => {
    expect(linesIn(Buffer.from('a\nb\nc\n'))).toBe(3);
    expect(linesIn(Buffer.from('a\n'))).toBe(1);
    expect(linesIn(Buffer.from('cut'))).toBe(1);
    expect(linesIn(Buffer.alloc(0))).toBe(0);
  });

  it("counts what pino's destination drops past maxLength as the lines dropped", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'log-batch-'));
    try {
      const file = join(dir, 'out.log');
      const destination = byteDestination({ dest: file, sync: true, maxLength: 64 });
      let dropped = 0;
      destination.on('drop', (batch: Buffer) => void (dropped += linesIn(batch)));
      await new Promise((resolve) => destination.once('ready', resolve));
      const lines = batchLines(destination, { intervalMs: 10, maxBytes: 1_000_000 });
      // a batch of 10 lines of 10 bytes is over the 64-byte bound: all 10 dropped, counted as 10
      for (let i = 0; i < 10; i++) lines.write(`line ${String(i).padStart(3, '0')}\n`);
      lines.flushSync();
      expect(dropped).toBe(10);
      lines.write('kept\n');
      lines.flushSync();
      destination.end();
      expect(readFileSync(file, 'utf8')).toBe('kept\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
