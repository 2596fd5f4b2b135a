// A real SPIRE deployment in a temporary folder: spire-server (join_token node attestor, sqlite3
// datastore) and spire-agent (unix workload attestor) on loopback and Unix sockets. Workloads are told
// apart by uid (setpriv --reuid), as the unix attestor does on a real node.
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../../e2e/support/envoy.js';
import { freePort, start, waitUntil, type RunningProcess } from '../../e2e/support/processes.js';

export const SPIRE_SERVER = join(repoRoot, '.tools/bin/spire-server');
export const SPIRE_AGENT = join(repoRoot, '.tools/bin/spire-agent');
export const TRUST_DOMAIN = 'cluster.local';
// the node alias the join token registers (SPIRE reserves /spire/ for its own IDs)
export const NODE_ID = `spiffe://${TRUST_DOMAIN}/node/loopback`;

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(command: string, args: string[], timeoutMs = 20_000): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(command, args, { timeout: timeoutMs }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** `command args…` as another uid/gid, with no supplementary groups: what the unix attestor sees. */
export function asUid(uid: number, command: string, args: string[]): [string, string[]] {
  return ['setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', command, ...args]];
}

export interface Entry {
  spiffeId: string;
  uid: number;
  /** X.509-SVID lifetime in seconds */
  ttlSeconds?: number;
  dns?: string[];
}

export interface SvidFiles {
  cert: string;
  key: string;
  bundle: string;
}

export class Spire {
  readonly serverSocket: string;
  readonly agentSocket: string;
  server!: RunningProcess;
  agent!: RunningProcess;
  private serverPort = 0;
  private joinToken = '';

  constructor(readonly dir: string) {
    this.serverSocket = join(dir, 'server', 'api.sock');
    this.agentSocket = join(dir, 'agent-socket', 'agent.sock');
  }

  async start(): Promise<void> {
    for (const bin of [SPIRE_SERVER, SPIRE_AGENT])
      if (!existsSync(bin)) throw new Error(`${bin} is missing: run bash scripts/install-spire.sh`);
    // mkdtemp made the folder 0700; the workloads (other uids) must reach the agent socket through it.
    chmodSync(this.dir, 0o755);
    for (const d of ['server', 'agent', 'agent-socket']) mkdirSync(join(this.dir, d), { recursive: true });
    chmodSync(join(this.dir, 'agent-socket'), 0o755);
    this.serverPort = await freePort();
    writeFileSync(
      join(this.dir, 'server.conf'),
      `server {
  bind_address = "127.0.0.1"
  bind_port = "${this.serverPort}"
  socket_path = "${this.serverSocket}"
  trust_domain = "${TRUST_DOMAIN}"
  data_dir = "${join(this.dir, 'server')}"
  log_level = "WARN"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "${join(this.dir, 'server', 'datastore.sqlite3')}"
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
}
`,
    );
    this.server = start('spire-server', SPIRE_SERVER, ['run', '-config', join(this.dir, 'server.conf')]);
    await waitUntil(
      this.server,
      'healthy',
      async () => (await run(SPIRE_SERVER, ['healthcheck', '-socketPath', this.serverSocket])).code === 0,
      60_000,
    );
    const token = await this.serverCli(['token', 'generate', '-spiffeID', NODE_ID, '-ttl', '3600']);
    this.joinToken = /Token: (\S+)/.exec(token)?.[1] ?? '';
    if (!this.joinToken) throw new Error(`no join token in: ${token}`);
    writeFileSync(
      join(this.dir, 'agent.conf'),
      `agent {
  data_dir = "${join(this.dir, 'agent')}"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "${this.serverPort}"
  socket_path = "${this.agentSocket}"
  trust_domain = "${TRUST_DOMAIN}"
  # the test has no out-of-band copy of the server's CA; production ships trust_bundle_path instead
  insecure_bootstrap = true
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  # on disk, so that a restarted agent keeps its own SVID (the join token is single-use)
  KeyManager "disk" {
    plugin_data {
      directory = "${join(this.dir, 'agent')}"
    }
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`,
    );
    await this.startAgent();
  }

  async startAgent(): Promise<void> {
    const args = ['run', '-config', join(this.dir, 'agent.conf')];
    // the first start attests with the token; later ones with the SVID the agent stored
    if (!existsSync(join(this.dir, 'agent', 'agent_svid.der'))) args.push('-joinToken', this.joinToken);
    this.agent = start('spire-agent', SPIRE_AGENT, args);
    await waitUntil(
      this.agent,
      'healthy',
      async () => (await run(SPIRE_AGENT, ['healthcheck', '-socketPath', this.agentSocket])).code === 0,
      60_000,
    );
  }

  async restartAgent(downMs = 0): Promise<void> {
    await this.agent.stop();
    if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
    await this.startAgent();
  }

  async serverCli(args: string[]): Promise<string> {
    const [command, ...rest] = args;
    const r = await run(SPIRE_SERVER, [
      command!,
      ...rest.slice(0, 1),
      '-socketPath',
      this.serverSocket,
      ...rest.slice(1),
    ]);
    if (r.code !== 0) throw new Error(`spire-server ${args.join(' ')}: exit ${r.code}\n${r.stdout}${r.stderr}`);
    return r.stdout;
  }

  async createEntry(e: Entry): Promise<void> {
    const args = ['entry', 'create', '-parentID', NODE_ID, '-spiffeID', e.spiffeId, '-selector', `unix:uid:${e.uid}`];
    if (e.ttlSeconds !== undefined) args.push('-x509SVIDTTL', String(e.ttlSeconds));
    for (const dns of e.dns ?? []) args.push('-dns', dns);
    await this.serverCli(args);
  }

  /**
   * `spire-agent api fetch x509` as the workload's uid, written into a folder that uid owns. Retries
   * while the agent has not synced the entry yet (every 5 s by default).
   */
  async fetchX509(uid: number, name: string, timeoutMs = 30_000): Promise<SvidFiles> {
    const out = join(this.dir, 'svids', name);
    mkdirSync(out, { recursive: true });
    chmodSync(join(this.dir, 'svids'), 0o755);
    chownSync(out, uid, uid);
    const deadline = Date.now() + timeoutMs;
    let last: CommandResult | undefined;
    while (Date.now() < deadline) {
      const [cmd, args] = asUid(uid, SPIRE_AGENT, [
        'api',
        'fetch',
        'x509',
        '-socketPath',
        this.agentSocket,
        '-write',
        out,
        '-timeout',
        '5s',
      ]);
      last = await run(cmd, args);
      if (last.code === 0 && existsSync(join(out, 'svid.0.pem')))
        return { cert: join(out, 'svid.0.pem'), key: join(out, 'svid.0.key'), bundle: join(out, 'bundle.0.pem') };
      await new Promise((r) => setTimeout(r, 500));
    }
    throw new Error(`no SVID for uid ${uid}: exit ${last?.code}\n${last?.stdout}${last?.stderr}`);
  }

  async stop(): Promise<void> {
    await this.agent?.stop();
    await this.server?.stop();
  }
}

export function readPem(path: string): string {
  return readFileSync(path, 'utf8');
}
