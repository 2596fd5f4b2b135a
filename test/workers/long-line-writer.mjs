// A worker's log as far as stdout sees it: pino's asynchronous destination on fd 1, many long JSON lines.
// argv: name, count, bytes per line, start (epoch ms: writers started together overlap)
import pino from 'pino';

const [name = 'w', count = '200', bytes = '20000', start = '0'] = process.argv.slice(2);
const destination = pino.destination({ sync: false });
const log = pino({ base: { writer: name } }, destination);
const filler = name.repeat(Number(bytes));
setTimeout(
  () => {
    for (let i = 0; i < Number(count); i++) log.info({ seq: i, filler }, 'long line');
    destination.flushSync();
  },
  Math.max(0, Number(start) - Date.now()),
);
