// A grpc-js ext_authz Check server that allows everything without looking at the request: the
// ceiling of what a Node gRPC server does per core, against which egress-authz is measured.
// Usage: node bench/noop-server.mjs 127.0.0.1:PORT
import * as grpc from '@grpc/grpc-js';
import { loadAuthorizationService } from './ext-authz-proto.mjs';

const addr = process.argv[2] ?? '127.0.0.1:9191';
const Authorization = loadAuthorizationService();

// Same answer shape as an egress-authz allow, built once.
const allow = {
  status: { code: 0 },
  ok_response: { headers: [{ header: { key: 'x-egress-snat-pool', value: 'bookinfo_snat' } }] },
};

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
