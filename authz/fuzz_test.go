package authz

import (
	"cmp"
	"encoding/json"
	"iter"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// This file checks the compiled Engine against refDecide, a deliberately
// plain evaluator that reads the raw objects on every call, written straight
// from Istio ambient's semantics (Istio's AuthorizationPolicy reference;
// ztunnel's src/rbac.rs)
// without any of the Engine's indexing or precompilation.

type refResult struct {
	allow  bool
	policy string
	kind   string
}

func refDecide(root string, aps []AuthorizationPolicy, pas []PeerAuthentication, r Request) refResult {
	// The peer identity: "td/ns/NS/sa/SA", with or without spiffe://.
	principal := strings.TrimPrefix(r.SourcePrincipal, "spiffe://")
	var srcNS, srcSA string
	hasID := principal != ""
	if hasID {
		parts := strings.Split(principal, "/")
		if len(parts) != 5 || parts[0] == "" || parts[1] != "ns" || parts[2] == "" || parts[3] != "sa" || parts[4] == "" {
			return refResult{}
		}
		srcNS, srcSA = parts[2], parts[4]
	}
	src, dst := r.SourceIP.Unmap(), r.DestinationIP.Unmap()

	// 1. PeerAuthentication, for connections without identity.
	if !hasID {
		mode, by := refPeerAuthMode(root, pas, r)
		if mode == "STRICT" {
			return refResult{policy: by, kind: KindPeerAuthentication}
		}
	}

	// 2. The AuthorizationPolicies that apply to the workload.
	var allows, denies []AuthorizationPolicy
	for _, p := range aps {
		if p.Metadata.Namespace != root && p.Metadata.Namespace != r.Namespace {
			continue
		}
		if len(p.Spec.TargetRefs) > 0 || p.Spec.TargetRef != nil {
			continue
		}
		if p.Spec.Selector != nil {
			if len(p.Spec.Selector.MatchLabels) == 0 {
				continue // ambient attaches an empty selector to nothing
			}
			ok := true
			for k, v := range p.Spec.Selector.MatchLabels {
				if got, has := r.Labels[k]; !has || got != v {
					ok = false
				}
			}
			if !ok {
				continue
			}
		}
		switch p.Spec.Action {
		case "", "ALLOW":
			allows = append(allows, p)
		case "DENY":
			denies = append(denies, p)
		}
	}
	byName := func(a, b AuthorizationPolicy) int {
		return cmp.Or(strings.Compare(a.Metadata.Namespace, b.Metadata.Namespace), strings.Compare(a.Metadata.Name, b.Metadata.Name))
	}
	slices.SortFunc(allows, byName)
	slices.SortFunc(denies, byName)

	env := refEnv{hasID: hasID, principal: principal, ns: srcNS, sa: srcSA, src: src, dst: dst, port: r.DestinationPort}
	for _, p := range denies {
		if env.policyMatches(p, true) {
			return refResult{policy: p.Metadata.Namespace + "/" + p.Metadata.Name, kind: KindAuthorizationPolicy}
		}
	}
	if len(allows) == 0 {
		return refResult{allow: true}
	}
	for _, p := range allows {
		if env.policyMatches(p, false) {
			return refResult{allow: true, policy: p.Metadata.Namespace + "/" + p.Metadata.Name, kind: KindAuthorizationPolicy}
		}
	}
	return refResult{}
}

// refPeerAuthMode: the oldest workload policy (port, then mode), else the
// oldest namespace policy, else the oldest mesh policy; UNSET inherits;
// DISABLE counts as PERMISSIVE.
func refPeerAuthMode(root string, pas []PeerAuthentication, r Request) (mode, by string) {
	older := func(a, b *PeerAuthentication) bool {
		if !a.Metadata.CreationTimestamp.Equal(b.Metadata.CreationTimestamp) {
			return a.Metadata.CreationTimestamp.Before(b.Metadata.CreationTimestamp)
		}
		return a.Metadata.Namespace+"/"+a.Metadata.Name < b.Metadata.Namespace+"/"+b.Metadata.Name
	}
	var wl, nsl, mesh *PeerAuthentication
	for i := range pas {
		p := &pas[i]
		emptySel := p.Spec.Selector == nil || len(p.Spec.Selector.MatchLabels) == 0
		switch {
		case p.Metadata.Namespace == root:
			if !emptySel {
				continue // ignored
			}
			if p.Spec.Selector != nil && r.Namespace != root {
				continue
			}
			if mesh == nil || older(p, mesh) {
				mesh = p
			}
		case p.Metadata.Namespace != r.Namespace:
		case emptySel:
			if nsl == nil || older(p, nsl) {
				nsl = p
			}
		default:
			ok := true
			for k, v := range p.Spec.Selector.MatchLabels {
				if got, has := r.Labels[k]; !has || got != v {
					ok = false
				}
			}
			if ok && (wl == nil || older(p, wl)) {
				wl = p
			}
		}
	}
	modeOf := func(m *MTLS) string {
		if m == nil || m.Mode == "" || m.Mode == "UNSET" {
			return ""
		}
		if m.Mode == "DISABLE" {
			return "PERMISSIVE"
		}
		return m.Mode
	}
	key := func(p *PeerAuthentication) string { return p.Metadata.Namespace + "/" + p.Metadata.Name }
	if wl != nil {
		for k, m := range wl.Spec.PortLevelMTLS {
			if k == strconv.Itoa(int(r.DestinationPort)) && modeOf(&m) != "" {
				return modeOf(&m), key(wl)
			}
		}
		if m := modeOf(wl.Spec.MTLS); m != "" {
			return m, key(wl)
		}
	}
	if nsl != nil {
		if m := modeOf(nsl.Spec.MTLS); m != "" {
			return m, key(nsl)
		}
	}
	if mesh != nil {
		if m := modeOf(mesh.Spec.MTLS); m != "" {
			return m, key(mesh)
		}
	}
	return "PERMISSIVE", ""
}

type refEnv struct {
	hasID     bool
	principal string
	ns, sa    string
	src, dst  netip.Addr
	port      uint16
	policyNS  string
}

func (env refEnv) policyMatches(p AuthorizationPolicy, deny bool) bool {
	env.policyNS = p.Metadata.Namespace
	for _, rule := range p.Spec.Rules {
		if env.ruleMatches(rule, deny) {
			return true
		}
	}
	return false
}

var refL4When = []string{"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}

func (env refEnv) ruleMatches(rule Rule, deny bool) bool {
	hasL7 := false
	for _, to := range rule.To {
		o := to.Operation
		if len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) > 0 {
			hasL7 = true
		}
	}
	for _, from := range rule.From {
		s := from.Source
		if len(s.RemoteIPBlocks)+len(s.NotRemoteIPBlocks)+len(s.RequestPrincipals)+len(s.NotRequestPrincipals) > 0 {
			hasL7 = true
		}
	}
	for _, w := range rule.When {
		if !slices.Contains(refL4When, w.Key) {
			hasL7 = true
		}
	}
	if hasL7 && !deny {
		return false // ALLOW rules with HTTP attributes are dropped
	}
	// Every clause must hold. An entry with no L4 field is skipped, so a
	// clause made only of such entries fails.
	if len(rule.To) > 0 {
		ok := false
		for _, to := range rule.To {
			o := to.Operation
			if len(o.Ports)+len(o.NotPorts) == 0 {
				continue
			}
			if env.portIn(o.Ports, true) && !env.portIn(o.NotPorts, false) {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	if len(rule.From) > 0 {
		ok := false
		for _, from := range rule.From {
			s := from.Source
			if len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces)+len(s.ServiceAccounts)+
				len(s.NotServiceAccounts)+len(s.IPBlocks)+len(s.NotIPBlocks) == 0 {
				continue
			}
			if env.principalIn(s.Principals, true) && !env.principalIn(s.NotPrincipals, false) &&
				env.nsIn(s.Namespaces, true) && !env.nsIn(s.NotNamespaces, false) &&
				env.saIn(s.ServiceAccounts, true) && !env.saIn(s.NotServiceAccounts, false) &&
				ipIn(s.IPBlocks, env.src, true) && !ipIn(s.NotIPBlocks, env.src, false) {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	for _, w := range rule.When {
		var ok bool
		switch w.Key {
		case "source.ip":
			ok = ipIn(w.Values, env.src, true) && !ipIn(w.NotValues, env.src, false)
		case "destination.ip":
			ok = ipIn(w.Values, env.dst, true) && !ipIn(w.NotValues, env.dst, false)
		case "destination.port":
			ok = env.portIn(w.Values, true) && !env.portIn(w.NotValues, false)
		case "source.namespace":
			ok = env.nsIn(w.Values, true) && !env.nsIn(w.NotValues, false)
		case "source.principal":
			ok = env.principalIn(w.Values, true) && !env.principalIn(w.NotValues, false)
		default:
			ok = false // an L7 key leaves an empty match
		}
		if !ok {
			return false
		}
	}
	return true
}

// Each xIn(values, ifEmpty) reports whether any value matches, or ifEmpty
// when there are no values.

func patternMatch(pattern, v string) bool {
	switch {
	case pattern == "*":
		return v != ""
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(v, pattern[1:])
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(v, pattern[:len(pattern)-1])
	}
	return pattern == v
}

func (env refEnv) principalIn(values []string, ifEmpty bool) bool {
	if len(values) == 0 {
		return ifEmpty
	}
	if !env.hasID {
		return false
	}
	for _, v := range values {
		if patternMatch(v, env.principal) {
			return true
		}
	}
	return false
}

func (env refEnv) nsIn(values []string, ifEmpty bool) bool {
	if len(values) == 0 {
		return ifEmpty
	}
	for _, v := range values {
		if patternMatch(v, env.ns) {
			return true
		}
	}
	return false
}

func (env refEnv) saIn(values []string, ifEmpty bool) bool {
	if len(values) == 0 {
		return ifEmpty
	}
	if !env.hasID {
		return false
	}
	for _, v := range values {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = env.policyNS, v
		}
		if ns == env.ns && sa == env.sa {
			return true
		}
	}
	return false
}

func ipIn(values []string, a netip.Addr, ifEmpty bool) bool {
	if len(values) == 0 {
		return ifEmpty
	}
	for _, v := range values {
		if !strings.Contains(v, "/") {
			v += "/" + strconv.Itoa(netip.MustParseAddr(v).BitLen())
		}
		if netip.MustParsePrefix(v).Masked().Contains(a) {
			return true
		}
	}
	return false
}

func (env refEnv) portIn(values []string, ifEmpty bool) bool {
	if len(values) == 0 {
		return ifEmpty
	}
	for _, v := range values {
		if v == strconv.Itoa(int(env.port)) {
			return true
		}
	}
	return false
}

// gen turns fuzz bytes into policies from a small vocabulary, so that
// random inputs hit matches and precedence often.
type gen struct{ b []byte }

func (g *gen) n(max int) int {
	if len(g.b) == 0 {
		return 0
	}
	v := int(g.b[0]) % max
	g.b = g.b[1:]
	return v
}

func (g *gen) pick(vs []string) string { return vs[g.n(len(vs))] }

func (g *gen) some(vs []string) []string {
	var out []string
	for range g.n(3) {
		out = append(out, g.pick(vs))
	}
	return out
}

var (
	genNamespaces = []string{"istio-system", "foo", "bar"}
	genPrincipals = []string{"cluster.local/ns/foo/sa/a", "cluster.local/ns/bar/sa/b", "cluster.local/ns/foo/*", "*/sa/a", "*", "other/ns/foo/sa/a"}
	genNSPatterns = []string{"foo", "bar", "*", "f*", "*r"}
	genSAs        = []string{"a", "foo/a", "bar/b", "b"}
	genIPs        = []string{"10.0.0.0/8", "10.1.0.5", "10.1.0.0/24", "fd00::/8", "192.168.0.1", "::ffff:10.1.0.5", "10.2.0.7/32"}
	genPorts      = []string{"80", "8080", "9000"}
	genWhenKeys   = []string{"source.ip", "destination.ip", "destination.port", "source.namespace", "source.principal", "request.headers[x]", "connection.sni"}
	genActions    = []string{"", "ALLOW", "DENY", "DENY", "AUDIT"}
	genModes      = []string{"", "UNSET", "DISABLE", "PERMISSIVE", "STRICT", "STRICT"}
	genTimes      = []time.Time{{}, time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}

	reqPrincipals = []string{"", "cluster.local/ns/foo/sa/a", "cluster.local/ns/bar/sa/b", "other/ns/foo/sa/a", "spiffe://cluster.local/ns/istio-system/sa/a"}
	reqSrcIPs     = []string{"10.1.0.5", "192.168.0.1", "fd00::5", "::ffff:10.1.0.9"}
	reqLabels     = []map[string]string{nil, {"app": "a"}, {"app": "b", "version": "a"}, {"app": "a", "version": "b"}}
	reqPorts      = []uint16{80, 8080, 9000}
)

func (g *gen) selector() *WorkloadSelector {
	switch g.n(4) {
	case 0, 1:
		return nil
	case 2:
		return &WorkloadSelector{MatchLabels: map[string]string{g.pick([]string{"app", "version"}): g.pick([]string{"a", "b"})}}
	}
	if g.n(4) == 0 {
		return &WorkloadSelector{}
	}
	return &WorkloadSelector{MatchLabels: map[string]string{"app": g.pick([]string{"a", "b"}), "version": g.pick([]string{"a", "b"})}}
}

func (g *gen) rule() Rule {
	var r Rule
	for range g.n(3) {
		var s Source
		switch g.n(7) {
		case 0:
			s.Principals = g.some(genPrincipals)
		case 1:
			s.NotPrincipals = g.some(genPrincipals)
		case 2:
			s.Namespaces, s.NotNamespaces = g.some(genNSPatterns), g.some(genNSPatterns)
		case 3:
			s.ServiceAccounts, s.NotServiceAccounts = g.some(genSAs), g.some(genSAs)
		case 4:
			s.IPBlocks, s.NotIPBlocks = g.some(genIPs), g.some(genIPs)
		case 5:
			s.RequestPrincipals = []string{"iss/sub"}
			s.Principals = g.some(genPrincipals)
		case 6:
			s.TrustDomains = []string{"cluster.local"}
			s.IPBlocks = g.some(genIPs)
		}
		r.From = append(r.From, From{Source: s})
	}
	for range g.n(3) {
		var o Operation
		o.Ports, o.NotPorts = g.some(genPorts), g.some(genPorts)
		if g.n(5) == 0 {
			o.Methods = []string{"GET"}
		}
		r.To = append(r.To, To{Operation: o})
	}
	for range g.n(3) {
		k := g.pick(genWhenKeys)
		var vocab []string
		switch k {
		case "source.ip", "destination.ip":
			vocab = genIPs
		case "destination.port":
			vocab = genPorts
		case "source.namespace":
			vocab = genNSPatterns
		case "source.principal":
			vocab = genPrincipals
		default:
			vocab = []string{"x"}
		}
		r.When = append(r.When, Condition{Key: k, Values: g.some(vocab), NotValues: g.some(vocab)})
	}
	return r
}

func (g *gen) policies() ([]AuthorizationPolicy, []PeerAuthentication) {
	var aps []AuthorizationPolicy
	var pas []PeerAuthentication
	for i := range g.n(8) {
		p := AuthorizationPolicy{Metadata: ObjectMeta{Name: "ap" + strconv.Itoa(i), Namespace: g.pick(genNamespaces)}}
		p.Spec.Selector = g.selector()
		p.Spec.Action = g.pick(genActions)
		switch g.n(5) {
		case 0:
		case 1:
			p.Spec.Rules = []Rule{{}}
		default:
			for range 1 + g.n(3) {
				p.Spec.Rules = append(p.Spec.Rules, g.rule())
			}
		}
		aps = append(aps, p)
	}
	for i := range g.n(5) {
		p := PeerAuthentication{Metadata: ObjectMeta{Name: "pa" + strconv.Itoa(i), Namespace: g.pick(genNamespaces),
			CreationTimestamp: genTimes[g.n(len(genTimes))]}}
		p.Spec.Selector = g.selector()
		if m := g.pick(genModes); m != "" || g.n(2) == 0 {
			p.Spec.MTLS = &MTLS{Mode: m}
		}
		if p.Spec.Selector != nil && len(p.Spec.Selector.MatchLabels) > 0 && g.n(2) == 0 {
			p.Spec.PortLevelMTLS = map[string]MTLS{g.pick(genPorts): {Mode: g.pick(genModes)}}
		}
		pas = append(pas, p)
	}
	return aps, pas
}

// accepted drops the objects with errors, so both evaluators see the same
// valid set (validation itself is covered by the scenario table).
func accepted(aps []AuthorizationPolicy, pas []PeerAuthentication, ds []Diagnostic) ([]AuthorizationPolicy, []PeerAuthentication) {
	bad := map[string]bool{}
	for _, d := range ds {
		if d.Severity == Error {
			bad[d.Kind+" "+d.Namespace+"/"+d.Name] = true
		}
	}
	aps = slices.DeleteFunc(slices.Clone(aps), func(p AuthorizationPolicy) bool {
		return bad[KindAuthorizationPolicy+" "+p.Metadata.Namespace+"/"+p.Metadata.Name]
	})
	pas = slices.DeleteFunc(slices.Clone(pas), func(p PeerAuthentication) bool {
		return bad[KindPeerAuthentication+" "+p.Metadata.Namespace+"/"+p.Metadata.Name]
	})
	return aps, pas
}

func FuzzDecide(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x01\x01\x00\x02\x03\x02\x01\x00\x00\x02\x01\x04\x00\x02\x02\x01"))
	f.Add([]byte("\x05\x02\x02\x01\x02\x03\x01\x02\x00\x01\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a"))
	f.Add([]byte("\x03\x00\x03\x02\x04\x02\x02\x02\x02\x02\x03\x05\x01\x02\x03\x04\x04\x01\x03\x02\x01\x00\x02"))
	f.Add([]byte("\x07\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f"))
	f.Fuzz(func(t *testing.T, data []byte) {
		g := &gen{b: data}
		aps, pas := g.policies()
		_, ds := Compile(Config{}, aps, pas)
		// Objects with errors are read fail-closed (FuzzFailClosed checks
		// that); the reference judges the valid ones.
		raps, rpas := accepted(aps, pas, ds)
		e, _ := Compile(Config{}, raps, rpas)
		for r := range genRequests() {
			got := e.Decide(r)
			want := refDecide(DefaultRootNamespace, raps, rpas, r)
			if got.Allow != want.allow || got.Policy != want.policy || got.Kind != want.kind {
				js, _ := json.MarshalIndent(struct {
					APs []AuthorizationPolicy
					PAs []PeerAuthentication
				}{raps, rpas}, "", " ")
				t.Fatalf("request %+v\nengine    %+v\nreference %+v\npolicies %s", r, got, want, js)
			}
		}
	})
}

// FuzzCompile feeds arbitrary JSON objects to Compile: it must never panic,
// always return an Engine, and that Engine must answer.
func FuzzCompile(f *testing.F) {
	f.Add(`{"aps":[{"metadata":{"name":"a","namespace":"foo"},"spec":{"action":"DENY","rules":[{"from":[{"source":{"ipBlocks":["10.0.0/33"]}}]}]}}]}`)
	f.Add(`{"aps":[{"metadata":{"name":"a","namespace":"foo"},"spec":{"selector":{"matchLabels":{"app":"x"}},"rules":[{"to":[{"operation":{"ports":["80"],"methods":["GET"]}}],"when":[{"key":"source.ip","values":["1.2.3.4"]}]}]}}]}`)
	f.Add(`{"pas":[{"metadata":{"name":"p","namespace":"foo"},"spec":{"selector":{"matchLabels":{"app":"x"}},"mtls":{"mode":"STRICT"},"portLevelMtls":{"80":{"mode":"DISABLE"},"0":{}}}}]}`)
	f.Add(`{"aps":[{"metadata":{"name":"","namespace":""},"spec":{"action":"CUSTOM","provider":{"name":"x"},"targetRefs":[{"kind":"Gateway","name":"g"}],"rules":[{"when":[{"key":"request.headers[","values":[""]}]}]}}]}`)
	f.Add(`{"aps":[{"metadata":{"name":"a","namespace":"istio-system","annotations":{"istio.io/dry-run":"true"}},"spec":{"rules":[{"from":[{"source":{"principals":["*a*"],"serviceAccounts":["a/b/c"]}}]}]}}]}`)
	f.Fuzz(func(t *testing.T, in string) {
		var objs struct {
			APs []AuthorizationPolicy `json:"aps"`
			PAs []PeerAuthentication  `json:"pas"`
		}
		if json.Unmarshal([]byte(in), &objs) != nil {
			return
		}
		for _, cfg := range []Config{{}, {RootNamespace: "foo", TrustDomain: "cluster.local"}} {
			e, ds := Compile(cfg, objs.APs, objs.PAs)
			if e == nil {
				t.Fatal("Compile returned a nil Engine")
			}
			for _, d := range ds {
				if d.Kind == "" || d.Message == "" || !strings.HasPrefix(d.Error(), "authz: ") {
					t.Fatalf("bad diagnostic %#v", d)
				}
			}
			for _, pr := range reqPrincipals {
				for _, ns := range []string{"foo", "istio-system", ""} {
					r := Request{SourcePrincipal: pr, SourceIP: ip(clientIP), Namespace: ns, Labels: map[string]string{"app": "x"},
						DestinationIP: ip(workloadIP), DestinationPort: 80}
					d := e.Decide(r)
					if d.Reason == "" {
						t.Fatalf("Decide(%+v) = %+v: empty reason", r, d)
					}
					if x := e.Explain(r); x.Decision != d {
						t.Fatalf("Explain disagrees with Decide: %+v vs %+v", x.Decision, d)
					}
				}
			}
		}
	})
}

// TestDecideMatchesReference runs the differential check of FuzzDecide on
// seeded pseudo-random inputs in every `go test`, and checks that the
// generator reaches every kind of outcome (else the fuzzer proves little).
func TestDecideMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	outcomes := map[string]int{}
	for range 1500 {
		data := make([]byte, 64+rng.IntN(192))
		for i := range data {
			data[i] = byte(rng.UintN(256))
		}
		g := &gen{b: data}
		aps, pas := g.policies()
		_, ds := Compile(Config{}, aps, pas)
		// Objects with errors are read fail-closed (FuzzFailClosed checks
		// that); the reference judges the valid ones.
		raps, rpas := accepted(aps, pas, ds)
		e, _ := Compile(Config{}, raps, rpas)
		for range 20 {
			r := Request{
				SourcePrincipal: reqPrincipals[rng.IntN(len(reqPrincipals))],
				SourceIP:        ip(reqSrcIPs[rng.IntN(len(reqSrcIPs))]),
				Namespace:       genNamespaces[rng.IntN(len(genNamespaces))],
				Labels:          reqLabels[rng.IntN(len(reqLabels))],
				DestinationIP:   ip(workloadIP),
				DestinationPort: reqPorts[rng.IntN(len(reqPorts))],
			}
			got := e.Decide(r)
			want := refDecide(DefaultRootNamespace, raps, rpas, r)
			if got.Allow != want.allow || got.Policy != want.policy || got.Kind != want.kind {
				t.Fatalf("request %+v\nengine    %+v\nreference %+v\nAPs %+v\nPAs %+v", r, got, want, raps, rpas)
			}
			switch {
			case got.Kind == KindPeerAuthentication:
				outcomes["strict"]++
			case got.Policy != "" && got.Allow:
				outcomes["allowed by policy"]++
			case got.Policy != "":
				outcomes["denied by policy"]++
			case got.Allow:
				outcomes["no allow policy"]++
			default:
				outcomes["no allow matched"]++
			}
		}
	}
	t.Logf("outcomes: %v", outcomes)
	for _, k := range []string{"strict", "allowed by policy", "denied by policy", "no allow policy", "no allow matched"} {
		if outcomes[k] < 100 {
			t.Errorf("only %d decisions %q: the generator is too narrow", outcomes[k], k)
		}
	}
}

// TestCoverHoldsEveryBlock: a policy's source cover must contain every
// address any of its blocks contains, or Decide would skip a policy that
// matches.
func TestCoverHoldsEveryBlock(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	randPrefix := func() netip.Prefix {
		if rng.IntN(2) == 0 {
			a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(256)), byte(rng.IntN(256))})
			p, _ := a.Prefix(rng.IntN(33))
			return p
		}
		var b [16]byte
		b[0], b[1], b[15] = 0xfd, byte(rng.IntN(4)), byte(rng.IntN(256))
		p, _ := netip.AddrFrom16(b).Prefix(rng.IntN(129))
		return p
	}
	for range 2000 {
		var blocks []string
		for range 1 + rng.IntN(4) {
			blocks = append(blocks, randPrefix().String())
		}
		c := cover{}.addAll(blocks)
		for _, b := range blocks {
			p := netip.MustParsePrefix(b)
			if !c.contains(p.Addr()) || (p.Addr().Is4() && !c.contains(lastAddr(p))) {
				t.Fatalf("cover %+v of %v misses %v", c, blocks, p)
			}
		}
	}
	if c := (cover{}); c.contains(netip.MustParseAddr("10.0.0.1")) {
		t.Error("the empty cover holds an address")
	}
	if c := (cover{}).addAll(nil); !c.contains(netip.MustParseAddr("fd00::1")) {
		t.Error("an entry without blocks must accept any address")
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= uint32(1)<<(32-p.Bits()) - 1
	if p.Bits() == 0 {
		v = ^uint32(0)
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// breakOne introduces one error into one object of a valid set, the ways a
// user makes them: a field misspelt (so it is absent from the spec and
// reported as unknown), a bad value, a mistyped action or mode. It returns
// false when the set has nothing to break.
func (g *gen) breakOne(aps []AuthorizationPolicy, pas []PeerAuthentication) bool {
	n := len(aps) + len(pas)
	if n == 0 {
		return false
	}
	i := g.n(n)
	if i >= len(aps) {
		p := &pas[i-len(aps)]
		switch g.n(4) {
		case 0:
			p.Spec.MTLS = &MTLS{Mode: "STRCT"}
		case 1: // mtls misspelt
			p.Spec.MTLS = nil
			p.Problems = append(p.Problems, FieldError{Field: "mtl", Message: `unknown field "mtl"`})
		case 2: // portLevelMtls misspelt
			p.Spec.PortLevelMTLS = nil
			p.Problems = append(p.Problems, FieldError{Field: "portLevelMTLS", Message: `unknown field "portLevelMTLS"`})
		default: // selector misspelt
			p.Spec.Selector = nil
			p.Problems = append(p.Problems, FieldError{Field: "selector.matchLabel", Message: `unknown field "matchLabel"`})
		}
		return true
	}
	p := &aps[i]
	s := &p.Spec
	switch g.n(8) {
	case 0:
		s.Action = "ALOW"
	case 1: // action misspelt
		s.Action = ""
		p.Problems = append(p.Problems, FieldError{Field: "acton", Message: `unknown field "acton"`})
	case 2: // rules misspelt
		s.Rules = nil
		p.Problems = append(p.Problems, FieldError{Field: "rulez", Message: `unknown field "rulez"`})
	case 3: // selector misspelt
		s.Selector = nil
		p.Problems = append(p.Problems, FieldError{Field: "selector.matchLabel", Message: `unknown field "matchLabel"`})
	default:
		if len(s.Rules) == 0 {
			s.Action = "DENNY"
			return true
		}
		ri := g.n(len(s.Rules))
		r := &s.Rules[ri]
		rule := "rules[" + strconv.Itoa(ri) + "]"
		switch {
		case len(r.From) > 0 && g.n(2) == 0: // a source field misspelt: it vanishes
			j := g.n(len(r.From))
			src := &r.From[j].Source
			name := [...]string{"principals", "notPrincipals", "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts", "ipBlocks", "notIpBlocks"}[g.n(8)]
			dropSourceField(src, name)
			p.Problems = append(p.Problems, FieldError{Field: rule + ".from[" + strconv.Itoa(j) + "].source." + strings.ToLower(name), Message: "unknown field"})
		case len(r.To) > 0 && g.n(2) == 0: // a port misspelt
			j := g.n(len(r.To))
			r.To[j].Operation.Ports = []string{"http"}
		case len(r.When) > 0: // a condition's key misspelt
			r.When[g.n(len(r.When))].Key = "source.color"
		default: // a rule-level field misspelt
			r.From = nil
			p.Problems = append(p.Problems, FieldError{Field: rule + ".form", Message: `unknown field "form"`})
		}
	}
	return true
}

// FuzzFailClosed checks the promise of failclosed.go: adding an error to a
// valid policy set never turns a denied connection into an allowed one.
func FuzzFailClosed(f *testing.F) {
	f.Add([]byte{}, []byte{0})
	f.Add([]byte("\x01\x01\x00\x02\x03\x02\x01\x00\x00\x02\x01\x04\x00\x02\x02\x01"), []byte{0, 5, 1, 1, 0})
	f.Add([]byte("\x05\x02\x02\x01\x02\x03\x01\x02\x00\x01\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a"), []byte{1, 4, 0, 0, 0})
	f.Add([]byte("\x03\x00\x03\x02\x04\x02\x02\x02\x02\x02\x03\x05\x01\x02\x03\x04\x04\x01\x03\x02\x01\x00\x02"), []byte{2, 7, 1, 0, 3})
	f.Fuzz(func(t *testing.T, data, breaks []byte) {
		checkFailClosed(t, data, breaks)
	})
}

func checkFailClosed(t *testing.T, data, breaks []byte) {
	t.Helper()
	aps, pas := (&gen{b: data}).policies()
	_, ds := Compile(Config{}, aps, pas)
	aps, pas = accepted(aps, pas, ds)
	before, _ := Compile(Config{}, aps, pas)
	baps, bpas := cloneSet(aps, pas)
	if !(&gen{b: breaks}).breakOne(baps, bpas) {
		return
	}
	after, _ := Compile(Config{}, baps, bpas)
	for r := range genRequests() {
		if b, a := before.Decide(r), after.Decide(r); !b.Allow && a.Allow {
			js, _ := json.MarshalIndent(struct {
				Before, After []AuthorizationPolicy
				PAs           []PeerAuthentication
			}{aps, baps, bpas}, "", " ")
			t.Fatalf("an error widened access: %+v\nbefore %+v\nafter  %+v\n%s", r, b, a, js)
		}
	}
}

// genRequests yields every request the fuzz targets judge: each principal,
// namespace, label set, port and source address of the vocabulary.
func genRequests() iter.Seq[Request] {
	return func(yield func(Request) bool) {
		for _, pr := range reqPrincipals {
			for _, ns := range genNamespaces {
				for _, labels := range reqLabels {
					for _, port := range reqPorts {
						for _, sip := range reqSrcIPs {
							if !yield(Request{SourcePrincipal: pr, SourceIP: ip(sip), Namespace: ns, Labels: labels,
								DestinationIP: ip(workloadIP), DestinationPort: port}) {
								return
							}
						}
					}
				}
			}
		}
	}
}

// cloneSet deep-copies what breakOne may change.
func cloneSet(aps []AuthorizationPolicy, pas []PeerAuthentication) ([]AuthorizationPolicy, []PeerAuthentication) {
	var b []byte
	b, _ = json.Marshal(aps)
	var caps []AuthorizationPolicy
	_ = json.Unmarshal(b, &caps)
	b, _ = json.Marshal(pas)
	var cpas []PeerAuthentication
	_ = json.Unmarshal(b, &cpas)
	return caps, cpas
}

// TestFailClosedSeeded runs FuzzFailClosed's check on seeded pseudo-random
// inputs in every `go test`.
func TestFailClosedSeeded(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 600 {
		data := make([]byte, 64+rng.IntN(192))
		for i := range data {
			data[i] = byte(rng.UintN(256))
		}
		breaks := make([]byte, 8)
		for i := range breaks {
			breaks[i] = byte(rng.UintN(256))
		}
		checkFailClosed(t, data, breaks)
	}
}
