// Envoy's ext_authz v3 service, loaded from the .proto files that @grpc/grpc-js-xds ships (never copied
// into this repository). Loaded once per process; the definitions are large and slow to parse.
import { accessSync, constants } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, isAbsolute, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

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

const AUTHORIZATION_PROTO = 'envoy/service/auth/v3/external_auth.proto';
let authorizationService: grpc.ServiceDefinition | undefined;

export function loadAuthorizationService(): grpc.ServiceDefinition {
  if (!authorizationService) {
    const def = protoLoader.loadSync(AUTHORIZATION_PROTO, protoLoaderOptions);
    authorizationService = def['envoy.service.auth.v3.Authorization'] as grpc.ServiceDefinition;
  }
  return authorizationService;
}

/** A client constructor for tests, tools and benchmarks. */
export function authorizationClient(): grpc.ServiceClientConstructor {
  return grpc.makeGenericClientConstructor(loadAuthorizationService(), 'Authorization');
}

/**
 * The same .proto files as protobufjs reflection, loaded as proto-loader loads them (include paths,
 * camelCase names), for the CheckRequest decoder (check-request-wire.ts) to read its field table from.
 * Not kept: the table is all the decoder needs (~0.9 MB of heap less a process).
 */
export function loadAuthorizationRoot(): protobuf.Root {
  // proto-loader registers descriptor.proto and the other common files with protobufjs when it loads
  loadAuthorizationService();
  const root = new protobuf.Root();
  const dirs = protoLoaderOptions.includeDirs ?? [];
  root.resolvePath = (origin, target) => {
    if (isAbsolute(target)) return target;
    for (const dir of dirs) {
      const path = join(dir, target);
      try {
        accessSync(path, constants.R_OK);
        return path;
      } catch {
        // not in this include directory
      }
    }
    return protobuf.util.path.resolve(origin, target);
  };
  root.loadSync(AUTHORIZATION_PROTO, { keepCase: false });
  root.resolveAll();
  return root;
}
