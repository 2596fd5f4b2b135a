package egress.authz_test

import data.egress.authz

istio_identity(td, ns, sa) := {
	"spiffe_id": sprintf("spiffe://%s/ns/%s/sa/%s", [td, ns, sa]),
	"trust_domain": td,
	"path": sprintf("/ns/%s/sa/%s", [ns, sa]),
	"namespace": ns,
	"service_account": sa,
	"source": "certificate",
}

bookinfo := istio_identity("cluster.local", "bookinfo", "productpage")

billing_tenants := {
	"bookinfo": {"snat_pool": "bookinfo_snat"},
	"billing-batch": {
		"snat_pool": "billing_snat",
		"destinations": ["billing.legacy.example.com:443", "ledger.legacy.example.com", "[fd00::10]:8443"],
	},
}

test_bookinfo_allowed_with_its_pool if {
	d := authz.decision with input as {"caller": "envoy", "identity": bookinfo, "destination": {"host": "httpbin.org", "port": 443}}
	d.allow == true
	d.snat_pool == "bookinfo_snat"
}

test_bookinfo_allowed_without_destination if {
	d := authz.decision with input as {"caller": "sideband", "identity": bookinfo, "destination": {"host": ""}}
	d.allow == true
	d.snat_pool == "bookinfo_snat"
}

test_other_namespace_denied if {
	d := authz.decision with input as {"identity": istio_identity("cluster.local", "sm-apigw-a", "default")}
	d.allow == false
	d.snat_pool == ""
	d.reason == "namespace sm-apigw-a has no egress tenant"
}

test_namespace_prefix_lookalike_denied if {
	d := authz.decision with input as {"identity": istio_identity("cluster.local", "bookinfo-evil", "default")}
	d.allow == false
	d.reason == "namespace bookinfo-evil has no egress tenant"
}

test_namespace_case_lookalike_denied if {
	d := authz.decision with input as {"identity": istio_identity("cluster.local", "Bookinfo", "default")}
	d.allow == false
}

test_other_trust_domain_denied if {
	d := authz.decision with input as {"identity": istio_identity("evil.local", "bookinfo", "x")}
	d.allow == false
	d.reason == "trust domain evil.local is not allowed"
}

test_trust_domain_suffix_lookalike_denied if {
	d := authz.decision with input as {"identity": istio_identity("cluster.local.evil.example", "bookinfo", "x")}
	d.allow == false
}

test_non_istio_path_denied if {
	d := authz.decision with input as {"identity": {"spiffe_id": "spiffe://cluster.local/batch/job", "trust_domain": "cluster.local", "path": "/batch/job"}}
	d.allow == false
	d.reason == "spiffe://cluster.local/batch/job is not a namespaced workload identity"
}

# The service never asks without an identity (decision.ts denies first, with the identity step's
# error); asked anyway, the policy still denies, by its default.
test_failed_identity_denied if {
	d := authz.decision with input as {"identity": null, "identity_error": "certificate has expired"}
	d.allow == false
	d.snat_pool == ""
	d.reason == "no egress rule matched"
}

test_missing_identity_denied if {
	d := authz.decision with input as {}
	d.allow == false
	d.reason == "no egress rule matched"
}

test_non_object_input_denied if {
	d := authz.decision with input as "bookinfo"
	d.allow == false
}

test_tenant_without_pool_denied if {
	d := authz.decision with input as {"identity": bookinfo} with data.egress.tenants.bookinfo as {"snat_pool": ""}
	d.allow == false
	d.reason == "tenant bookinfo has no SNAT pool configured"
}

test_unknown_trust_domain_config_denies_everything if {
	d := authz.decision with input as {"identity": bookinfo} with data.egress.trust_domain as null
	d.allow == false
}

billing(destination) := d if {
	d := authz.decision with input as {
		"identity": istio_identity("cluster.local", "billing-batch", "runner"),
		"destination": destination,
	}
		with data.egress.tenants as billing_tenants
}

test_listed_endpoint_allowed if {
	d := billing({"host": "billing.legacy.example.com", "port": 443})
	d.allow == true
	d.snat_pool == "billing_snat"
	d.reason == "namespace billing-batch may reach billing.legacy.example.com:443 via billing_snat"
}

test_listed_host_allows_any_port if {
	d := billing({"host": "ledger.legacy.example.com", "port": 8443})
	d.allow == true
}

test_listed_endpoint_other_port_denied if {
	d := billing({"host": "billing.legacy.example.com", "port": 80})
	d.allow == false
	d.reason == "namespace billing-batch may not reach billing.legacy.example.com:80"
}

test_unlisted_destination_denied if {
	d := billing({"host": "exfil.example.net", "port": 443})
	d.allow == false
	d.snat_pool == ""
}

test_unknown_destination_denied_when_list_exists if {
	d := billing({"host": ""})
	d.allow == false
	d.reason == "namespace billing-batch may not reach an unknown destination"
}

test_destination_host_suffix_lookalike_denied if {
	d := billing({"host": "billing.legacy.example.com.evil.net", "port": 443})
	d.allow == false
}

test_empty_destination_list_denies_all if {
	d := authz.decision with input as {"identity": bookinfo, "destination": {"host": "x", "port": 1}}
		with data.egress.tenants.bookinfo as {"snat_pool": "bookinfo_snat", "destinations": []}
	d.allow == false
}

test_ipv6_endpoint_listed_with_brackets if {
	listed := billing({"host": "fd00::10", "port": 8443})
	listed.allow == true
	other_port := billing({"host": "fd00::10", "port": 443})
	other_port.allow == false
}

test_destination_list_matches_case_insensitively if {
	d := billing({"host": "Billing.Legacy.Example.COM", "port": 443})
	d.allow == true
}

# Federation: partner.example has its own tenants (data.egress.federation), looked up in that domain only.
partner(ns) := istio_identity("partner.example", ns, "api")

test_federated_tenant_allowed_with_its_pool if {
	d := authz.decision with input as {"identity": partner("payments")}
	d.allow == true
	d.snat_pool == "partner_payments_snat"
}

test_federated_domain_does_not_reach_home_tenants if {
	d := authz.decision with input as {"identity": partner("bookinfo")}
	d.allow == false
	d.reason == "namespace bookinfo has no egress tenant"
}

test_home_domain_does_not_reach_federated_tenants if {
	d := authz.decision with input as {"identity": istio_identity("cluster.local", "payments", "api")}
	d.allow == false
	d.reason == "namespace payments has no egress tenant"
}

test_federated_domain_without_tenants_is_not_allowed if {
	d := authz.decision with input as {"identity": partner("payments")} with data.egress.federation as {"partner.example": {}}
	d.allow == false
	d.reason == "trust domain partner.example is not allowed"
}
