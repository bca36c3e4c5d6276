package authz

import "testing"

// Scenario is one row of the scenario table (engine_test.go), for the
// external test that runs the table through a real istiod.
type Scenario struct {
	Name     string
	Cfg      Config
	Policies string // manifest of AuthorizationPolicy and PeerAuthentication documents, without apiVersion
	Req      Request
}

// Scenarios returns the scenario table.
func Scenarios() []Scenario {
	out := make([]Scenario, len(scenarios))
	for i, sc := range scenarios {
		out[i] = Scenario{Name: sc.name, Cfg: sc.cfg, Policies: sc.policies, Req: sc.req}
	}
	return out
}

// Load parses a scenario's manifest as the table's tests do.
func Load(t testing.TB, manifest string) ([]AuthorizationPolicy, []PeerAuthentication) {
	return load(t, manifest)
}
