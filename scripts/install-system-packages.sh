#!/usr/bin/env bash
# Installs the Debian packages the test suites drive for real (forward proxy, Tcl for the iRule harness,
# TLS tooling, HTTP/2 load, nginx as an authenticated bundle server), only those that are missing.
# Needs root (CI and the dev machines run as root).
set -euo pipefail
pkgs=(tinyproxy tcl curl openssl nghttp2-client nginx)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install-system-packages: missing ${missing[*]}; run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "install-system-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
