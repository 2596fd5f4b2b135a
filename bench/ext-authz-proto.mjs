// Envoy's ext_authz v3 protos as shipped with @grpc/grpc-js-xds, loaded with the options the service
// uses, so that the no-op ceiling and the readiness probe pay the same (de)serialisation costs.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const require = createRequire(import.meta.url);
const depsDir = join(dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps');

export const protoFile = 'envoy/service/auth/v3/external_auth.proto';
export const includeDirs = ['envoy-api', 'googleapis', 'protoc-gen-validate', 'xds'].map((d) => join(depsDir, d));
export const checkMethod = 'envoy.service.auth.v3.Authorization/Check';

export function loadAuthorizationService() {
  const definition = protoLoader.loadSync(protoFile, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true,
    includeDirs,
  });
  const pkg = grpc.loadPackageDefinition(definition);
  return pkg.envoy.service.auth.v3.Authorization;
}
