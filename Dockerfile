# syntax=docker/dockerfile:1
# egress-authz image: TypeScript compiled and the default policy compiled to an OPA Wasm bundle at
# build time; the runtime stage holds only Node, production dependencies and dist/, runs as non-root,
# and needs no write access to its filesystem (deploy/k8s sets readOnlyRootFilesystem).
#   docker build -t egress-authz .
#   docker run --rm -p 9191:9191 -p 8181:8181 egress-authz

# 1. Build: dev dependencies, TypeScript -> dist/
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# no lifecycle scripts: `prepare` would need Go for opa, which this stage does not have
RUN npm ci --ignore-scripts
COPY tsconfig.build.json ./
COPY src ./src
RUN npm run build

# 2. The pinned opa CLI (same version as scripts/install-opa.sh), used only to compile the policy
FROM golang:1.26-bookworm AS opa
ARG OPA_VERSION=v1.22.3
RUN CGO_ENABLED=0 GOBIN=/out go install "github.com/open-policy-agent/opa@${OPA_VERSION}"

# 3. Policy: the project's own CLI compiles policies/ into dist/policy/bundle.tar.gz
FROM build AS policy
# .tools/bin/opa is where the CLI looks for the pinned opa first
COPY --from=opa /out/opa /app/.tools/bin/opa
COPY policies ./policies
RUN node dist/cli.js build --out dist/policy/bundle.tar.gz policies

# 4. Runtime
FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production
# A bounded old generation: V8 otherwise lets garbage pile up to a limit sized for the host, not the pod
# (docs/performance.md, Memory); and a young generation of 4 MiB semi-spaces instead of 16, which
# V8 grows to under load (~25 MB of RSS) for no measured throughput. With --single-threaded-gc in
# the ENTRYPOINT (NODE_OPTIONS does not take that V8 flag): the same flags as `npm start`, the
# benchmark and the soak.
ENV NODE_OPTIONS="--max-old-space-size=128 --max-semi-space-size=4"
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY --from=policy /app/dist/policy ./dist/policy
# the project's own SPIFFE Workload API messages, read at run time by serve --spiffe-socket
COPY proto ./proto
# the `node` user of the base image (uid 1000); deploy/k8s/deployment.yaml runs as the same uid
USER node
# 9191: gRPC ext_authz (Envoy); 8181: HTTP sideband (BIG-IP), /healthz, /readyz, /metrics
EXPOSE 9191 8181
# --single-threaded-gc: the collector marks in small steps on the thread that answers, instead of in
# helper threads that, within a CPU limit of one core a worker, take that core (or its CFS quota)
# away from the answering thread for 30-50 ms at each major GC (docs/performance.md, Garbage collection).
ENTRYPOINT ["node", "--single-threaded-gc", "dist/cli.js"]
# No --workers: serve starts one worker per CPU of the container's limit, read from its cgroup CPU quota
# (`docker run --cpus 2` gives 2 workers; no limit: every CPU the host lets it use). See docs/workers.md.
CMD ["serve", "--policy", "/app/dist/policy/bundle.tar.gz"]
