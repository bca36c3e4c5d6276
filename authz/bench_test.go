package authz

import (
	"runtime"
	"strconv"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// inScope returns n policies that all apply to workload app=x in ns "app":
// every tenth is a DENY that does not match, the rest ALLOW one client each,
// half namespace-wide and half by selector. The client of the last policy by
// name is the one allowed, so Decide has to look at every policy.
func inScope(n int) ([]AuthorizationPolicy, string) {
	var aps []AuthorizationPolicy
	last := ""
	for i := range n {
		name := "p" + pad(i)
		p := AuthorizationPolicy{Metadata: ObjectMeta{Name: name, Namespace: "app"}}
		if i%2 == 1 {
			p.Spec.Selector = &WorkloadSelector{MatchLabels: map[string]string{"app": "x"}}
		}
		if i%10 == 0 && i != n-1 {
			p.Spec.Action = "DENY"
			p.Spec.Rules = []Rule{{From: []From{{Source: Source{Namespaces: []string{"blocked"}}}}}}
		} else {
			last = "cluster.local/ns/client/sa/sa-" + pad(i)
			p.Spec.Rules = []Rule{{
				From: []From{{Source: Source{Principals: []string{last}}}},
				To:   []To{{Operation: Operation{Ports: []string{"8080"}}}},
			}}
		}
		aps = append(aps, p)
	}
	return aps, last
}

func pad(i int) string {
	s := strconv.Itoa(i)
	for len(s) < 5 {
		s = "0" + s
	}
	return s
}

// ztunnelBench mirrors ztunnel's `rbac` benchmark (benches/throughput.rs):
// 10,000 mesh-wide DENY policies with 10 rules each, every rule a match on
// namespaces, principals (prefix, suffix, exact), source IP, destination IP
// and port 0.
func ztunnelBench() []AuthorizationPolicy {
	var rules []Rule
	for range 10 {
		rules = append(rules, Rule{
			From: []From{{Source: Source{
				Namespaces: []string{"random-prefix-2b123*", "*random-postix-2b723", "random-exac-2bc13"},
				Principals: []string{"cluster.local/ns/random-prefix-2b123*", "*random-postix-2b723", "cluster.local/ns/random-exac/sa/2bc13"},
				IPBlocks:   []string{"198.18.0.1/32"},
			}}},
			To:   []To{{Operation: Operation{Ports: []string{"0"}}}},
			When: []Condition{{Key: "destination.ip", Values: []string{"198.18.0.1/32"}}},
		})
	}
	aps := make([]AuthorizationPolicy, 10000)
	for i := range aps {
		aps[i] = AuthorizationPolicy{
			Metadata: ObjectMeta{Name: "policy-" + pad(i), Namespace: DefaultRootNamespace},
			Spec:     AuthorizationPolicySpec{Action: "DENY", Rules: rules},
		}
	}
	return aps
}

func BenchmarkDecide(b *testing.B) {
	app := map[string]string{"app": "x", "version": "v1", "team": "payments"}
	req := func(principal string, port uint16) Request {
		return Request{SourcePrincipal: principal, SourceIP: ip("198.18.1.1"), Namespace: "app", Labels: app,
			DestinationIP: ip("198.18.2.2"), DestinationPort: port}
	}
	type bench struct {
		name string
		aps  []AuthorizationPolicy
		pas  []PeerAuthentication
		req  Request
		want bool
	}
	var benches []bench
	for _, n := range []int{1, 100, 10000} {
		aps, last := inScope(n)
		benches = append(benches, bench{name: "in-scope=" + strconv.Itoa(n), aps: aps, req: req(last, 8080), want: true})
	}
	{
		// The same 100 policies keyed on source addresses instead of
		// principals: no principal filter, every rule is evaluated.
		aps, _ := inScope(100)
		for i := range aps {
			if aps[i].Spec.Action == "" {
				aps[i].Spec.Rules[0].From[0].Source = Source{IPBlocks: []string{"198.18.1." + strconv.Itoa(i) + "/32"}}
			}
		}
		r := req("cluster.local/ns/client/sa/any", 8080)
		r.SourceIP = ip("198.18.1.99")
		benches = append(benches, bench{name: "in-scope=100-by-ip", aps: aps, req: r, want: true})
	}
	{
		aps := ztunnelBench()
		benches = append(benches,
			bench{name: "ztunnel-10000-mesh-deny-x10-rules", aps: aps,
				req: Request{SourceIP: ip("127.0.0.1"), Namespace: "app", DestinationIP: ip("127.0.0.2"), DestinationPort: 12345}, want: true},
			bench{name: "ztunnel-10000-mesh-deny-x10-rules-late-miss", aps: aps,
				req: Request{SourcePrincipal: "cluster.local/ns/app/sa/client", SourceIP: ip("198.18.0.1"), Namespace: "app",
					DestinationIP: ip("198.18.0.1"), DestinationPort: 0}, want: true},
		)
	}
	{
		// 10,000 policies elsewhere, one in scope: the namespace index.
		aps, last := inScope(1)
		for i := range 10000 {
			aps = append(aps, AuthorizationPolicy{
				Metadata: ObjectMeta{Name: "deny-all", Namespace: "other-" + pad(i)},
				Spec:     AuthorizationPolicySpec{Action: "DENY", Rules: []Rule{{}}},
			})
		}
		benches = append(benches, bench{name: "other-namespaces=10000", aps: aps, req: req(last, 8080), want: true})
	}
	{
		// 10,000 selector policies in the workload's namespace, each for
		// another app: the selector index.
		aps, last := inScope(1)
		for i := range 10000 {
			aps = append(aps, AuthorizationPolicy{
				Metadata: ObjectMeta{Name: "deny-" + pad(i), Namespace: "app"},
				Spec: AuthorizationPolicySpec{Action: "DENY", Rules: []Rule{{}},
					Selector: &WorkloadSelector{MatchLabels: map[string]string{"app": "app-" + pad(i)}}},
			})
		}
		benches = append(benches, bench{name: "other-selectors=10000", aps: aps, req: req(last, 8080), want: true})
	}
	{
		pas := []PeerAuthentication{
			{Metadata: ObjectMeta{Name: "default", Namespace: DefaultRootNamespace}, Spec: PeerAuthenticationSpec{MTLS: &MTLS{Mode: "STRICT"}}},
			{Metadata: ObjectMeta{Name: "x", Namespace: "app"}, Spec: PeerAuthenticationSpec{
				Selector:      &WorkloadSelector{MatchLabels: map[string]string{"app": "x"}},
				PortLevelMTLS: map[string]MTLS{"9090": {Mode: "PERMISSIVE"}}}},
		}
		benches = append(benches, bench{name: "plaintext-strict", pas: pas, req: req("", 8080), want: false})
	}

	for _, bc := range benches {
		b.Run(bc.name, func(b *testing.B) {
			e, ds := Compile(Config{}, bc.aps, bc.pas)
			for _, d := range ds {
				b.Fatal(d)
			}
			if d := e.Decide(bc.req); d.Allow != bc.want {
				b.Fatalf("Decide = %+v, want allow=%v", d, bc.want)
			}
			b.ReportAllocs()
			for b.Loop() {
				e.Decide(bc.req)
			}
		})
	}
}

// BenchmarkCompile compiles ztunnel's 10,000 x 10 rule set and reports the
// heap the resulting Engine keeps.
func BenchmarkCompile(b *testing.B) {
	aps := ztunnelBench()
	e, retained := testutil.Retained(func() *Engine {
		e, _ := Compile(Config{}, aps, nil)
		return e
	})
	runtime.KeepAlive(e)
	b.ReportAllocs()
	for b.Loop() {
		Compile(Config{}, aps, nil)
	}
	b.ReportMetric(float64(retained), "retained-B")
}

// TestDecideDoesNotAllocate holds Decide to zero allocations on every
// scenario of the table.
func TestDecideDoesNotAllocate(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts are slow to measure")
	}
	for _, sc := range scenarios {
		aps, pas := load(t, sc.policies)
		e, _ := Compile(sc.cfg, aps, pas)
		if n := testing.AllocsPerRun(20, func() { e.Decide(sc.req) }); n != 0 {
			t.Errorf("%s: Decide allocates %v times", sc.name, n)
		}
	}
}
