package node

import (
	"path/filepath"
	"testing"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/node/inventory"
)

// TestApplyCompilesPoliciesOncePerRevision: snapshots with the policy
// revision last compiled reuse its Engine; a new revision, or none, is
// compiled.
func TestApplyCompilesPoliciesOncePerRevision(t *testing.T) {
	a := applyAgent(t, "n1")
	deny := []authz.AuthorizationPolicy{{Metadata: authz.ObjectMeta{Name: "deny", Namespace: "app"},
		Spec: authz.AuthorizationPolicySpec{Action: "DENY", Rules: []authz.Rule{{}}}}}
	engine := func(s *inventory.Snapshot) *authz.Engine {
		t.Helper()
		if err := a.apply(s); err != nil {
			t.Fatal(err)
		}
		return a.current().engine
	}
	rev := inventory.NewPolicyRevision()
	e1 := engine(&inventory.Snapshot{AuthorizationPolicies: deny, PolicyRevision: rev})
	if e2 := engine(&inventory.Snapshot{AuthorizationPolicies: deny, PolicyRevision: rev}); e2 != e1 {
		t.Error("same revision: compiled again")
	}
	e3 := engine(&inventory.Snapshot{PolicyRevision: inventory.NewPolicyRevision()})
	if e3 == e1 {
		t.Fatal("new revision: not compiled")
	}
	if d := e3.Decide(authz.Request{Namespace: "app"}); !d.Allow {
		t.Errorf("the new revision's engine still denies: %+v", d)
	}
	if e4 := engine(&inventory.Snapshot{}); e4 == e3 {
		t.Error("revision 0: not compiled")
	}
}

// applyAgent is an agent on node, never run, whose apply is called directly.
func applyAgent(t testing.TB, node string) *Agent {
	t.Helper()
	dir := t.TempDir()
	cert, key := certstest.NewCA(t).WriteFiles(t, dir)
	a, err := New(Config{
		NodeName: node, Manifests: filepath.Join(dir, "m"), CACert: cert, CAKey: key,
		TrustDomain: "cluster.local", SystemNamespace: "istio-system", Redirect: RedirectNone,
		OutboundAddr: "127.0.0.1:1", InboundAddr: "127.0.0.1:2", HBONEAddr: "127.0.0.1:3",
		AdminAddr: "127.0.0.1:4", MetricsAddr: "127.0.0.1:5", ReadinessAddr: "127.0.0.1:6",
	}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	return a
}
