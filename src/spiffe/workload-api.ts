// A SPIFFE Workload API client (the X.509 profile): gRPC over the agent's Unix socket, the two
// streaming calls FetchX509SVID and FetchX509Bundles. go-spiffe v2's workloadapi is the model: every
// call carries the `workload.spiffe.io: true` metadata the standard requires (servers refuse calls
// without it), a stream that ends or fails is opened again with exponential backoff (reset once a
// message arrives), and each message is parsed whole before anyone sees it.
import { dirname, isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fail, ok, type Result } from '../common/result.js';
import {
  parseX509BundlesResponse,
  parseX509SvidResponse,
  type X509BundlesResponseMessage,
  type X509BundleSet,
  type X509Context,
  type X509SvidResponseMessage,
} from './x509-context.js';

const protoFile = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'proto', 'spiffe-workload-api.proto');

/** The standard's environment variable naming the Workload Endpoint. */
export const SPIFFE_ENDPOINT_SOCKET = 'SPIFFE_ENDPOINT_SOCKET';

/**
 * The gRPC target for a Workload Endpoint address: `unix:/abs/path`, `unix:///abs/path` (the forms of
 * SPIFFE_ENDPOINT_SOCKET) or a bare absolute path (the --spiffe-socket flag). TCP endpoints are a
 * Windows affair of the standard and are refused here, as are relative paths.
 */
export function workloadApiTarget(address: string): Result<string> {
  let path = address.trim();
  if (path.startsWith('unix://')) path = path.slice('unix://'.length);
  else if (path.startsWith('unix:')) path = path.slice('unix:'.length);
  else if (/^[a-z][a-z0-9+.-]*:/i.test(path))
    return fail(`Workload API address "${address}": only unix: sockets are supported`);
  if (path === '' || !isAbsolute(path))
    return fail(`Workload API address "${address}": expected an absolute socket path or unix:///path`);
  return ok(`unix://${path}`);
}

let service: grpc.ServiceDefinition | undefined;

function workloadApiService(): grpc.ServiceDefinition {
  // bytes stay Buffers, field names become lowerCamelCase, absent fields are left absent
  service ??= protoLoader.loadSync(protoFile, { keepCase: false, defaults: false, oneofs: false })[
    'SpiffeWorkloadAPI'
  ] as grpc.ServiceDefinition;
  return service;
}

export interface Backoff {
  /** first delay after a failed or ended stream; default 500 ms */
  initialMs?: number;
  /** the delay doubles up to this; default 10 s */
  maxMs?: number;
}

export interface StreamWatcher<T> {
  onUpdate(value: T): void;
  /** a stream that failed (it is opened again) or a message that was refused (the old value stays) */
  onError(reason: string): void;
}

export class WorkloadApiClient {
  private readonly client: grpc.Client;
  private readonly stops = new Set<() => void>();

  constructor(
    readonly target: string,
    private readonly backoff: Backoff = {},
  ) {
    const Client = grpc.makeGenericClientConstructor(workloadApiService(), 'SpiffeWorkloadAPI');
    // The local agent is the only server: no keepalive pings or retries of grpc-js's own; we reopen.
    this.client = new Client(target, grpc.credentials.createInsecure(), { 'grpc.enable_retries': 0 });
  }

  /** Streams the workload's SVIDs and bundles; returns the function that stops watching. */
  watchX509Context(watcher: StreamWatcher<X509Context>): () => void {
    return this.watch<X509SvidResponseMessage, X509Context>('FetchX509SVID', (m) => parseX509SvidResponse(m), watcher);
  }

  /** Streams only the trust bundles (own and federated trust domains). */
  watchX509Bundles(watcher: StreamWatcher<X509BundleSet>): () => void {
    return this.watch<X509BundlesResponseMessage, X509BundleSet>('FetchX509Bundles', parseX509BundlesResponse, watcher);
  }

  close(): void {
    for (const stop of [...this.stops]) stop();
    this.client.close();
  }

  private watch<M, T>(method: string, parse: (m: M) => Result<T>, watcher: StreamWatcher<T>): () => void {
    const initial = this.backoff.initialMs ?? 500;
    const max = this.backoff.maxMs ?? 10_000;
    let delay = initial;
    let stopped = false;
    let call: grpc.ClientReadableStream<M> | undefined;
    let timer: NodeJS.Timeout | undefined;
    const open = () => {
      const metadata = new grpc.Metadata();
      metadata.set('workload.spiffe.io', 'true');
      const stream = (this.client as unknown as Record<string, (req: object, md: grpc.Metadata) => unknown>)[
        method
      ]!.call(this.client, {}, metadata) as grpc.ClientReadableStream<M>;
      call = stream;
      stream.on('data', (message: M) => {
        delay = initial;
        const parsed = parse(message);
        if (parsed.ok) watcher.onUpdate(parsed.value);
        else watcher.onError(parsed.reason);
      });
      // 'error' carries the same status as 'status'; without a listener it would be thrown.
      stream.on('error', () => {});
      stream.on('status', (status: grpc.StatusObject) => {
        if (stopped || call !== stream) return;
        const why = status.code === grpc.status.OK ? 'stream ended' : `${grpc.status[status.code]}: ${status.details}`;
        watcher.onError(`${method} ${why}; reconnecting in ${delay} ms`);
        timer = setTimeout(open, delay);
        timer.unref();
        delay = Math.min(delay * 2, max);
      });
    };
    const stop = () => {
      stopped = true;
      clearTimeout(timer);
      call?.cancel();
      this.stops.delete(stop);
    };
    this.stops.add(stop);
    open();
    return stop;
  }
}
