package inventory

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/authz"
)

// failClosedBase is the policy set every row of TestPolicyErrorsFailClosed
// breaks in one place. In namespace foo: httpbin (app=web) admits front on
// 8080 (rules[0]) and anyone from namespace ops (rules[1]); evil is denied
// everywhere in foo; foo is STRICT except port 9090 of app=other.
const failClosedBase = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: foo}
spec:
  selector:
    matchLabels: {app: web}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/front"]}}]
    to: [{operation: {ports: ["8080"]}}]
  - from: [{source: {namespaces: [ops], notIpBlocks: ["198.19.9.0/24"]}}]
    when: [{key: destination.port, values: ["8080"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [evil], ipBlocks: ["198.18.0.0/15"]}}]
    to: [{operation: {ports: ["8080"]}}]
    when: [{key: source.ip, values: ["198.18.0.0/16"]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: foo-strict, namespace: foo}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: other-ports, namespace: foo}
spec:
  selector:
    matchLabels: {app: other}
  portLevelMtls:
    "9090": {mode: PERMISSIVE}
`

// Callers of TestPolicyErrorsFailClosed.
var (
	front      = call("cluster.local/ns/foo/sa/front", "web", 8080)
	fromOps    = call("cluster.local/ns/ops/sa/x", "web", 8080)
	fromEvil   = call("cluster.local/ns/evil/sa/x", "web", 8080)
	fromBar    = call("cluster.local/ns/bar/sa/x", "web", 8080)
	evilOther  = call("cluster.local/ns/evil/sa/x", "other", 8080)
	plainOther = call("", "other", 8080)
	plain9090  = call("", "other", 9090)
	frontOther = call("cluster.local/ns/foo/sa/front", "other", 8080)
	elsewhere  = func() authz.Request {
		r := call("cluster.local/ns/evil/sa/x", "web", 8080)
		r.Namespace = "qux"
		return r
	}()
)

func call(principal, app string, port uint16) authz.Request {
	return authz.Request{SourcePrincipal: principal, SourceIP: netip.MustParseAddr("198.18.3.4"), Namespace: "foo",
		Labels: map[string]string{"app": app}, DestinationIP: netip.MustParseAddr("198.18.1.2"), DestinationPort: port}
}

// TestPolicyErrorsFailClosed breaks every field of both kinds, one at a
// time, as a user could write it (misspelt, mistyped, duplicated, a bad
// value), and checks through the whole path (YAML, decoder, Compile,
// Decide) that every caller the base set denies stays denied, and that the
// callers the fail-closed reading spares stay allowed.
func TestPolicyErrorsFailClosed(t *testing.T) {
	// Denied by the base set; no error may let them in.
	denied := map[string]authz.Request{"evil": fromEvil, "bar": fromBar, "plaintext:8080": plainOther, "evil to other": evilOther}
	for _, tc := range []struct {
		name, old, new string
		field          string                   // the Diagnostic's field
		allowed        map[string]authz.Request // still allowed
	}{
		// AuthorizationPolicy: the selector.
		{"selector wildcard", "matchLabels: {app: web}", `matchLabels: {app: "web*"}`, "selector.matchLabels[app]",
			map[string]authz.Request{"elsewhere": elsewhere}},
		{"selector misspelt", "matchLabels: {app: web}", `matchLabel: {app: web}`, "selector.matchLabel",
			map[string]authz.Request{"elsewhere": elsewhere}},
		{"matchLabels not a map", "matchLabels: {app: web}", `matchLabels: [app]`, "selector.matchLabels",
			map[string]authz.Request{"elsewhere": elsewhere}},
		// The action, spec-level fields, the rules list.
		{"action misspelt value", "action: ALLOW", "action: ALOW", "action",
			map[string]authz.Request{"front to other": frontOther, "elsewhere": elsewhere}},
		{"action mistyped", "action: ALLOW", "action: [ALLOW]", "action",
			map[string]authz.Request{"front to other": frontOther, "elsewhere": elsewhere}},
		{"DENY action field misspelt", "action: DENY", "acton: DENY", "acton",
			map[string]authz.Request{"elsewhere": elsewhere}},
		{"unknown spec field", "action: ALLOW", "action: ALLOW\n  rulez: []", "rulez",
			map[string]authz.Request{"front to other": frontOther, "elsewhere": elsewhere}},
		{"rules not a list", "action: DENY\n  rules:", "action: DENY\n  rules: {}\n  rulez:", "rules",
			map[string]authz.Request{"elsewhere": elsewhere}},
		{"provider without CUSTOM", "action: ALLOW", "action: ALLOW\n  provider: {name: opa}", "provider",
			map[string]authz.Request{"front to other": frontOther, "elsewhere": elsewhere}},
		{"targetRefs beside selector", "action: ALLOW", "action: ALLOW\n  targetRefs: [{kind: Service, name: web}]", "targetRefs",
			map[string]authz.Request{"front to other": frontOther, "elsewhere": elsewhere}},
		{"targetRef mistyped", "action: ALLOW", "action: ALLOW\n  targetRef: waypoint", "targetRef",
			map[string]authz.Request{"front to other": frontOther, "elsewhere": elsewhere}},
		{"unknown top-level field", "kind: AuthorizationPolicy\nmetadata: {name: deny-evil", "kind: AuthorizationPolicy\nsepc: {}\nmetadata: {name: deny-evil", "sepc",
			map[string]authz.Request{"elsewhere": elsewhere}},
		{"bad creationTimestamp", "{name: deny-evil, namespace: foo}", "{name: deny-evil, namespace: foo, creationTimestamp: yesterday}", "metadata.creationTimestamp",
			map[string]authz.Request{"elsewhere": elsewhere}},
		// ALLOW rules: the broken rule matches nothing, the other still applies.
		{"principals misspelt", `principals: ["cluster.local/ns/foo/sa/front"]`, `principal: ["cluster.local/ns/foo/sa/front"]`, "rules[0].from[0].source.principal",
			map[string]authz.Request{"ops": fromOps}},
		{"principal with spiffe://", `principals: ["cluster.local/ns/foo/sa/front"]`, `principals: ["spiffe://cluster.local/ns/foo/sa/front"]`, "rules[0].from[0].source.principals[0]",
			map[string]authz.Request{"ops": fromOps}},
		{"principals not a list", `principals: ["cluster.local/ns/foo/sa/front"]`, `principals: "cluster.local/ns/foo/sa/front"`, "rules[0].from[0].source.principals",
			map[string]authz.Request{"ops": fromOps}},
		{"notPrincipals malformed", `principals: ["cluster.local/ns/foo/sa/front"]`, `principals: ["cluster.local/ns/foo/sa/front"], notPrincipals: ["front"]`, "rules[0].from[0].source.notPrincipals[0]",
			map[string]authz.Request{"ops": fromOps}},
		{"requestPrincipals empty", `principals: ["cluster.local/ns/foo/sa/front"]`, `principals: ["cluster.local/ns/foo/sa/front"], requestPrincipals: [""]`, "rules[0].from[0].source.requestPrincipals[0]",
			map[string]authz.Request{"ops": fromOps}},
		{"notRequestPrincipals empty", `principals: ["cluster.local/ns/foo/sa/front"]`, `principals: ["cluster.local/ns/foo/sa/front"], notRequestPrincipals: [""]`, "rules[0].from[0].source.notRequestPrincipals[0]",
			map[string]authz.Request{"ops": fromOps}},
		{"namespaces empty value", "namespaces: [ops]", `namespaces: [""]`, "rules[1].from[0].source.namespaces[0]",
			map[string]authz.Request{"front": front}},
		{"namespaces duplicated", "namespaces: [ops]", `namespaces: [ops], namespaces: [bar]`, "rules[1].from[0].source.namespaces",
			map[string]authz.Request{"front": front}},
		{"notNamespaces empty value", "namespaces: [ops]", `namespaces: [ops], notNamespaces: [""]`, "rules[1].from[0].source.notNamespaces[0]",
			map[string]authz.Request{"front": front}},
		{"serviceAccounts malformed", "namespaces: [ops]", `serviceAccounts: ["a/b/c"]`, "rules[1].from[0].source.serviceAccounts[0]",
			map[string]authz.Request{"front": front}},
		{"notServiceAccounts wildcard", "namespaces: [ops]", `namespaces: [ops], notServiceAccounts: ["*"]`, "rules[1].from[0].source",
			map[string]authz.Request{"front": front}},
		{"ipBlocks bad CIDR", "namespaces: [ops]", `namespaces: [ops], ipBlocks: ["198.18.0.0/33"]`, "rules[1].from[0].source.ipBlocks[0]",
			map[string]authz.Request{"front": front}},
		{"ipBlocks case-folded twin", `notIpBlocks: ["198.19.9.0/24"]`, `notIpBlocks: ["198.19.9.0/24"], ipblocks: ["0.0.0.0/0"]`, "rules[1].from[0].source.ipblocks",
			map[string]authz.Request{"front": front}},
		{"notIpBlocks bad", `notIpBlocks: ["198.19.9.0/24"]`, `notIpBlocks: ["198.19.9.0.0/24"]`, "rules[1].from[0].source.notIpBlocks[0]",
			map[string]authz.Request{"front": front}},
		{"remoteIpBlocks bad", "namespaces: [ops]", `namespaces: [ops], remoteIpBlocks: ["nope"]`, "rules[1].from[0].source.remoteIpBlocks[0]",
			map[string]authz.Request{"front": front}},
		{"notRemoteIpBlocks bad", "namespaces: [ops]", `namespaces: [ops], notRemoteIpBlocks: ["nope"]`, "rules[1].from[0].source.notRemoteIpBlocks[0]",
			map[string]authz.Request{"front": front}},
		{"trustDomains bad", "namespaces: [ops]", `namespaces: [ops], trustDomains: ["a/b"]`, "rules[1].from[0].source.trustDomains[0]",
			map[string]authz.Request{"front": front}},
		{"notTrustDomains bad", "namespaces: [ops]", `namespaces: [ops], notTrustDomains: [""]`, "rules[1].from[0].source.notTrustDomains[0]",
			map[string]authz.Request{"front": front}},
		{"source misspelt", "- from: [{source: {namespaces: [ops]", "- from: [{sources: {namespaces: [ops]", "rules[1].from[0].sources",
			map[string]authz.Request{"front": front}},
		{"from not a list", "- from: [{source: {namespaces: [ops], notIpBlocks: [\"198.19.9.0/24\"]}}]", "- from: {source: {namespaces: [ops]}}", "rules[1].from",
			map[string]authz.Request{"front": front}},
		{"ports named", `ports: ["8080"]}}]
  - from`, `ports: ["http"]}}]
  - from`, "rules[0].to[0].operation.ports[0]", map[string]authz.Request{"ops": fromOps}},
		{"ports as numbers", `ports: ["8080"]}}]
  - from`, `ports: [8080]}}]
  - from`, "rules[0].to[0].operation.ports[0]", map[string]authz.Request{"ops": fromOps}},
		{"notPorts out of range", `ports: ["8080"]}}]
  - from`, `ports: ["8080"], notPorts: ["70000"]}}]
  - from`, "rules[0].to[0].operation.notPorts[0]", map[string]authz.Request{"ops": fromOps}},
		{"hosts empty", `ports: ["8080"]}}]
  - from`, `ports: ["8080"], hosts: [""]}}]
  - from`, "rules[0].to[0].operation.hosts[0]", map[string]authz.Request{"ops": fromOps}},
		{"notHosts empty", `ports: ["8080"]}}]
  - from`, `ports: ["8080"], notHosts: [""]}}]
  - from`, "rules[0].to[0].operation.notHosts[0]", map[string]authz.Request{"ops": fromOps}},
		{"methods empty", `ports: ["8080"]}}]
  - from`, `ports: ["8080"], methods: [""]}}]
  - from`, "rules[0].to[0].operation.methods[0]", map[string]authz.Request{"ops": fromOps}},
		{"notMethods empty", `ports: ["8080"]}}]
  - from`, `ports: ["8080"], notMethods: [""]}}]
  - from`, "rules[0].to[0].operation.notMethods[0]", map[string]authz.Request{"ops": fromOps}},
		{"paths empty", `ports: ["8080"]}}]
  - from`, `ports: ["8080"], paths: [""]}}]
  - from`, "rules[0].to[0].operation.paths[0]", map[string]authz.Request{"ops": fromOps}},
		{"notPaths empty", `ports: ["8080"]}}]
  - from`, `ports: ["8080"], notPaths: [""]}}]
  - from`, "rules[0].to[0].operation.notPaths[0]", map[string]authz.Request{"ops": fromOps}},
		{"operation misspelt", `to: [{operation: {ports: ["8080"]}}]
  - from`, `to: [{operations: {ports: ["8080"]}}]
  - from`, "rules[0].to[0].operations", map[string]authz.Request{"ops": fromOps}},
		{"when key unknown", "key: destination.port", "key: destination.prot", "rules[1].when[0].key",
			map[string]authz.Request{"front": front}},
		{"when key missing", "key: destination.port, ", "", "rules[1].when[0].key",
			map[string]authz.Request{"front": front}},
		{"when values bad", `values: ["8080"]}]
