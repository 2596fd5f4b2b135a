# The default egress policy as opa-envoy-plugin users usually write it: the workload's SPIFFE ID from
# attributes.source.principal (Envoy's verified peer URI SAN), no certificate parsing. Same decisions
# as policy.rego (bookinfo → bookinfo_snat, all else denied); run.mjs measures both ("policy":
# "principal" and "certificate" in results/latest.json).
package egress.authz

trust_domain := "cluster.local"

snat_pools := {"bookinfo": "bookinfo_snat"}

default allow := {"allowed": false, "http_status": 403, "body": "egress denied"}

allow := {"allowed": true, "headers": {"x-egress-snat-pool": pool}} if {
	pool := snat_pools[namespace]
}

# spiffe://cluster.local/ns/<namespace>/sa/<service account>, nothing more, nothing less.
namespace := parts[4] if {
	parts := split(input.attributes.source.principal, "/")
	count(parts) == 7
	parts[0] == "spiffe:"
	parts[1] == ""
	parts[2] == trust_domain
	parts[3] == "ns"
	parts[5] == "sa"
	parts[4] != ""
	parts[6] != ""
}
