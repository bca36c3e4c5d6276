package node

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferrymesh/ferry/authz"
)

// TestReportPolicyProblems checks that each policy object with errors gets
// one log line per change (naming the object, the field, what is wrong and
// how it is enforced meanwhile), that ferry_policy_errors counts objects by
// kind and namespace, and that both clear once fixed.
func TestReportPolicyProblems(t *testing.T) {
	var logs bytes.Buffer
	a := &Agent{log: slog.New(slog.NewTextHandler(&logs, nil)), metrics: NewMetrics("test")}
	bad := []authz.Diagnostic{
		{Severity: authz.Error, Kind: authz.KindAuthorizationPolicy, Namespace: "foo", Name: "p", Field: "rules[0].from[0].source.principal",
			Message: `unknown field "principal"`, Effect: "rules[0] matches nothing"},
		{Severity: authz.Error, Kind: authz.KindAuthorizationPolicy, Namespace: "foo", Name: "p", Field: "rules[0].from[0].source",
			Message: "must not be empty", Effect: "rules[0] matches nothing"},
		{Severity: authz.Error, Kind: authz.KindAuthorizationPolicy, Namespace: "foo", Name: "q", Field: "action",
			Message: `unknown action "ALOW"`, Effect: "denies everything"},
		{Severity: authz.Error, Kind: authz.KindPeerAuthentication, Namespace: "bar", Name: "s", Field: "mtls.mode",
			Message: `unknown mode "STRCT"`, Effect: "STRICT"},
		{Severity: authz.Warning, Kind: authz.KindAuthorizationPolicy, Namespace: "foo", Name: "l7", Field: "rules[0]", Message: "uses HTTP attributes"},
	}
	gauge := func(kind, ns string) float64 {
		return testutil.ToFloat64(a.metrics.PolicyErrors.WithLabelValues(kind, ns))
	}

	a.reportPolicyProblems(bad)
	a.reportPolicyProblems(bad) // the next snapshot, nothing changed
	out := logs.String()
	if n := strings.Count(out, "policy has errors"); n != 3 {
		t.Errorf("%d error lines, want 3 (one per object, once):\n%s", n, out)
	}
	want := `msg="policy has errors" policy="AuthorizationPolicy foo/p" errors="rules[0].from[0].source.principal: unknown field \"principal\"; rules[0].from[0].source: must not be empty" enforced="rules[0] matches nothing"`
	if !strings.Contains(out, want) {
		t.Errorf("log lacks %s:\n%s", want, out)
	}
	if n := strings.Count(out, "policy applies with warnings"); n != 1 {
		t.Errorf("%d warning lines, want 1:\n%s", n, out)
	}
	if g := gauge(authz.KindAuthorizationPolicy, "foo"); g != 2 {
		t.Errorf("ferry_policy_errors{AuthorizationPolicy,foo} = %v, want 2", g)
	}
	if g := gauge(authz.KindPeerAuthentication, "bar"); g != 1 {
		t.Errorf("ferry_policy_errors{PeerAuthentication,bar} = %v, want 1", g)
	}

	logs.Reset()
	a.reportPolicyProblems(bad[2:]) // p fixed
	if out := logs.String(); !strings.Contains(out, `policy problems resolved" policy="AuthorizationPolicy foo/p"`) || strings.Contains(out, "has errors") {
		t.Errorf("after fixing p:\n%s", out)
	}
	if g := gauge(authz.KindAuthorizationPolicy, "foo"); g != 1 {
		t.Errorf("ferry_policy_errors{AuthorizationPolicy,foo} = %v, want 1", g)
	}
	a.reportPolicyProblems(nil)
	if n := testutil.CollectAndCount(a.metrics.PolicyErrors); n != 0 {
		t.Errorf("%d ferry_policy_errors series left, want 0", n)
	}
}
