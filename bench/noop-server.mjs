// An ext_authz Check server that allows everything without looking at the request: the ceiling of
// what a Node gRPC server does per core, against which egress-authz is measured (grpc-js by default).
// Usage: node bench/noop-server.mjs 127.0.0.1:PORT [--contract] [--http2]
// --contract: answer with every field egress-authz's allow carries (DESIGN.md: the SNAT pool and decision
// id headers with append false, five dynamic metadata fields), still built once: the floor of any server
// that speaks the contract, so Envoy's own work on the larger answer is not counted as the service's.
// --http2: no grpc-js at all: node:http2 answers every stream with the encoded allow, framed once, and
// grpc-status 0. egress-authz answers Checks on their HTTP/2 streams too (src/transport/check-stream.ts),
// so the grpc-js no-op is no longer its ceiling; this one is (it reads no request and checks nothing).
import * as http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { loadAuthorizationService } from './ext-authz-proto.mjs';

const addr = process.argv[2] ?? '127.0.0.1:9191';
const Authorization = loadAuthorizationService();

const header = (key, value) => ({ header: { key, value }, append: { value: false } });
const contractAllow = {
  status: { code: 0, message: '' },
  ok_response: {
    headers: [
      header('x-egress-snat-pool', 'bookinfo_snat'),
      header('x-egress-decision-id', '6f1c2d4e-9a7b-4c3d-8e2f-0a1b2c3d4e5f'),
    ],
  },
  dynamic_metadata: {
    fields: {
      decision_id: { string_value: '6f1c2d4e-9a7b-4c3d-8e2f-0a1b2c3d4e5f' },
      spiffe_id: { string_value: 'spiffe://cluster.local/ns/bookinfo/sa/productpage' },
      snat_pool: { string_value: 'bookinfo_snat' },
      allow: { bool_value: true },
      policy_revision: { string_value: 'sha256:0000000000000000' },
    },
  },
};
// Built once; by default the smallest allow that still names the SNAT pool.
const allow = process.argv.includes('--contract')
  ? contractAllow
  : {
      status: { code: 0 },
      ok_response: { headers: [{ header: { key: 'x-egress-snat-pool', value: 'bookinfo_snat' } }] },
    };

if (process.argv.includes('--http2')) serveHttp2();
else serveGrpcJs();

function serveHttp2() {
  const message = Authorization.service.Check.responseSerialize(allow);
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  message.copy(frame, 5);
  const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
  const server = http2.createServer();
  server.on('stream', (stream) => {
    stream.on('error', () => {});
    stream.resume();
    stream.on('end', () => {
      if (stream.destroyed) return;
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(frame);
    });
  });
  server.on('error', (err) => {
    console.error(`noop-server: cannot listen on ${addr}: ${err.message}`);
    process.exit(1);
  });
  server.listen(port, host, () => console.error(`noop-server (node:http2): listening on ${addr}`));
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
}

function serveGrpcJs() {
  const server = new grpc.Server();
  server.addService(Authorization.service, {
    Check(_call, callback) {
      callback(null, allow);
    },
  });
  server.bindAsync(addr, grpc.ServerCredentials.createInsecure(), (err) => {
    if (err) {
      console.error(`noop-server: cannot listen on ${addr}: ${err.message}`);
      process.exit(1);
    }
    console.error(`noop-server: listening on ${addr}`);
  });
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => server.tryShutdown(() => process.exit(0)));
  }
}
