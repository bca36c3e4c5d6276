package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/authz"
)

// The policy engine's key, measured in process (it needs no network): how
// a decision's cost grows with the policies that apply to the destination
// workload.

var policyDefinitions = map[string]string{
	"decide_10k_vs_1_policy": "authz Decide time with 10,000 AuthorizationPolicies applying to the workload ÷ with 1 (objects as written, kube mode: " +
		"half namespace-wide, half by selector, every tenth a DENY of another namespace, the others each ALLOW one principal; " +
		"the peer is the one the last policy allows, so no early match)",
}

// decideCost returns Decide's time per call, in ns, with n policies in
// scope of the workload.
func decideCost(n int) (float64, error) {
	var aps []authz.AuthorizationPolicy
	var last string
	for i := range n {
		p := authz.AuthorizationPolicy{Metadata: authz.ObjectMeta{Name: fmt.Sprintf("p%05d", i), Namespace: "app"}}
		if i%2 == 1 {
			p.Spec.Selector = &authz.WorkloadSelector{MatchLabels: map[string]string{"app": "x"}}
		}
		if i%10 == 0 && i != n-1 {
			p.Spec.Action = "DENY"
			p.Spec.Rules = []authz.Rule{{From: []authz.From{{Source: authz.Source{Namespaces: []string{"blocked"}}}}}}
		} else {
			last = fmt.Sprintf("cluster.local/ns/client/sa/sa-%05d", i)
			p.Spec.Rules = []authz.Rule{{
				From: []authz.From{{Source: authz.Source{Principals: []string{last}}}},
				To:   []authz.To{{Operation: authz.Operation{Ports: []string{"8080"}}}},
			}}
		}
		aps = append(aps, p)
	}
	e, ds := authz.Compile(authz.Config{}, aps, nil)
	if len(ds) > 0 {
		return 0, fmt.Errorf("decide: %v", ds[0])
	}
	r := authz.Request{SourcePrincipal: last, SourceIP: netip.MustParseAddr("198.18.1.2"), Namespace: "app",
		Labels: map[string]string{"app": "x"}, DestinationIP: netip.MustParseAddr("198.18.2.2"), DestinationPort: 8080}
	if d := e.Decide(r); !d.Allow || d.Policy == "" {
		return 0, fmt.Errorf("decide: %d policies: %+v, want allowed by the last", n, d)
	}
	res := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			e.Decide(r)
		}
	})
	return float64(res.T.Nanoseconds()) / float64(res.N), nil
}

// policy records Decide's time with 1 and 10,000 policies in scope and
// their ratio.
func (s *suite) policy(context.Context) {
	var ns [2]float64
	for i, n := range []int{1, 10_000} {
		stop := func() {}
		if n == 10_000 && s.roundNo == 0 {
			stop = s.profileSelf("policy/decide-10k")
		}
		v, err := decideCost(n)
		stop()
		if err != nil {
			s.rec.Errors = append(s.rec.Errors, err.Error())
			return
		}
		ns[i] = v
		s.rec.raw("policy/decide", "ferry", fmt.Sprintf("ns_%d_policies", n), "ns", v)
	}
	s.rec.key("decide_10k_vs_1_policy", ns[1]/ns[0])
}

// profileSelf starts, with -profile, a CPU profile of this process (the
// in-process benchmarks' Ferry code runs here), named after bench; the
// returned function stops it.
func (s *suite) profileSelf(bench string) (stop func()) {
	if s.cfg.profileDir == "" {
		return func() {}
	}
	path := filepath.Join(s.cfg.profileDir, strings.NewReplacer("/", "_").Replace(bench)+"-ferrybench.pprof")
	f, err := os.Create(path)
	if err != nil {
		s.log.Warn("profile", "bench", bench, "err", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		s.log.Warn("profile", "bench", bench, "err", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
