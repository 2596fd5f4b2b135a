#!/usr/bin/env bash
# Installs the pinned SPIRE server and agent into .tools/bin (git-ignored), only when missing.
# github.com/spiffe/spire lists no versions on the module proxy, so `go install …@v1.13.3` is refused;
# a module of its own that records both commands as tools (`go get -tool`) pins the version instead.
# First build: ~5 min on 2 idle cores (much longer on a shared machine), binaries ~230 MB + ~87 MB.
# cgo stays on: the sqlite3 datastore needs it. .tools may be shared between worktrees: a lock keeps
# two builds from sharing the module folder, and the second one finds the binaries already there.
set -euo pipefail
SPIRE_VERSION="${SPIRE_VERSION:-v1.13.3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.tools/bin"
mod="$root/.tools/spire-module"
version_of() { "$bin/$1" --version 2>&1 | head -n1 | tr -d '[:space:]'; }
# Built from the module proxy (no VCS stamp), SPIRE reports "1.13.3-dev-unk": the release, then a suffix.
right_version() {
  case "$(version_of "$1")" in "${SPIRE_VERSION#v}" | "${SPIRE_VERSION#v}"-*) return 0 ;; *) return 1 ;; esac
}
installed() {
  [ -x "$bin/spire-server" ] && [ -x "$bin/spire-agent" ] && right_version spire-server && right_version spire-agent
}
installed && exit 0
command -v go >/dev/null || { echo "install-spire: Go is required to build SPIRE $SPIRE_VERSION" >&2; exit 1; }
mkdir -p "$bin"
exec 9>"$root/.tools/spire-install.lock"
flock 9
installed && exit 0
echo "install-spire: building spire-server and spire-agent $SPIRE_VERSION into $bin (first time only, minutes)" >&2
rm -rf "$mod" && mkdir -p "$mod"
cd "$mod"
go mod init egress-authz.local/spire-tools >/dev/null 2>&1
go get -tool "github.com/spiffe/spire/cmd/spire-server@$SPIRE_VERSION" "github.com/spiffe/spire/cmd/spire-agent@$SPIRE_VERSION"
GOBIN="$bin" go install github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
echo "install-spire: spire-server $(version_of spire-server), spire-agent $(version_of spire-agent) installed" >&2
