import { describe, expect, it } from 'vitest';
import { optionsUsage, parseDuration, parseServeConfig, SERVE_OPTIONS } from '../../src/service/config.js';

function config(...argv: string[]) {
  const r = parseServeConfig(argv);
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

function reason(...argv: string[]): string {
  const r = parseServeConfig(argv);
  expect(r.ok).toBe(false);
  return r.ok ? '' : r.reason;
}

describe('serve configuration', () => {
  it('takes its defaults from the one table', () => {
    const c = config();
    expect(c).toMatchObject({
      grpcAddr: '0.0.0.0:9191',
      httpAddr: '0.0.0.0:8181',
      entrypoint: 'egress/authz/decision',
      memoize: true,
      logLevel: 'info',
      allowedCallers: [],
      graceMs: 10_000,
      checkDeadlineMs: 200,
      maxReceiveMessageBytes: 1_048_576,
      checkTransport: 'stream',
      svidCacheEntries: 100_000,
      chainCacheEntries: 100_000,
    });
    expect(c.policy).toBeUndefined();
    expect(c.tls).toBeUndefined();
  });

  it('reads every value it is given', () => {
    const c = config(
      '--grpc-addr=127.0.0.1:1',
      '--policy-poll-interval=2s',
      '--policy-memo=off',
      '--tls-cert=c',
      '--tls-key=k',
      '--tls-client-ca=ca',
      '--allowed-caller=spiffe://cluster.local/ns/egress/*',
      '--allowed-caller=spiffe://cluster.local/ns/a/sa/b',
      '--check-deadline=1m',
      '--svid-cache-entries=0',
      '--chain-cache-entries=5000',
      '--check-transport=grpc-js',
    );
    expect(c.checkTransport).toBe('grpc-js');
    expect(c.svidCacheEntries).toBe(0);
    expect(c.chainCacheEntries).toBe(5000);
    expect(c.grpcAddr).toBe('127.0.0.1:1');
    expect(c.pollMs).toBe(2000);
    expect(c.memoize).toBe(false);
    expect(c.tls).toEqual({ certFile: 'c', keyFile: 'k', clientCaFile: 'ca' });
    expect(c.allowedCallers).toHaveLength(2);
    expect(c.checkDeadlineMs).toBe(60_000);
  });

  it.each([
    [['--policy-memo=maybe'], /--policy-memo takes on or off/],
    [['--check-transport=http3'], /--check-transport takes stream or grpc-js/],
    [['--grpc-max-message-bytes=12'], /at least 1024/],
    [['--shutdown-grace=soon'], /--shutdown-grace "soon": expected a duration/],
    [['--policy-poll-interval=5ms'], /at least 100ms/],
    [['--tls-cert=c'], /go together/],
    [['--tls-client-ca=ca'], /needs --tls-cert/],
    [['--allowed-caller=spiffe://cluster.local/ns/a'], /needs mTLS/],
    [['--tls-cert=c', '--tls-key=k', '--allowed-caller=spiffe://cluster.local/ns/a'], /needs --tls-client-ca/],
    [['--tls-cert=c', '--tls-key=k', '--tls-client-ca=ca', '--allowed-caller=http://x'], /--allowed-caller: /],
    [['--no-such-flag=1'], /Unknown option/],
    [['--svid-cache-entries=-1'], /--svid-cache-entries must be an integer from 0/],
    [['--svid-cache-entries=lots'], /--svid-cache-entries must be an integer from 0/],
    [['--chain-cache-entries=1.5'], /--chain-cache-entries must be an integer from 0/],
  ])('refuses %j with a reason', (argv, why) => {
    expect(reason(...argv)).toMatch(why);
  });

  it('lists every option, its argument and its default in the usage text', () => {
    const text = optionsUsage(SERVE_OPTIONS);
    for (const [name, row] of Object.entries(SERVE_OPTIONS)) {
      const line = text.split('\n').find((l) => l.trim().startsWith(`--${name} `));
      expect(line, name).toBeDefined();
      if ('default' in row) expect(line).toContain(`(default: ${row.default})`);
    }
  });

  it('reads durations as ms, s and m', () => {
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('2m')).toBe(120_000);
    expect(parseDuration('7')).toBe(7);
    expect(parseDuration('-1s')).toBeUndefined();
  });
});
