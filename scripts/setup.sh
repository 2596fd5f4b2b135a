#!/usr/bin/env bash
# Everything `npm test` drives for real, installed only when missing (idempotent, pinned):
# Debian packages (tinyproxy, tcl, curl, openssl, nghttp2-client, nginx), the opa CLI, Envoy.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/install-system-packages.sh"
bash "$here/install-opa.sh"
if [ -f "$here/install-envoy.sh" ]; then bash "$here/install-envoy.sh"; fi