---`, `values: ["eighty"]}]
---`, "rules[1].when[0].values[0]", map[string]authz.Request{"front": front}},
		{"when notValues bad", `values: ["8080"]}]
---`, `values: ["8080"], notValues: ["-1"]}]
---`, "rules[1].when[0].notValues[0]", map[string]authz.Request{"front": front}},
		{"when field misspelt", `values: ["8080"]}]
---`, `value: ["8080"]}]
---`, "rules[1].when[0].value", map[string]authz.Request{"front": front}},
		{"rule field misspelt", "- from: [{source: {namespaces: [ops]", "- form: [{source: {namespaces: [ops]", "rules[1].form",
			map[string]authz.Request{"front": front}},
		// DENY rules: the broken part reads as matching; the rule still denies evil.
		{"DENY: namespaces misspelt", "namespaces: [evil]", "namespace: [evil]", "rules[0].from[0].source.namespace",
			map[string]authz.Request{"elsewhere": elsewhere}},
		{"DENY: ipBlocks bad", `ipBlocks: ["198.18.0.0/15"]`, `ipBlocks: ["198.18.0.0/99"]`, "rules[0].from[0].source.ipBlocks[0]",
			map[string]authz.Request{"front": front, "ops": fromOps, "front to other": frontOther}},
		{"DENY: ipBlocks case-folded twin", `ipBlocks: ["198.18.0.0/15"]`, `ipBlocks: ["198.18.0.0/15"], IPBlocks: ["203.0.113.0/24"]`, "rules[0].from[0].source.IPBlocks",
			map[string]authz.Request{"front": front, "ops": fromOps}},
		{"DENY: ports bad", `ports: ["8080"]}}]
    when`, `ports: ["eighty"]}}]
    when`, "rules[0].to[0].operation.ports[0]", map[string]authz.Request{"front": front, "ops": fromOps}},
		{"DENY: when key unknown", "key: source.ip", "key: source.color", "rules[0].when[0].key",
			map[string]authz.Request{"front": front, "ops": fromOps}},
		{"DENY: when value bad", `values: ["198.18.0.0/16"]`, `values: ["198.18.0.0/16", "x"]`, "rules[0].when[0].values[1]",
			map[string]authz.Request{"front": front, "ops": fromOps}},
		{"DENY: the rule not an object", `  - from: [{source: {namespaces: [evil]`, `  - nonsense
  - from: [{source: {namespaces: [evil]`, "rules[0]", map[string]authz.Request{"elsewhere": elsewhere}},
		// PeerAuthentication: read as STRICT for its scope.
		{"mode misspelt", "mtls: {mode: STRICT}", "mtls: {mode: STRCT}", "mtls.mode",
			map[string]authz.Request{"plaintext:9090": plain9090, "front": front}},
		{"mtls field misspelt", "mtls: {mode: STRICT}", "mtls: {mod: PERMISSIVE}", "mtls.mod",
			map[string]authz.Request{"plaintext:9090": plain9090, "front": front}},
		{"mtls duplicated", "mtls: {mode: STRICT}", "mtls: {mode: STRICT}\n  mtls: {mode: PERMISSIVE}", "mtls",
			map[string]authz.Request{"plaintext:9090": plain9090, "front": front}},
		{"portLevelMtls misspelt", "portLevelMtls:", "portLevelMTLS:", "portLevelMTLS",
			map[string]authz.Request{"front": front, "front to other": frontOther}},
		{"portLevelMtls bad port", `"9090": {mode: PERMISSIVE}`, `"90x0": {mode: PERMISSIVE}`, "portLevelMtls[90x0]",
			map[string]authz.Request{"front": front, "front to other": frontOther}},
		{"portLevelMtls bad mode", `"9090": {mode: PERMISSIVE}`, `"9090": {mode: permissive}`, "portLevelMtls[9090].mode",
			map[string]authz.Request{"front": front, "front to other": frontOther}},
		{"PeerAuthentication selector wildcard", "matchLabels: {app: other}", `matchLabels: {app: "oth*"}`, "selector.matchLabels[app]",
			map[string]authz.Request{"front": front, "front to other": frontOther}},
		{"PeerAuthentication unknown field", "mtls: {mode: STRICT}", "mtls: {mode: STRICT}\n  mTLS: {mode: DISABLE}", "mTLS",
			map[string]authz.Request{"plaintext:9090": plain9090, "front": front}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(failClosedBase, tc.old) {
				t.Fatalf("base has no %q", tc.old)
			}
			manifest := strings.Replace(failClosedBase, tc.old, tc.new, 1)
			r := parse("policies.yaml", []byte(manifest))
			if len(r.objects.aps) != 2 || len(r.objects.pas) != 2 {
				t.Fatalf("objects left out: %d AuthorizationPolicies, %d PeerAuthentications; errors %v", len(r.objects.aps), len(r.objects.pas), r.errs)
			}
			e, ds := authz.Compile(authz.Config{}, r.objects.aps, r.objects.pas)
			found := false
			for _, d := range ds {
				if d.Severity == authz.Error && d.Field == tc.field {
					found = true
					if d.Effect == "" {
						t.Errorf("error without an effect: %v", d)
					}
				}
			}
			if !found {
				t.Errorf("no error on %s; diagnostics:", tc.field)
				for _, d := range ds {
					t.Errorf("  %v", d)
				}
			}
			for who, req := range denied {
				if d := e.Decide(req); d.Allow {
					t.Errorf("%s: allowed (%s), must stay denied", who, d.Reason)
				}
			}
			for who, req := range tc.allowed {
				if d := e.Decide(req); !d.Allow {
					t.Errorf("%s: denied (%s), must stay allowed", who, d.Reason)
				}
			}
		})
	}
}

// TestPolicyBaseDecisions pins what the unbroken base set decides, so the
// rows above start from the intended state.
func TestPolicyBaseDecisions(t *testing.T) {
	r := parse("policies.yaml", []byte(failClosedBase))
	if len(r.errs) > 0 {
		t.Fatal(r.errs)
	}
	e, ds := authz.Compile(authz.Config{}, r.objects.aps, r.objects.pas)
	if len(ds) > 0 {
		t.Fatal(ds)
	}
	for who, want := range map[string]struct {
		req   authz.Request
		allow bool
	}{
		"front": {front, true}, "ops": {fromOps, true}, "evil": {fromEvil, false}, "bar": {fromBar, false},
		"plaintext:8080": {plainOther, false}, "plaintext:9090": {plain9090, true}, "front to other": {frontOther, true},
		"evil to other": {evilOther, false}, "elsewhere": {elsewhere, true},
	} {
		if d := e.Decide(want.req); d.Allow != want.allow {
			t.Errorf("%s: %+v, want allow=%v", who, d, want.allow)
		}
	}
}
