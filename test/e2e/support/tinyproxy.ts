// tinyproxy as the organisation's forward proxy behind the network firewall: its Allow list admits only
// the SNAT addresses the firewall would let through, and it logs every connection's source address.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { start, type RunningProcess } from './processes.js';

export interface ForwardProxyOptions {
  port: number;
  /** source addresses admitted (the firewall's rule); everything else gets tinyproxy's 403 */
  allow: string[];
  logFile: string;
  pidFile: string;
}

export function writeTinyproxyConfig(path: string, o: ForwardProxyOptions): void {
  const lines = [
    `Port ${o.port}`,
    'Listen 127.0.0.1',
    'Timeout 30',
    'MaxClients 16',
    `LogFile "${o.logFile}"`,
    // Connect level logs each client's source address ("Connect (file descriptor N): 127.0.0.10").
    'LogLevel Connect',
    `PidFile "${o.pidFile}"`,
    ...o.allow.map((a) => `Allow ${a}`),
  ];
  writeFileSync(path, `${lines.join('\n')}\n`);
}

/** Writes the config into `dir` and starts tinyproxy in the foreground; its log is `logFile`. */
export function startForwardProxy(
  dir: string,
  port: number,
  allow: string[],
): { proc: RunningProcess; logFile: string } {
  const logFile = join(dir, 'tinyproxy.log');
  writeTinyproxyConfig(join(dir, 'tinyproxy.conf'), { port, allow, logFile, pidFile: join(dir, 'tinyproxy.pid') });
  return { proc: start('tinyproxy', 'tinyproxy', ['-d', '-c', join(dir, 'tinyproxy.conf')]), logFile };
}
