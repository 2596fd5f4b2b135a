#!/usr/bin/env bash
# Installs the pinned opa CLI into .tools/bin (git-ignored) from the Go module proxy, only when missing.
set -euo pipefail
OPA_VERSION="${OPA_VERSION:-v1.22.3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.tools/bin"
installed_version() { "$bin/opa" version 2>/dev/null | sed -n 's/^Version: //p'; }
if [ -x "$bin/opa" ] && [ "$(installed_version)" = "${OPA_VERSION#v}" ]; then
  exit 0
fi
command -v go >/dev/null || { echo "install-opa: Go is required (go install github.com/open-policy-agent/opa@$OPA_VERSION)" >&2; exit 1; }
mkdir -p "$bin"
echo "install-opa: building opa $OPA_VERSION into $bin (first time only, takes a few minutes)" >&2
GOBIN="$bin" CGO_ENABLED=0 go install "github.com/open-policy-agent/opa@$OPA_VERSION"
echo "install-opa: opa $(installed_version) installed" >&2
