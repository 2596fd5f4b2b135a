// Envoy's ext_authz v3 service, loaded from the .proto files that @grpc/grpc-js-xds ships (never copied
// into this repository). Loaded once per process; the definitions are large and slow to parse.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const require = createRequire(import.meta.url);

function envoyProtoIncludeDirs(): string[] {
  const xdsRoot = dirname(require.resolve('@grpc/grpc-js-xds/package.json'));
  return ['envoy-api', 'googleapis', 'protoc-gen-validate', 'xds'].map((d) => join(xdsRoot, 'deps', d));
}

// lowerCamelCase field names match protojson, which is what opa-envoy-plugin's input document uses;
// longs and enums as strings match protojson too. No oneof marker fields: they are not in protojson.
const protoLoaderOptions: protoLoader.Options = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: false,
  includeDirs: envoyProtoIncludeDirs(),
};

let authorizationService: grpc.ServiceDefinition | undefined;

export function loadAuthorizationService(): grpc.ServiceDefinition {
  if (!authorizationService) {
    const def = protoLoader.loadSync('envoy/service/auth/v3/external_auth.proto', protoLoaderOptions);
    authorizationService = def['envoy.service.auth.v3.Authorization'] as grpc.ServiceDefinition;
  }
  return authorizationService;
}

/** A client constructor for tests, tools and benchmarks. */
export function authorizationClient(): grpc.ServiceClientConstructor {
  return grpc.makeGenericClientConstructor(loadAuthorizationService(), 'Authorization');
}
