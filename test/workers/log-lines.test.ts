// Decision log lines stay whole when several processes log at once. The hazard, shown first: two
// processes writing long lines into one pipe cut each other's lines. Then the fix: each writer on a pipe
// of its own, forwarded by forwardLines into one sink (as the primary of `serve --workers` does).
import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { forwardLines } from '../../src/service/log-lines.js';

const WRITER = join(import.meta.dirname, 'long-line-writer.mjs');
const ROOT = join(import.meta.dirname, '..', '..');
// Longer than a pipe holds (64 KiB): a write of one line must wait for the reader halfway through.
const LINES = 60;
const BYTES = 100_000;

function verdict(text: string): { lines: number; broken: number; byWriter: Record<string, number> } {
  const lines = text.split('\n').filter((l) => l !== '');
  let broken = 0;
  const byWriter: Record<string, number> = {};
  for (const line of lines) {
    try {
      const entry = JSON.parse(line) as { writer: string; filler: string };
      if (entry.filler !== entry.writer.repeat(BYTES)) broken++;
      else byWriter[entry.writer] = (byWriter[entry.writer] ?? 0) + 1;
    } catch {
      broken++;
    }
  }
  return { lines: lines.length, broken, byWriter };
}

/** A reader slower than the writers (a log shipper under load): the pipes fill up. */
function slowRead(stream: NodeJS.ReadableStream, onData: (chunk: Buffer) => void): Promise<void> {
  return new Promise((resolve) => {
    stream.on('data', (chunk: Buffer) => {
      onData(chunk);
      stream.pause();
      setTimeout(() => stream.resume(), 2);
    });
    stream.on('end', resolve);
  });
}

describe('log lines from several processes', () => {
  it('interleave when two processes write long lines into one pipe (the hazard)', async () => {
    const start = Date.now() + 1500;
    const shared = spawn(
      'sh',
      ['-c', `node ${WRITER} a ${LINES} ${BYTES} ${start} & node ${WRITER} b ${LINES} ${BYTES} ${start} & wait`],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let text = '';
    await slowRead(shared.stdout, (c) => void (text += c.toString()));
    const v = verdict(text);
    expect(v.broken).toBeGreaterThan(0);
  });

  it('stay whole through forwardLines, each writer on its own pipe, with a sink that pushes back', async () => {
    const start = Date.now() + 1500;
    const writers = ['a', 'b'].map((name) =>
      spawn(process.execPath, [WRITER, name, String(LINES), String(BYTES), String(start)], {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'inherit'],
      }),
    );
    // The primary's destination: accepts every write, and now and then says "slow down" until 'drain'.
    let text = '';
    let writes = 0;
    const sink = Object.assign(new EventEmitter(), {
      write(chunk: Buffer) {
        text += chunk.toString('utf8');
        if (++writes % 7 !== 0) return true;
        setTimeout(() => sink.emit('drain'), 3);
        return false;
      },
    });
    await Promise.all(writers.map((w) => forwardLines(w.stdout, sink)));
    const v = verdict(text);
    expect(v).toEqual({ lines: 2 * LINES, broken: 0, byWriter: { a: LINES, b: LINES } });
    expect(text.endsWith('\n')).toBe(true);
  });

  it('passes a last line without a newline on, and cuts a line with no end at the bound', async () => {
    const chunks: string[] = [];
    const sink = Object.assign(new EventEmitter(), { write: (b: Buffer) => chunks.push(b.toString('utf8')) > 0 });
    const from = new PassThrough();
    const done = forwardLines(from, sink, 10);
    from.write('{"a":1}\n{"b"');
    await new Promise((r) => setImmediate(r));
    from.write(':2}\nope');
    await new Promise((r) => setImmediate(r));
    from.write('n-ended line');
    await new Promise((r) => setImmediate(r));
    from.end('tail');
    await done;
    expect(chunks).toEqual(['{"a":1}\n', '{"b":2}\n', 'open-ended line\n', 'tail\n']);
  });
});
