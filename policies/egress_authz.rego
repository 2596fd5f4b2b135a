# Default egress policy: which workloads may leave the mesh, through which SNAT pool, and (optionally)
# to which destinations. Tenants, pools and destination lists are data (data.egress, see data.json);
# adding a tenant is a data change, never a code change.
#
# Input (see DESIGN.md): input.identity (a verified identity: the service denies a request without one
# before it asks the policy), input.destination {host, port?}, input.caller. Asked without an identity
# anyway (opa eval), the default decision denies.
# Result: {allow, snat_pool, reason}; snat_pool is "" on a deny.
package egress.authz

# Fail closed: for any input at all the decision is defined, so the engine never sees "undefined".
default decision := {"allow": false, "snat_pool": "", "reason": "no egress rule matched"}

decision := {"allow": true, "snat_pool": tenant.snat_pool, "reason": allow_reason} if {
	not denial
	is_string(tenant.snat_pool)
	tenant.snat_pool != ""
}

decision := {"allow": false, "snat_pool": "", "reason": denial}

identity := input.identity if is_object(input.identity)

namespace := identity.namespace if is_string(identity.namespace)

# Tenants belong to a trust domain: the home one's are data.egress.tenants, a federated domain's are
# data.egress.federation[<trust domain>].tenants. A namespace is looked up in its own domain only, so
# spiffe://partner.example/ns/bookinfo/... is never the cluster.local bookinfo tenant.
# (data.egress also holds this package, so it is read field by field, never as a whole.)
domain_tenants := home_tenants if {
	identity.trust_domain == data.egress.trust_domain
} else := data.egress.federation[identity.trust_domain].tenants if {
	is_object(data.egress.federation[identity.trust_domain].tenants)
}

home_tenants := data.egress.tenants if is_object(data.egress.tenants) else := {}

# Exact key lookup: "bookinfo-evil" or "bookinfo.x" never match the "bookinfo" tenant.
tenant := domain_tenants[namespace] if is_object(domain_tenants[namespace])

# The first check that fails names the reason; `else` keeps the order deterministic and the value single.
denial := sprintf("trust domain %v is not allowed", [object.get(identity, "trust_domain", "(none)")]) if {
	not domain_tenants
} else := sprintf("%v is not a namespaced workload identity", [identity.spiffe_id]) if {
	not namespace
} else := sprintf("namespace %v has no egress tenant", [namespace]) if {
	not tenant
} else := sprintf("tenant %v has no SNAT pool configured", [namespace]) if {
	not valid_pool(tenant.snat_pool)
} else := sprintf("namespace %v may not reach %v", [namespace, destination_label]) if {
	not destination_allowed
}

valid_pool(pool) if {
	is_string(pool)
	pool != ""
}

# concat and format_int run inside the Wasm module; sprintf would call out to JavaScript on every allow.
allow_reason := concat("", ["namespace ", namespace, " may egress via ", tenant.snat_pool]) if {
	not tenant.destinations
} else := concat("", ["namespace ", namespace, " may reach ", destination_label, " via ", tenant.snat_pool])

# A tenant without a destination list may reach anything (the seed's forward proxy does the rest);
# a tenant with one may reach only the hosts ("host") or endpoints ("host:port") it lists.
destination_allowed if not tenant.destinations

destination_allowed if {
	some entry in tenant.destinations
	lower(entry) in destination_forms
}

destination_host := lower(input.destination.host) if {
	is_string(input.destination.host)
	input.destination.host != ""
}

destination_forms contains destination_host

destination_forms contains destination_endpoint

# host:port as written in destination lists; IPv6 literals in brackets, as in a URL authority.
destination_endpoint := concat("", ["[", destination_host, "]:", destination_port]) if {
	contains(destination_host, ":")
} else := concat("", [destination_host, ":", destination_port])

destination_port := format_int(input.destination.port, 10) if {
	is_number(input.destination.port)
	input.destination.port == floor(input.destination.port)
}

destination_label := destination_endpoint if {
	destination_endpoint
} else := destination_host if {
	destination_host
} else := "an unknown destination"
