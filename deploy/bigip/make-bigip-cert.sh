#!/usr/bin/env bash
# Makes the BIG-IP's own certificate for the mTLS virtual server that pods reach as a mesh service.
# An Istio client sidecar checks the server certificate's URI SAN against the service accounts the
# service runs as (secure naming), so the certificate must be an X.509-SVID from the organisation CA
# (the CA the mesh trusts): empty subject, exactly one URI SAN spiffe://<trust domain>/ns/<ns>/sa/<sa>,
# marked critical, not a CA, digitalSignature+keyEncipherment, serverAuth+clientAuth.
#
#   make-bigip-cert.sh --ca-cert ca.pem --ca-key ca-key.pem [--trust-domain cluster.local]
#                      [--namespace bookinfo] [--service-account default] [--days 365]
#                      [--out-dir .] [--name bigip-proxy-svc]
#
# Writes <name>.key (0600), <name>.csr, <name>.crt and <name>-chain.crt (leaf + CA) into --out-dir.
set -euo pipefail

trust_domain=cluster.local
namespace=bookinfo
service_account=default
days=365
out_dir=.
name=bigip-proxy-svc
ca_cert=
ca_key=

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --ca-cert) ca_cert=$2; shift 2 ;;
    --ca-key) ca_key=$2; shift 2 ;;
    --trust-domain) trust_domain=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    --service-account) service_account=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --out-dir) out_dir=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done

[ -n "$ca_cert" ] && [ -n "$ca_key" ] || { echo "--ca-cert and --ca-key are required" >&2; usage; }
[ -r "$ca_cert" ] || { echo "cannot read CA certificate $ca_cert" >&2; exit 1; }
[ -r "$ca_key" ] || { echo "cannot read CA key $ca_key" >&2; exit 1; }
# The SPIFFE ID standard: trust domain lowercase letters, digits, dots, dashes, underscores; path
# segments of letters, digits, dots, dashes, underscores, and never "." or "..".
[[ "$trust_domain" =~ ^[a-z0-9._-]+$ ]] || { echo "invalid trust domain: $trust_domain" >&2; exit 1; }
for seg in "$namespace" "$service_account"; do
  [[ "$seg" =~ ^[A-Za-z0-9._-]+$ && "$seg" != "." && "$seg" != ".." ]] || { echo "invalid path segment: $seg" >&2; exit 1; }
done
[[ "$days" =~ ^[0-9]+$ ]] || { echo "invalid --days: $days" >&2; exit 1; }
[[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "invalid --name: $name" >&2; exit 1; }

spiffe_id="spiffe://${trust_domain}/ns/${namespace}/sa/${service_account}"
mkdir -p "$out_dir"
key="$out_dir/$name.key"
csr="$out_dir/$name.csr"
crt="$out_dir/$name.crt"
chain="$out_dir/$name-chain.crt"
ext=$(mktemp)
trap 'rm -f "$ext"' EXIT

cat >"$ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = critical, URI:${spiffe_id}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

(umask 077 && openssl ecparam -name prime256v1 -genkey -noout -out "$key.tmp" && openssl pkcs8 -topk8 -nocrypt -in "$key.tmp" -out "$key")
rm -f "$key.tmp"
# The subject stays empty, as in the SVIDs Istio issues: the identity is the URI SAN alone.
openssl req -new -key "$key" -subj "/" -out "$csr" 2>/dev/null
openssl x509 -req -in "$csr" -CA "$ca_cert" -CAkey "$ca_key" -set_serial "0x$(openssl rand -hex 16 | sed 's/^./4/')" \
  -days "$days" -sha256 -extfile "$ext" -out "$crt" 2>/dev/null
cat "$crt" "$ca_cert" >"$chain"
openssl verify -CAfile "$ca_cert" "$crt" >/dev/null

cat <<EOF
BIG-IP certificate for ${spiffe_id}
  key:   $key
  cert:  $crt
  chain: $chain (leaf + organisation CA)

Next steps:
  1. Check it:   npx egress-authz inspect $crt
                 openssl x509 -in $crt -noout -ext subjectAltName,keyUsage,extendedKeyUsage
  2. Copy $key, $crt and $ca_cert to the BIG-IP (/var/tmp) and install them:
       tmsh install sys crypto key /Common/${name}.key from-local-file /var/tmp/$(basename "$key")
       tmsh install sys crypto cert /Common/${name}.crt from-local-file /var/tmp/$(basename "$crt")
       tmsh install sys crypto cert /Common/org-ca.crt from-local-file /var/tmp/$(basename "$ca_cert")
  3. Load deploy/bigip/egress-authz.conf (see deploy/bigip/README.md).
  4. Register the service in the mesh with the service account in the SAN (${service_account}), e.g.
       istioctl register -n ${namespace} ${name} 3128 -s ${service_account}
EOF
