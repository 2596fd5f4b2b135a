#!/usr/bin/env bash
# Installs the pinned benchmark tools into .tools/bin (git-ignored), each only when missing or at
# another version: loadgen (the project's gRPC load generator, bench/loadgen, its dependencies pinned
# by its go.mod and go.sum), ghz (the earlier gRPC load generator) and opa-envoy-plugin (the peer we
# measure against), built from the Go module proxy; Envoy through scripts/install-envoy.sh when the
# repository has it.
# h2load comes from Debian's nghttp2-client (scripts/install-system-packages.sh).
set -euo pipefail
GHZ_VERSION="${GHZ_VERSION:-v0.120.0}"
OPA_ENVOY_VERSION="${OPA_ENVOY_VERSION:-v1.10.0-envoy}"
# The checksum database does not answer for opa-envoy-plugin here, so its module hash is pinned here
# instead (the value `go mod download -json` reports); its dependencies are checked against its own go.sum.
OPA_ENVOY_SUM="${OPA_ENVOY_SUM:-h1:N+Le+sDTrGfqoBNVrSk2CoZNWWxQT9pxA94Lnq3Pn0A=}"
OPA_ENVOY_MODULE=github.com/open-policy-agent/opa-envoy-plugin

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.tools/bin"
mkdir -p "$bin"

# The module version a Go binary was built from, as recorded in its build info.
built_version() { [ -x "$1" ] && go version -m "$1" 2>/dev/null | awk -v m="$2" '$1 == "mod" && $2 == m { print $3 }'; }

command -v go >/dev/null || { echo "install-bench-tools: Go is required to build loadgen, ghz and opa-envoy-plugin" >&2; exit 1; }

# loadgen is rebuilt whenever its sources change: the stamp is a hash of them.
loadgen_sum="$(cd "$root/bench/loadgen" && cat go.mod go.sum ./*.go | sha256sum | cut -d' ' -f1)"
if [ ! -x "$bin/loadgen" ] || [ "$(cat "$bin/.loadgen.sha256" 2>/dev/null)" != "$loadgen_sum" ]; then
  echo "install-bench-tools: building bench/loadgen into $bin" >&2
  (cd "$root/bench/loadgen" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" go build -o "$bin/loadgen" .)
  printf '%s\n' "$loadgen_sum" >"$bin/.loadgen.sha256"
fi

if [ "$(built_version "$bin/ghz" github.com/bojand/ghz)" != "$GHZ_VERSION" ]; then
  echo "install-bench-tools: building ghz $GHZ_VERSION into $bin" >&2
  GOBIN="$bin" CGO_ENABLED=0 go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
fi

# `go install …/cmd/opa-envoy-plugin@VERSION` cannot be used: the proxy refuses the lookup of the
# sub-path as a module of its own, and that refusal stops Go's module path search. So the module is
# downloaded by its own path, copied out of the read-only module cache and built there (its vendor/
# holds only modules.txt, so it is built in module mode against its own go.mod and go.sum).
# opa-envoy-plugin is a main module here, so its build info records "(devel)": the version it was
# built from is kept in a stamp file beside the binary.
stamp="$bin/.opa-envoy-plugin.version"
if [ ! -x "$bin/opa-envoy-plugin" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$OPA_ENVOY_VERSION" ]; then
  echo "install-bench-tools: building opa-envoy-plugin $OPA_ENVOY_VERSION into $bin" >&2
  info="$(cd "$root" && GOFLAGS= GONOSUMDB="$OPA_ENVOY_MODULE" go mod download -json "$OPA_ENVOY_MODULE@$OPA_ENVOY_VERSION")"
  dir="$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  sum="$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p')"
  [ "$sum" = "$OPA_ENVOY_SUM" ] || { echo "install-bench-tools: $OPA_ENVOY_MODULE@$OPA_ENVOY_VERSION has hash '$sum', expected $OPA_ENVOY_SUM" >&2; exit 1; }
  src="$root/.tools/src/opa-envoy-plugin"
  rm -rf "$src"
  mkdir -p "$(dirname "$src")"
  cp -r "$dir" "$src"
  chmod -R u+w "$src"
  rm -rf "$src/vendor"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" go build -o "$bin/opa-envoy-plugin" ./cmd/opa-envoy-plugin)
  printf '%s\n' "$OPA_ENVOY_VERSION" >"$stamp"
fi

if [ -f "$root/scripts/install-envoy.sh" ]; then
  bash "$root/scripts/install-envoy.sh"
else
  echo "install-bench-tools: scripts/install-envoy.sh is not in this tree; the envoy path will be skipped" >&2
fi

command -v h2load >/dev/null || echo "install-bench-tools: h2load missing (Debian nghttp2-client); the envoy path will be skipped" >&2
command -v taskset >/dev/null || { echo "install-bench-tools: taskset (util-linux) is required" >&2; exit 1; }
command -v openssl >/dev/null || { echo "install-bench-tools: openssl is required" >&2; exit 1; }
