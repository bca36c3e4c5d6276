package authz

import (
	"testing"
)

// TestZtunnelRBACConformance ports ztunnel's own RBAC unit tests
// (src/rbac.rs) to the Istio objects
// istiod would translate into each tested match: every row is one ALLOW
// policy, and "matches" means the connection is allowed.
func TestZtunnelRBACConformance(t *testing.T) {
	plaintext := Request{SourceIP: ip("127.0.0.1"), Namespace: "dst", DestinationIP: ip("127.0.0.2"), DestinationPort: 8080}
	tls := plaintext
	tls.SourcePrincipal = "td/ns/namespace/sa/account"
	tlsAlt := Request{SourcePrincipal: "td-alt/ns/ns-alt/sa/sa=alt", SourceIP: ip("127.0.0.3"), Namespace: "dst",
		DestinationIP: ip("127.0.0.4"), DestinationPort: 9090}

	rows := []struct {
		name                string
		rules               string // spec.rules of the one ALLOW policy
		plain, tlsOK, altOK bool
	}{
		{"namespaces", `[{from: [{source: {namespaces: [namespace]}}]}]`, false, true, false},
		{"not_namespaces", `[{from: [{source: {notNamespaces: [namespace]}}]}]`, true, false, true},
		{"service_accounts", `[{from: [{source: {serviceAccounts: [namespace/account]}}]}]`, false, true, false},
		{"not_service_accounts", `[{from: [{source: {notServiceAccounts: [namespace/account]}}]}]`, true, false, true},
		{"principals", `[{from: [{source: {principals: [td/ns/namespace/sa/account]}}]}]`, false, true, false},
		{"not_principals", `[{from: [{source: {notPrincipals: [td/ns/namespace/sa/account]}}]}]`, true, false, true},
		{"source_ips", `[{from: [{source: {ipBlocks: [127.0.0.1/32]}}]}]`, true, true, false},
		{"not_source_ips", `[{from: [{source: {notIpBlocks: [127.0.0.1/32]}}]}]`, false, false, true},
		{"destination_ips", `[{when: [{key: destination.ip, values: [127.0.0.2/32]}]}]`, true, true, false},
		{"not_destination_ips", `[{when: [{key: destination.ip, notValues: [127.0.0.2/32]}]}]`, false, false, true},
		{"cidr_range", `[{when: [{key: destination.ip, values: [127.0.0.1/24]}]}]`, true, true, true},
		{"destination_ports", `[{to: [{operation: {ports: ["8080"]}}]}]`, true, true, false},
		{"not_destination_ports", `[{to: [{operation: {notPorts: ["8080"]}}]}]`, false, false, true},
		// rbac_empty_policy: [] never matches, [[]] always does.
		{"empty rules", `[]`, false, false, false},
		{"empty rule", `[{}]`, true, true, true},
		// rbac_nesting: (ns a OR ns b) AND port 80, as one rule.
		{"nesting", `[{from: [{source: {namespaces: [ns-alt]}}, {source: {namespaces: [namespace]}}], to: [{operation: {ports: ["9090"]}}]}]`, false, false, true},
		// rbac_multi_rule: (ns a) OR (ns b), as two rules.
		{"multi_rule", `[{from: [{source: {namespaces: [namespace]}}]}, {from: [{source: {namespaces: [ns-alt]}}]}]`, false, true, true},
		// string_match, through principals.
		{"prefix", `[{from: [{source: {principals: ["td/ns/namespace/*"]}}]}]`, false, true, false},
		{"suffix", `[{from: [{source: {principals: ["*/sa/sa=alt"]}}]}]`, false, false, true},
		{"presence", `[{from: [{source: {principals: ["*"]}}]}]`, false, true, true},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			aps, _ := load(t, ap("dst", "p", "rules: "+row.rules))
			e, ds := Compile(Config{}, aps, nil)
			checkDiags(t, ds, nil)
			for _, c := range []struct {
				name string
				req  Request
				want bool
			}{{"plaintext", plaintext, row.plain}, {"tls", tls, row.tlsOK}, {"tls_alt", tlsAlt, row.altOK}} {
				if got := e.Decide(c.req); got.Allow != c.want {
					t.Errorf("%s: Decide = %+v, want allow=%v", c.name, got, c.want)
				}
			}
		})
	}
}

// TestZtunnelDenyAllowOrder ports src/state.rs assert_rbac_logic_deny_allow.
func TestZtunnelDenyAllowOrder(t *testing.T) {
	req := Request{SourcePrincipal: "cluster.local/ns/ns1/sa/client", SourceIP: ip("127.0.0.1"), Namespace: "ns1",
		DestinationIP: ip("127.0.0.2"), DestinationPort: 80}
	for _, c := range []struct {
		name, policies string
		want           Decision
	}{
		{"no policies", "", allowDefault},
		{"matching ALLOW", ap("ns1", "allow", "rules: [{from: [{source: {namespaces: [ns1]}}]}]"), allowBy("ns1/allow")},
		{"ALLOW present, none match", ap("ns1", "allow", "rules: [{from: [{source: {namespaces: [other]}}]}]"), denyNoMatch},
		{"matching DENY", ap("ns1", "deny", "action: DENY\nrules: [{from: [{source: {namespaces: [ns1]}}]}]"), denyBy("ns1/deny")},
	} {
		t.Run(c.name, func(t *testing.T) {
			aps, pas := load(t, c.policies)
			e, _ := Compile(Config{}, aps, pas)
			if got := e.Decide(req); got.Allow != c.want.Allow || got.Policy != c.want.Policy {
				t.Errorf("Decide = %+v, want %+v", got, c.want)
			}
		})
	}
}
