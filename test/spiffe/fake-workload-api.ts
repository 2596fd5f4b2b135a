// A stand-in Workload Endpoint for unit tests of the client: it serves the project's proto on a Unix
// socket and lets a test push exactly the messages it wants (rotations, damaged updates) and stop and
// restart the server. The real SPIRE agent is exercised in test/spire/.
import { createPrivateKey } from 'node:crypto';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { IssuedCert } from '../support/pki.js';

const PROTO = join(import.meta.dirname, '..', '..', 'proto', 'spiffe-workload-api.proto');

export interface SvidMessage {
  spiffeId: string;
  x509Svid: Buffer;
  x509SvidKey: Buffer;
  bundle: Buffer;
  hint?: string;
}

export function svidMessage(spiffeId: string, cert: IssuedCert, bundle: IssuedCert[], chainTail: IssuedCert[] = []) {
  return {
    spiffeId,
    x509Svid: Buffer.concat([cert.der, ...chainTail.map((c) => c.der)]),
    x509SvidKey: createPrivateKey(cert.keyPem).export({ format: 'der', type: 'pkcs8' }) as Buffer,
    bundle: Buffer.concat(bundle.map((c) => c.der)),
  } satisfies SvidMessage;
}

export class FakeWorkloadApi {
  private server: grpc.Server | undefined;
  private svidStreams = new Set<grpc.ServerWritableStream<unknown, unknown>>();
  private bundleStreams = new Set<grpc.ServerWritableStream<unknown, unknown>>();
  /** sent to every new FetchX509SVID stream, and pushed to open ones by `pushSvids` */
  svidResponse: Record<string, unknown> | undefined;
  bundlesResponse: Record<string, unknown> | undefined;
  /** how many calls came without the workload.spiffe.io metadata (and were refused) */
  refusedCalls = 0;
  calls = 0;

  constructor(readonly socketPath: string) {}

  async start(): Promise<void> {
    const def = protoLoader.loadSync(PROTO, { keepCase: false, defaults: false })['SpiffeWorkloadAPI'];
    const server = new grpc.Server();
    const handler = (streams: Set<grpc.ServerWritableStream<unknown, unknown>>, initial: () => unknown) => {
      return (call: grpc.ServerWritableStream<unknown, unknown>) => {
        this.calls++;
        if (call.metadata.get('workload.spiffe.io')[0] !== 'true') {
          this.refusedCalls++;
          call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: 'security header missing from request' });
          return;
        }
        streams.add(call);
        call.on('cancelled', () => streams.delete(call));
        const first = initial();
        if (first !== undefined) call.write(first);
      };
    };
    server.addService(def as grpc.ServiceDefinition, {
      FetchX509SVID: handler(this.svidStreams, () => this.svidResponse),
      FetchX509Bundles: handler(this.bundleStreams, () => this.bundlesResponse),
    });
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
    this.server = server;
  }

  pushSvids(response: Record<string, unknown>): void {
    this.svidResponse = response;
    for (const s of this.svidStreams) s.write(response);
  }

  /** writes a message to open streams only (a damaged update), without making it the new initial one */
  pushRaw(response: Record<string, unknown>): void {
    for (const s of this.svidStreams) s.write(response);
  }

  pushBundles(response: Record<string, unknown>): void {
    this.bundlesResponse = response;
    for (const s of this.bundleStreams) s.write(response);
  }

  get openStreams(): number {
    return this.svidStreams.size + this.bundleStreams.size;
  }

  /** the agent goes away: open streams fail, the socket disappears */
  stop(): void {
    this.server?.forceShutdown();
    this.server = undefined;
    this.svidStreams.clear();
    this.bundleStreams.clear();
  }
}
