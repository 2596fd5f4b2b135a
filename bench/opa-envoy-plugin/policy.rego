# The default egress policy (bookinfo workloads leave through SNAT pool bookinfo_snat, everything else
# is denied), written for opa-envoy-plugin's input document so the benchmark compares equal decisions.
# Like egress-authz, it takes the workload's SPIFFE ID from the client certificate Envoy forwards
# (URL-encoded PEM in attributes.source.certificate) when there is one, checking the X.509-SVID shape
# it can see (exactly one URI SAN, leaf not a CA, inside its validity period), and from
# attributes.source.principal otherwise; when both are present they must name the same ID.
package egress.authz

trust_domain := "cluster.local"

snat_pools := {"bookinfo": "bookinfo_snat"}

default allow := {"allowed": false, "http_status": 403, "body": "egress denied"}

allow := {"allowed": true, "headers": {"x-egress-snat-pool": pool}} if {
	pool := snat_pools[namespace]
}

spiffe_id := id if {
	input.attributes.source.certificate
	leaf := crypto.x509.parse_certificates(urlquery.decode(input.attributes.source.certificate))[0]
	count(leaf.URIs) == 1
	not leaf.IsCA
	now := time.now_ns()
	time.parse_rfc3339_ns(leaf.NotBefore) <= now
	now < time.parse_rfc3339_ns(leaf.NotAfter)
	uri := leaf.URIs[0]
	uri.Scheme == "spiffe"
	id := concat("", ["spiffe://", uri.Host, uri.Path])
	principal_agrees(id)
}

# Evidence that is present must agree: Envoy's principal is the certificate's URI SAN.
principal_agrees(_) if not input.attributes.source.principal

principal_agrees(id) if input.attributes.source.principal == id

spiffe_id := input.attributes.source.principal if not input.attributes.source.certificate

# spiffe://cluster.local/ns/<namespace>/sa/<service account>, nothing more, nothing less.
namespace := parts[4] if {
	parts := split(spiffe_id, "/")
	count(parts) == 7
	parts[0] == "spiffe:"
	parts[1] == ""
	parts[2] == trust_domain
	parts[3] == "ns"
	parts[5] == "sa"
	parts[4] != ""
	parts[6] != ""
}
