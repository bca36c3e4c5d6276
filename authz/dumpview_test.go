package authz

import (
	"net/netip"
	"reflect"
	"testing"
)

// TestPoliciesViewTranslated: a valid translated policy reads back as sent
// (one rule per group, one clause per Rules entry, one match per match).
func TestPoliciesViewTranslated(t *testing.T) {
	m1 := TranslatedMatch{
		Principals:          []StringMatch{exact("cluster.local/ns/bar/sa/a"), prefix("cluster.local/ns/baz/")},
		NotNamespaces:       []StringMatch{suffix("-test")},
		SourceIPs:           []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		NotDestinationPorts: []uint32{9090},
	}
	m2 := TranslatedMatch{ServiceAccounts: []ServiceAccountMatch{{Namespace: "bar", ServiceAccount: "b"}}}
	m3 := TranslatedMatch{DestinationPorts: []uint32{80, 443}, DestinationIPs: []netip.Prefix{netip.MustParsePrefix("10.1.2.3/32")}}
	tps := []TranslatedPolicy{
		tpol("foo", "allow", TranslatedScopeWorkloadSelector, "ALLOW", grp(anyOf(m1, m2), anyOf(m3))),
		tpol("istio-system", "istio_converted_static_strict", TranslatedScopeWorkloadSelector, "DENY",
			one(TranslatedMatch{NotPrincipals: []StringMatch{presence}})),
		tpol("foo", "nothing", TranslatedScopeNamespace, "ALLOW"),
		tpol("istio-system", "mesh", TranslatedScopeGlobal, "DENY", grp()),
	}
	e, ds := CompileTranslated(Config{}, tps)
	if len(ds) != 0 {
		t.Fatalf("diagnostics: %v", ds)
	}
	want := []PolicyView{
		{Name: "allow", Namespace: "foo", Scope: TranslatedScopeWorkloadSelector, Action: "ALLOW",
			Rules: [][][]TranslatedMatch{{{m1, m2}, {m3}}}},
		{Name: "nothing", Namespace: "foo", Scope: TranslatedScopeNamespace, Action: "ALLOW", Rules: [][][]TranslatedMatch{}},
		{Name: "istio_converted_static_strict", Namespace: "istio-system", Scope: TranslatedScopeWorkloadSelector, Action: "DENY",
			Rules: [][][]TranslatedMatch{{{{NotPrincipals: []StringMatch{presence}}}}}},
		{Name: "mesh", Namespace: "istio-system", Scope: TranslatedScopeGlobal, Action: "DENY", Rules: [][][]TranslatedMatch{{}}},
	}
	if got := e.Policies(); !reflect.DeepEqual(got, want) {
		t.Errorf("Policies() =\n%+v\nwant\n%+v", got, want)
	}
}

// TestPoliciesViewCompiled: an AuthorizationPolicy reads as enforced.
func TestPoliciesViewCompiled(t *testing.T) {
	aps, _ := load(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bar/sa/*"], notNamespaces: [test]}}, {source: {serviceAccounts: [x]}}]
    to: [{operation: {ports: ["8080"]}}]
    when: [{key: source.ip, values: ["10.0.0.0/8"]}]
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: all, namespace: istio-system}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: foo}
spec: {action: DENIED, rules: [{}]}
`)
	e, _ := Compile(Config{}, aps, nil)
	want := []PolicyView{
		// Read fail-closed as a whole: DENY everything.
		{Name: "broken", Namespace: "foo", Scope: TranslatedScopeNamespace, Action: "DENY", Rules: [][][]TranslatedMatch{{}}},
		// The ALLOW rule with HTTP attributes is dropped.
		{Name: "web", Namespace: "foo", Scope: TranslatedScopeWorkloadSelector, Action: "ALLOW", Rules: [][][]TranslatedMatch{{
			{{DestinationPorts: []uint32{8080}}},
			{
				{Principals: []StringMatch{prefix("cluster.local/ns/bar/sa/")}, NotNamespaces: []StringMatch{exact("test")}},
				{ServiceAccounts: []ServiceAccountMatch{{Namespace: "foo", ServiceAccount: "x"}}},
			},
			{{SourceIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}},
		}}},
		{Name: "all", Namespace: "istio-system", Scope: TranslatedScopeGlobal, Action: "DENY", Rules: [][][]TranslatedMatch{{}}},
	}
	if got := e.Policies(); !reflect.DeepEqual(got, want) {
		t.Errorf("Policies() =\n%+v\nwant\n%+v", got, want)
	}
}

func TestMTLSView(t *testing.T) {
	_, pas := load(t, `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns, namespace: open}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls: {"8080": {mode: PERMISSIVE}, "9090": {mode: STRICT}}
`)
	e, ds := Compile(Config{}, nil, pas)
	for _, d := range ds {
		if d.Severity == Error {
			t.Fatalf("diagnostic: %v", d)
		}
	}
	for _, tc := range []struct {
		ns, app string
		want    MTLSView
	}{
		{"bar", "x", MTLSView{Mode: "STRICT", Policy: "istio-system/mesh"}},
		{"open", "x", MTLSView{Mode: "PERMISSIVE", Policy: "open/ns"}},
		{"foo", "web", MTLSView{Mode: "STRICT", Policy: "istio-system/mesh", Ports: map[uint16]string{8080: "PERMISSIVE"}, PortPolicy: "foo/web"}},
	} {
		if got := e.MTLS(tc.ns, map[string]string{"app": tc.app}); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("MTLS(%s, app=%s) = %+v, want %+v", tc.ns, tc.app, got, tc.want)
		}
	}
	if got := (&Engine{translated: true}).MTLS("foo", nil); !reflect.DeepEqual(got, MTLSView{}) {
		t.Errorf("translated engine: MTLS = %+v, want zero", got)
	}
}
