#!/bin/bash
# Runs on the BIG-IP (bash shell, as an administrator), from a directory holding egress-authz.conf and
# egress-authz.irule.tcl. Wraps the iRule file into an `ltm rule` object, checks the whole merge with
# `verify`, then loads it and saves the running configuration.
#
#   ./load-egress-authz.sh [RULE_NAME]      (default /Common/egress_authz, the name egress-authz.conf uses)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rule_name=${1:-/Common/egress_authz}
merged=$(mktemp /var/tmp/egress-authz.XXXXXX.conf)
trap 'rm -f "$merged"' EXIT

{
  printf 'ltm rule %s {\n' "$rule_name"
  cat "$here/egress-authz.irule.tcl"
  printf '}\n'
  cat "$here/egress-authz.conf"
} >"$merged"

tmsh load sys config merge file "$merged" verify
tmsh load sys config merge file "$merged"
tmsh save sys config
echo "loaded $rule_name and the egress-authz objects; check with:"
echo "  tmsh list ltm virtual vs_aspenmesh-bookinfo-proxy-srv-mtls-svc"
echo "  tmsh show ltm pool egress_authz_pool members"
