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

# The client-ssl, server-ssl profiles and the monitor name these objects; without them the merge fails
# halfway, so say which one is missing first.
for object in 'sys file ssl-cert /Common/org-ca.crt' 'sys file ssl-cert /Common/bigip-proxy-svc.crt' \
  'sys file ssl-key /Common/bigip-proxy-svc.key'; do
  if ! tmsh list $object >/dev/null 2>&1; then
    echo "missing $object: install it first (see deploy/bigip/README.md, step 1)" >&2
    exit 1
  fi
done

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
echo "  tmsh show ltm pool egress_authz_pool members      (up only when the https monitor's mTLS to /readyz works)"
echo "  tmsh list ltm profile server-ssl serverssl_egress_authz_sideband"
echo "egress-authz must run with --tls-cert/--tls-key, --tls-client-ca org-ca.pem and"
echo "--allowed-caller <the BIG-IP's SPIFFE ID> (egress-authz inspect bigip-proxy-svc.crt prints it)"
