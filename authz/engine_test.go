package authz

import (
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// Fixtures from Istio's documentation (the AuthorizationPolicy and
// PeerAuthentication reference pages on istio.io).
const (
	// F1: ambient getting started, "Enforce Layer 4 authorization policy".
	fixtureF1 = `
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-viewer
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/bookinfo-gateway-istio
`
	// F2: the original ambient getting started, "Secure Application Access".
	fixtureF2 = `
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
 name: productpage-viewer
 namespace: default
spec:
 selector:
   matchLabels:
     app: productpage
 action: ALLOW
 rules:
 - from:
   - source:
       principals: ["cluster.local/ns/default/sa/sleep", "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"]
`
	// F3: the L4 policy of the ambient L4 guide, then the same with an L7
	// attribute (applied with kubectl -n ambient-demo).
	fixtureF3 = `
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
 name: allow-sleep-to-httpbin
 namespace: ambient-demo
spec:
 selector:
   matchLabels:
     app: httpbin
 action: ALLOW
 rules:
 - from:
   - source:
       principals:
       - cluster.local/ns/ambient-demo/sa/sleep
`
	fixtureF3L7 = `
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
 name: allow-sleep-to-httpbin
 namespace: ambient-demo
spec:
 selector:
   matchLabels:
     app: httpbin
 action: ALLOW
 rules:
 - from:
   - source:
       principals:
       - cluster.local/ns/ambient-demo/sa/sleep
   to:
   - operation:
       methods: ["GET"]
`
	// F4: the TCP task's policy, and its L7 variants.
	fixtureF4 = `
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: ALLOW
  rules:
  - to:
    - operation:
        ports: ["9000", "9001"]
`
	fixtureF4AllowL7 = `
---
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: foo}
spec:
  selector: {matchLabels: {app: tcp-echo}}
  action: ALLOW
  rules:
  - to:
    - operation: {methods: ["GET"], ports: ["9000"]}
`
	fixtureF4DenyL7 = `
---
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: foo}
spec:
  selector: {matchLabels: {app: tcp-echo}}
  action: DENY
  rules:
  - to:
    - operation: {methods: ["GET"], ports: ["9000"]}
`
	fixtureF4DenyMethodsOnly = `
---
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: foo}
spec:
  selector: {matchLabels: {app: tcp-echo}}
  action: DENY
  rules:
  - to:
    - operation: {methods: ["GET"]}
`
	// F5: the API reference's examples.
	fixtureF5AllowNothing = `
---
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}
`
	fixtureF5AllowAll = `
---
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  rules:
  - {}
`
	fixtureF5MeshAllowNothingV1 = `
---
kind: AuthorizationPolicy
metadata: {name: allow-nothing-v1, namespace: istio-system}
spec:
  selector: {matchLabels: {version: v1}}
`
	fixtureF5StrictFoo = `
---
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec:
  mtls: {mode: STRICT}
`
	fixtureF5Finance = `
---
kind: PeerAuthentication
metadata: {name: finance, namespace: foo}
spec:
  selector: {matchLabels: {app: finance}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
`
	meshStrict = `
---
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
`
)

// Principals used throughout.
const (
	pSleep   = "cluster.local/ns/default/sa/sleep"
	pNoSleep = "cluster.local/ns/default/sa/notsleep"
	pGateway = "cluster.local/ns/default/sa/bookinfo-gateway-istio"
	pIngress = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
	pFooA    = "cluster.local/ns/foo/sa/a"
	pBarA    = "cluster.local/ns/bar/sa/a"
	pBarAdm  = "cluster.local/ns/bar/sa/admin"
)

type scenario struct {
	name     string
	cfg      Config
	policies string
	req      Request
	want     Decision
	// diags lists substrings, one per expected Diagnostic (in order);
	// nil means Compile must report nothing.
	diags []string
}

func ap(ns, name, spec string) string {
	return "\n---\nkind: AuthorizationPolicy\nmetadata: {name: " + name + ", namespace: " + ns + "}\nspec:\n" + indent(spec) + "\n"
}

func pa(ns, name, created, spec string) string {
	ts := ""
	if created != "" {
		ts = ", creationTimestamp: \"" + created + "\""
	}
	return "\n---\nkind: PeerAuthentication\nmetadata: {name: " + name + ", namespace: " + ns + ts + "}\nspec:\n" + indent(spec) + "\n"
}

func indent(s string) string {
	s = strings.Trim(s, "\n")
	lines := strings.Split(s, "\n")
	// Remove the common tab indentation of raw strings in the table.
	for i, l := range lines {
		lines[i] = "  " + strings.TrimLeft(l, "\t")
	}
	return strings.Join(lines, "\n")
}

var scenarios = []scenario{
	// Defaults and the ALLOW/DENY order.
	{name: "no policy allows", req: rq(pSleep, "foo", "x", 80), want: allowDefault},
	{name: "no policy allows plaintext", req: rq("", "foo", "x", 80), want: allowDefault},
	{name: "F5 allow-nothing denies in its namespace", policies: fixtureF5AllowNothing,
		req: rq(pSleep, "foo", "x", 80), want: denyNoMatch},
	{name: "F5 allow-nothing does not reach another namespace", policies: fixtureF5AllowNothing,
		req: rq(pSleep, "bar", "x", 80), want: allowDefault},
	{name: "F5 allow-all allows", policies: fixtureF5AllowAll,
		req: rq("", "foo", "x", 80), want: allowBy("foo/allow-all")},
	{name: "allow-all with allow-nothing allows", policies: fixtureF5AllowAll + "\n---\n" + fixtureF5AllowNothing,
		req: rq(pSleep, "foo", "x", 80), want: allowBy("foo/allow-all")},
	{name: "deny-all denies", policies: ap("foo", "deny-all", "action: DENY\nrules: [{}]"),
		req: rq(pSleep, "foo", "x", 80), want: denyBy("foo/deny-all")},
	{name: "DENY beats a matching ALLOW", policies: fixtureF5AllowAll + ap("foo", "deny-9000", `
		action: DENY
		rules: [{to: [{operation: {ports: ["9000"]}}]}]`),
		req: rq(pSleep, "foo", "x", 9000), want: denyBy("foo/deny-9000")},
	{name: "non-matching DENY falls through to ALLOW", policies: fixtureF5AllowAll + ap("foo", "deny-9000", `
		action: DENY
		rules: [{to: [{operation: {ports: ["9000"]}}]}]`),
		req: rq(pSleep, "foo", "x", 9001), want: allowBy("foo/allow-all")},
	{name: "DENY alone does not make ALLOW required", policies: ap("foo", "deny-9000", `
		action: DENY
		rules: [{to: [{operation: {ports: ["9000"]}}]}]`),
		req: rq(pSleep, "foo", "x", 80), want: allowDefault},
	{name: "two matching DENY: first by namespace/name decides", policies: ap("foo", "z-deny", "action: DENY\nrules: [{}]") +
		ap("istio-system", "mesh-deny", "action: DENY\nrules: [{}]") + ap("foo", "a-deny", "action: DENY\nrules: [{}]"),
		req: rq(pSleep, "foo", "x", 80), want: denyBy("foo/a-deny")},

	// Scope: mesh, namespace, selector.
	{name: "mesh-wide allow-nothing applies in every namespace", policies: ap("istio-system", "allow-nothing", "{}"),
		req: rq(pSleep, "bar", "x", 80), want: denyNoMatch},
	{name: "mesh-wide ALLOW matches in another namespace", policies: ap("istio-system", "allow-sleep", `
		rules: [{from: [{source: {principals: ["`+pSleep+`"]}}]}]`),
		req: rq(pSleep, "bar", "x", 80), want: allowBy("istio-system/allow-sleep")},
	{name: "root namespace is configurable", cfg: Config{RootNamespace: "mesh-root"}, policies: ap("mesh-root", "allow-nothing", "{}"),
		req: rq(pSleep, "bar", "x", 80), want: denyNoMatch},
	{name: "F5 mesh selector allow-nothing hits version v1", policies: fixtureF5MeshAllowNothingV1,
		req: rq(pSleep, "bar", "x", 80).label("version", "v1"), want: denyNoMatch},
	{name: "F5 mesh selector allow-nothing spares version v2", policies: fixtureF5MeshAllowNothingV1,
		req: rq(pSleep, "bar", "x", 80).label("version", "v2"), want: allowDefault},
	{name: "selector policy spares other workloads of its namespace", policies: fixtureF1,
		req: rq(pSleep, "default", "reviews", 9080), want: allowDefault},
	{name: "selector policy in another namespace does not apply", policies: fixtureF1,
		req: rq(pSleep, "other", "productpage", 9080), want: allowDefault},
	{name: "selector needs every label", policies: ap("foo", "v1-only", `
		selector: {matchLabels: {app: x, version: v1}}`),
		req: rq(pSleep, "foo", "x", 80), want: allowDefault},
	{name: "selector with every label selects", policies: ap("foo", "v1-only", `
		selector: {matchLabels: {app: x, version: v1}}`),
		req: rq(pSleep, "foo", "x", 80).label("version", "v1"), want: denyNoMatch},
	{name: "empty selector attaches to nothing", policies: ap("foo", "empty-sel", "selector: {}"),
		req: rq(pSleep, "foo", "x", 80), want: allowDefault, diags: []string{"selector without labels"}},

	// Fixtures F1, F2, F3 (principals).
	{name: "F1 gateway allowed", policies: fixtureF1,
		req: rq(pGateway, "default", "productpage", 9080), want: allowBy("default/productpage-viewer")},
	{name: "F1 curl denied", policies: fixtureF1,
		req: rq("cluster.local/ns/default/sa/curl", "default", "productpage", 9080), want: denyNoMatch},
	{name: "F1 plaintext denied", policies: fixtureF1,
		req: rq("", "default", "productpage", 9080), want: denyNoMatch},
	{name: "F2 sleep allowed", policies: fixtureF2,
		req: rq(pSleep, "default", "productpage", 9080), want: allowBy("default/productpage-viewer")},
	{name: "F2 ingress gateway allowed", policies: fixtureF2,
		req: rq(pIngress, "default", "productpage", 9080), want: allowBy("default/productpage-viewer")},
	{name: "F2 notsleep denied", policies: fixtureF2,
		req: rq(pNoSleep, "default", "productpage", 9080), want: denyNoMatch},
	{name: "F3 sleep allowed", policies: fixtureF3,
		req: rq("cluster.local/ns/ambient-demo/sa/sleep", "ambient-demo", "httpbin", 8000), want: allowBy("ambient-demo/allow-sleep-to-httpbin")},
	{name: "F3 with methods denies sleep (ALLOW rule with L7 dropped)", policies: fixtureF3L7,
		req: rq("cluster.local/ns/ambient-demo/sa/sleep", "ambient-demo", "httpbin", 8000), want: denyNoMatch,
		diags: []string{"rules[0]: warning: uses HTTP attributes (methods)"}},
	{name: "principal spiffe:// prefix in the request is accepted", policies: fixtureF1,
		req: rq("spiffe://"+pGateway, "default", "productpage", 9080), want: allowBy("default/productpage-viewer")},
	{name: "principal prefix pattern", policies: ap("foo", "from-bar", `rules: [{from: [{source: {principals: ["cluster.local/ns/bar/*"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/from-bar")},
	{name: "principal prefix pattern misses", policies: ap("foo", "from-bar", `rules: [{from: [{source: {principals: ["cluster.local/ns/bar/*"]}}]}]`),
		req: rq(pFooA, "foo", "x", 80), want: denyNoMatch},
	{name: "principal suffix pattern", policies: ap("foo", "admins", `rules: [{from: [{source: {principals: ["*/sa/admin"]}}]}]`),
		req: rq(pBarAdm, "foo", "x", 80), want: allowBy("foo/admins")},
	{name: "principal * matches any identity", policies: ap("foo", "any-id", `rules: [{from: [{source: {principals: ["*"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/any-id")},
	{name: "principal * does not match plaintext", policies: ap("foo", "any-id", `rules: [{from: [{source: {principals: ["*"]}}]}]`),
		req: rq("", "foo", "x", 80), want: denyNoMatch},
	{name: "notPrincipals * DENY denies plaintext", policies: ap("foo", "deny-plain", `
		action: DENY
		rules: [{from: [{source: {notPrincipals: ["*"]}}]}]`),
		req: rq("", "foo", "x", 80), want: denyBy("foo/deny-plain")},
	{name: "notPrincipals * DENY spares mTLS", policies: ap("foo", "deny-plain", `
		action: DENY
		rules: [{from: [{source: {notPrincipals: ["*"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowDefault},
	{name: "notPrincipals exact: other identity matches", policies: ap("foo", "not-a", `rules: [{from: [{source: {notPrincipals: ["`+pBarA+`"]}}]}]`),
		req: rq(pFooA, "foo", "x", 80), want: allowBy("foo/not-a")},
	{name: "notPrincipals exact: listed identity does not match", policies: ap("foo", "not-a", `rules: [{from: [{source: {notPrincipals: ["`+pBarA+`"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch},
	{name: "principals values OR", policies: ap("foo", "two", `rules: [{from: [{source: {principals: ["`+pFooA+`", "`+pBarA+`"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/two")},

	// Namespaces and service accounts come from the identity.
	{name: "namespaces exact", policies: ap("foo", "from-bar", `rules: [{from: [{source: {namespaces: ["bar"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/from-bar")},
	{name: "namespaces other namespace", policies: ap("foo", "from-bar", `rules: [{from: [{source: {namespaces: ["bar"]}}]}]`),
		req: rq(pFooA, "foo", "x", 80), want: denyNoMatch},
	{name: "namespaces never match plaintext", policies: ap("foo", "from-bar", `rules: [{from: [{source: {namespaces: ["*"]}}]}]`),
		req: rq("", "foo", "x", 80), want: denyNoMatch},
	{name: "notNamespaces match plaintext", policies: ap("foo", "not-bar", `rules: [{from: [{source: {notNamespaces: ["bar"]}}]}]`),
		req: rq("", "foo", "x", 80), want: allowBy("foo/not-bar")},
	{name: "namespaces prefix pattern", policies: ap("foo", "teams", `rules: [{from: [{source: {namespaces: ["ba*"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/teams")},
	{name: "serviceAccounts bare name means the policy namespace", policies: ap("foo", "sa-a", `rules: [{from: [{source: {serviceAccounts: ["a"]}}]}]`),
		req: rq(pFooA, "foo", "x", 80), want: allowBy("foo/sa-a")},
	{name: "serviceAccounts bare name does not match another namespace", policies: ap("foo", "sa-a", `rules: [{from: [{source: {serviceAccounts: ["a"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch},
	{name: "serviceAccounts ns/sa", policies: ap("foo", "sa-bar-a", `rules: [{from: [{source: {serviceAccounts: ["bar/a"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/sa-bar-a")},
	{name: "serviceAccounts ignore the trust domain", policies: ap("foo", "sa-bar-a", `rules: [{from: [{source: {serviceAccounts: ["bar/a"]}}]}]`),
		req: rq("other.td/ns/bar/sa/a", "foo", "x", 80), want: allowBy("foo/sa-bar-a")},
	{name: "notServiceAccounts match plaintext", policies: ap("foo", "not-sa", `rules: [{from: [{source: {notServiceAccounts: ["bar/a"]}}]}]`),
		req: rq("", "foo", "x", 80), want: allowBy("foo/not-sa")},
	{name: "mesh policy bare serviceAccount is the root namespace", policies: ap("istio-system", "sa-gw", `rules: [{from: [{source: {serviceAccounts: ["istio-ingressgateway-service-account"]}}]}]`),
		req: rq(pIngress, "foo", "x", 80), want: allowBy("istio-system/sa-gw")},

	// ipBlocks, ports, destination.
	{name: "ipBlocks CIDR", policies: ap("foo", "clients", `rules: [{from: [{source: {ipBlocks: ["10.1.0.0/16"]}}]}]`),
		req: rq("", "foo", "x", 80), want: allowBy("foo/clients")},
	{name: "ipBlocks CIDR misses", policies: ap("foo", "clients", `rules: [{from: [{source: {ipBlocks: ["10.9.0.0/16"]}}]}]`),
		req: rq("", "foo", "x", 80), want: denyNoMatch},
	{name: "ipBlocks single IP", policies: ap("foo", "one", `rules: [{from: [{source: {ipBlocks: ["10.1.0.5"]}}]}]`),
		req: rq("", "foo", "x", 80), want: allowBy("foo/one")},
	{name: "notIpBlocks excludes", policies: ap("foo", "not-one", `rules: [{from: [{source: {notIpBlocks: ["10.1.0.5"]}}]}]`),
		req: rq("", "foo", "x", 80), want: denyNoMatch},
	{name: "ipBlocks match an IPv4-mapped source", policies: ap("foo", "clients", `rules: [{from: [{source: {ipBlocks: ["10.1.0.0/16"]}}]}]`),
		req: rq("", "foo", "x", 80).from("::ffff:10.1.2.3"), want: allowBy("foo/clients")},
	{name: "ipBlocks IPv6", policies: ap("foo", "v6", `rules: [{from: [{source: {ipBlocks: ["fd00::/8"]}}]}]`),
		req: rq("", "foo", "x", 80).from("fd00::1"), want: allowBy("foo/v6")},
	{name: "F4 port 9000 allowed", policies: fixtureF4,
		req: rq(pSleep, "foo", "tcp-echo", 9000), want: allowBy("foo/tcp-policy")},
	{name: "F4 port 9001 allowed", policies: fixtureF4,
		req: rq(pSleep, "foo", "tcp-echo", 9001), want: allowBy("foo/tcp-policy")},
	{name: "F4 port 9002 denied", policies: fixtureF4,
		req: rq(pSleep, "foo", "tcp-echo", 9002), want: denyNoMatch},
	{name: "notPorts", policies: ap("foo", "not-22", `rules: [{to: [{operation: {notPorts: ["22"]}}]}]`),
		req: rq(pSleep, "foo", "x", 22), want: denyNoMatch},
	{name: "F4 ALLOW methods+ports denies 9000", policies: fixtureF4AllowL7,
		req: rq(pSleep, "foo", "tcp-echo", 9000), want: denyNoMatch, diags: []string{"rule is dropped"}},
	{name: "F4 DENY methods+ports denies 9000", policies: fixtureF4DenyL7,
		req: rq(pSleep, "foo", "tcp-echo", 9000), want: denyBy("foo/tcp-policy"), diags: []string{"enforced without them"}},
	{name: "F4 DENY methods+ports allows 9001", policies: fixtureF4DenyL7,
		req: rq(pSleep, "foo", "tcp-echo", 9001), want: allowDefault, diags: []string{"enforced without them"}},
	{name: "F4 DENY methods only is a no-op in ambient", policies: fixtureF4DenyMethodsOnly,
		req: rq(pSleep, "foo", "tcp-echo", 9000), want: allowDefault,
		diags: []string{"this DENY rule never matches", "the policy has no effect"}},
	{name: "DENY L7 from entry is skipped, the L4 entry applies", policies: ap("foo", "deny-mixed", `
		action: DENY
		rules: [{from: [{source: {requestPrincipals: ["iss/sub"]}}, {source: {namespaces: ["bar"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/deny-mixed"), diags: []string{"requestPrincipals"}},

	// when conditions.
	{name: "when source.ip", policies: ap("foo", "w", `rules: [{when: [{key: source.ip, values: ["10.1.0.0/24"]}]}]`),
		req: rq("", "foo", "x", 80), want: allowBy("foo/w")},
	{name: "when source.ip notValues", policies: ap("foo", "w", `rules: [{when: [{key: source.ip, notValues: ["10.1.0.0/24"]}]}]`),
		req: rq("", "foo", "x", 80), want: denyNoMatch},
	{name: "when destination.port", policies: ap("foo", "w", `rules: [{when: [{key: destination.port, values: ["80", "443"]}]}]`),
		req: rq("", "foo", "x", 443), want: allowBy("foo/w")},
	{name: "when destination.ip", policies: ap("foo", "w", `rules: [{when: [{key: destination.ip, values: ["10.2.0.0/16"]}]}]`),
		req: rq("", "foo", "x", 80).to("10.3.0.1"), want: denyNoMatch},
	{name: "when source.namespace", policies: ap("foo", "w", `rules: [{when: [{key: source.namespace, values: ["bar"]}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/w")},
	{name: "when source.principal notValues", policies: ap("foo", "w", `rules: [{when: [{key: source.principal, notValues: ["`+pBarA+`"]}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch},
	{name: "when with an L7 key drops the ALLOW rule", policies: ap("foo", "w", `rules: [{when: [{key: "request.headers[x-id]", values: ["1"]}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"when request.headers[x-id]"}},
	{name: "when with an L7 key makes the DENY rule inert", policies: ap("foo", "w", `
		action: DENY
		rules: [{from: [{source: {namespaces: ["bar"]}}], when: [{key: connection.sni, values: ["a"]}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowDefault, diags: []string{"never matches", "no effect"}},

	// Rules OR, fields AND.
	{name: "rules OR: second rule matches", policies: ap("foo", "two-rules", `
		rules:
		- from: [{source: {namespaces: ["nope"]}}]
		- to: [{operation: {ports: ["80"]}}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/two-rules")},
	{name: "fields AND: from matches, to does not", policies: ap("foo", "and", `
		rules:
		- from: [{source: {namespaces: ["bar"]}}]
		  to: [{operation: {ports: ["8080"]}}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch},
	{name: "fields AND inside one source", policies: ap("foo", "and", `
		rules: [{from: [{source: {namespaces: ["bar"], ipBlocks: ["10.9.0.0/16"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch},
	{name: "from entries OR", policies: ap("foo", "or", `
		rules: [{from: [{source: {namespaces: ["nope"]}}, {source: {ipBlocks: ["10.1.0.0/16"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/or")},

	// PeerAuthentication.
	{name: "mesh STRICT denies plaintext", policies: meshStrict,
		req: rq("", "foo", "x", 80), want: strictBy("istio-system/default")},
	{name: "mesh STRICT allows mTLS", policies: meshStrict,
		req: rq(pBarA, "foo", "x", 80), want: allowDefault},
	{name: "F5 namespace STRICT denies plaintext in foo", policies: fixtureF5StrictFoo,
		req: rq("", "foo", "x", 80), want: strictBy("foo/default")},
	{name: "F5 namespace STRICT spares bar", policies: fixtureF5StrictFoo,
		req: rq("", "bar", "x", 80), want: allowDefault},
	{name: "namespace PERMISSIVE overrides mesh STRICT", policies: meshStrict + pa("foo", "perm", "", "mtls: {mode: PERMISSIVE}"),
		req: rq("", "foo", "x", 80), want: allowDefault},
	{name: "namespace UNSET inherits mesh STRICT", policies: meshStrict + pa("foo", "unset", "", "mtls: {}"),
		req: rq("", "foo", "x", 80), want: strictBy("istio-system/default")},
	{name: "workload PERMISSIVE overrides namespace STRICT", policies: fixtureF5StrictFoo + pa("foo", "x-perm", "", "selector: {matchLabels: {app: x}}\nmtls: {mode: PERMISSIVE}"),
		req: rq("", "foo", "x", 80), want: allowDefault},
	{name: "workload STRICT over namespace PERMISSIVE", policies: pa("foo", "ns", "", "mtls: {mode: PERMISSIVE}") + pa("foo", "x-strict", "", "selector: {matchLabels: {app: x}}\nmtls: {mode: STRICT}"),
		req: rq("", "foo", "x", 80), want: strictBy("foo/x-strict")},
	{name: "DISABLE acts as PERMISSIVE", policies: pa("istio-system", "default", "", "mtls: {mode: DISABLE}"),
		req: rq("", "foo", "x", 80), want: allowDefault, diags: []string{"treated as PERMISSIVE"}},
	{name: "F5 finance portLevelMtls DISABLE exempts 8080", policies: fixtureF5Finance,
		req: rq("", "foo", "finance", 8080), want: allowDefault, diags: []string{"treated as PERMISSIVE"}},
	{name: "F5 finance STRICT on other ports", policies: fixtureF5Finance,
		req: rq("", "foo", "finance", 8443), want: strictBy("foo/finance"), diags: []string{"treated as PERMISSIVE"}},
	{name: "port-level STRICT under mesh PERMISSIVE", policies: pa("foo", "db", "", "selector: {matchLabels: {app: db}}\nportLevelMtls: {\"5432\": {mode: STRICT}}"),
		req: rq("", "foo", "db", 5432), want: strictBy("foo/db")},
	{name: "port-level STRICT leaves other ports PERMISSIVE", policies: pa("foo", "db", "", "selector: {matchLabels: {app: db}}\nportLevelMtls: {\"5432\": {mode: STRICT}}"),
		req: rq("", "foo", "db", 80), want: allowDefault},
	{name: "port-level PERMISSIVE under inherited STRICT", policies: meshStrict + pa("foo", "db", "", "selector: {matchLabels: {app: db}}\nportLevelMtls: {\"9090\": {mode: PERMISSIVE}}"),
		req: rq("", "foo", "db", 9090), want: allowDefault},
	{name: "oldest namespace PeerAuthentication wins", policies: pa("foo", "b-new-strict", "2024-06-01T00:00:00Z", "mtls: {mode: STRICT}") +
		pa("foo", "z-old-permissive", "2023-01-01T00:00:00Z", "mtls: {mode: PERMISSIVE}"),
		req: rq("", "foo", "x", 80), want: allowDefault},
	{name: "same age: first name wins", policies: pa("foo", "b-permissive", "2024-01-01T00:00:00Z", "mtls: {mode: PERMISSIVE}") +
		pa("foo", "a-strict", "2024-01-01T00:00:00Z", "mtls: {mode: STRICT}"),
		req: rq("", "foo", "x", 80), want: strictBy("foo/a-strict")},
	{name: "oldest workload PeerAuthentication wins", policies: pa("foo", "new", "2025-01-01T00:00:00Z", "selector: {matchLabels: {app: x}}\nmtls: {mode: PERMISSIVE}") +
		pa("foo", "old", "2020-01-01T00:00:00Z", "selector: {matchLabels: {tier: web}}\nmtls: {mode: STRICT}"),
		req: rq("", "foo", "x", 80).label("tier", "web"), want: strictBy("foo/old")},
	{name: "root-namespace selector PeerAuthentication ignored", policies: pa("istio-system", "sel", "", "selector: {matchLabels: {app: x}}\nmtls: {mode: STRICT}"),
		req: rq("", "foo", "x", 80), want: allowDefault, diags: []string{"root namespace is ignored"}},
	{name: "STRICT then AuthorizationPolicy for mTLS", policies: meshStrict + fixtureF1,
		req: rq(pSleep, "default", "productpage", 9080), want: denyNoMatch},
	{name: "STRICT is reported before a DENY", policies: meshStrict + ap("foo", "deny-all", "action: DENY\nrules: [{}]"),
		req: rq("", "foo", "x", 80), want: strictBy("istio-system/default")},

	// Invalid objects are read fail-closed; the rest applies.
	{name: "bad CIDR: the DENY field reads as matching", policies: ap("foo", "bad", `
		action: DENY
		rules: [{from: [{source: {ipBlocks: ["10.1.0.0/16", "10.0.0/33"]}}]}]`),
		req: rq("", "foo", "x", 80).from("192.168.7.7"), want: denyBy("foo/bad"),
		diags: []string{`authz: AuthorizationPolicy foo/bad: rules[0].from[0].source.ipBlocks[1]: invalid CIDR "10.0.0/33"`}},
	{name: "bad ALLOW rule matches nothing, valid DENY still applies", policies: ap("foo", "bad-allow", `rules: [{to: [{operation: {ports: ["http"]}}]}]`) +
		ap("foo", "deny-bar", "action: DENY\nrules: [{from: [{source: {namespaces: [bar]}}]}]"),
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/deny-bar"), diags: []string{`rules[0].to[0].operation.ports[0]: invalid port "http"`}},
	{name: "unknown action denies everything it selects", policies: ap("foo", "bad", "action: REJECT\nrules: [{}]"),
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/bad"), diags: []string{`action: unknown action "REJECT"`}},
	{name: "principal with spiffe://: the ALLOW rule matches nothing", policies: ap("foo", "bad", `rules: [{from: [{source: {principals: ["spiffe://`+pBarA+`"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"principals[0]: malformed principal"}},
	{name: "principal with a middle wildcard: the ALLOW rule matches nothing", policies: ap("foo", "bad", `rules: [{from: [{source: {principals: ["cluster.local/ns/*/sa/a"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"one wildcard at most"}},
	{name: "principal without ns/sa: the ALLOW rule matches nothing", policies: ap("foo", "bad", `rules: [{from: [{source: {principals: ["bar-a"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"want <trust domain>/ns/"}},
	{name: "unknown when key: the ALLOW rule matches nothing", policies: ap("foo", "bad", `rules: [{when: [{key: source.color, values: [red]}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{`unknown key "source.color"`}},
	{name: "DENY without rules denies everything", policies: ap("foo", "bad", "action: DENY"),
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/bad"), diags: []string{"DENY policy without rules"}},
	{name: "bad PeerAuthentication mode reads as STRICT", policies: pa("foo", "bad", "", "mtls: {mode: strict}"),
		req: rq("", "foo", "x", 80), want: strictBy("foo/bad"), diags: []string{`mtls.mode: unknown mode "strict"`}},
	{name: "namespace PeerAuthentication with portLevelMtls reads as STRICT", policies: pa("foo", "bad", "", "mtls: {mode: STRICT}\nportLevelMtls: {\"80\": {mode: PERMISSIVE}}"),
		req: rq("", "foo", "x", 80), want: strictBy("foo/bad"), diags: []string{"cannot have port-level mTLS"}},

	// Ignored with a warning.
	{name: "AUDIT ignored", policies: ap("foo", "audit", "action: AUDIT\nrules: [{}]"),
		req: rq(pBarA, "foo", "x", 80), want: allowDefault, diags: []string{"AUDIT is not supported at L4"}},
	{name: "CUSTOM ignored", policies: ap("foo", "ext", "action: CUSTOM\nprovider: {name: opa}\nrules: [{}]"),
		req: rq(pBarA, "foo", "x", 80), want: allowDefault, diags: []string{"CUSTOM is not supported at L4"}},
	{name: "targetRefs ignored", policies: ap("foo", "wp", "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\nrules: [{}]\naction: DENY"),
		req: rq(pBarA, "foo", "x", 80), want: allowDefault, diags: []string{"targetRefs policies are enforced by waypoints"}},
	{name: "dry-run ignored", policies: "\n---\nkind: AuthorizationPolicy\nmetadata: {name: dry, namespace: foo, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: DENY, rules: [{}]}\n",
		req: rq(pBarA, "foo", "x", 80), want: allowDefault, diags: []string{"dry-run policies are not enforced"}},

	// More scope and PeerAuthentication corners.
	{name: "workload in the root namespace gets mesh policies", policies: ap("istio-system", "allow-nothing", "{}"),
		req: rq(pSleep, "istio-system", "x", 80), want: denyNoMatch},
	{name: "PeerAuthentication selector in another namespace does not apply", policies: pa("bar", "x-strict", "", "selector: {matchLabels: {app: x}}\nmtls: {mode: STRICT}"),
		req: rq("", "foo", "x", 80), want: allowDefault},
	{name: "root PeerAuthentication with an empty selector: root-namespace workloads only", policies: pa("istio-system", "empty-sel", "", "selector: {}\nmtls: {mode: STRICT}"),
		req: rq("", "istio-system", "x", 80), want: strictBy("istio-system/empty-sel")},
	{name: "root PeerAuthentication with an empty selector spares other namespaces", policies: pa("istio-system", "empty-sel", "", "selector: {}\nmtls: {mode: STRICT}"),
		req: rq("", "foo", "x", 80), want: allowDefault},
	{name: "oldest mesh PeerAuthentication wins even when UNSET", policies: pa("istio-system", "a-new", "2025-01-01T00:00:00Z", "mtls: {mode: STRICT}") +
		pa("istio-system", "b-old", "2020-01-01T00:00:00Z", "{}"),
		req: rq("", "foo", "x", 80), want: allowDefault},
	{name: "when values and notValues both apply", policies: ap("foo", "w", `rules: [{when: [{key: source.ip, values: ["10.1.0.0/16"], notValues: ["10.1.0.5"]}]}]`),
		req: rq("", "foo", "x", 80), want: denyNoMatch},
	{name: "when conditions AND", policies: ap("foo", "w", `
		rules: [{when: [{key: source.namespace, values: ["bar"]}, {key: destination.port, values: ["443"]}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch},
	{name: "dry-run false is enforced", policies: "\n---\nkind: AuthorizationPolicy\nmetadata: {name: wet, namespace: foo, annotations: {istio.io/dry-run: \"false\"}}\nspec: {action: DENY, rules: [{}]}\n",
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/wet")},
	{name: "namespace omitted means default", policies: "\n---\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing}\nspec: {}\n",
		req: rq(pBarA, "default", "x", 80), want: denyNoMatch, diags: []string{"AuthorizationPolicy default/allow-nothing: metadata.namespace: warning: empty"}},
	{name: "duplicate policy: the first applies, the second denies", policies: ap("foo", "dup", "action: DENY\nrules: [{}]") + ap("foo", "dup", "{}"),
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/dup"), diags: []string{"duplicate AuthorizationPolicy foo/dup"}},
	{name: "trust domain warning", cfg: Config{TrustDomain: "example.org"}, policies: fixtureF1,
		req: rq(pGateway, "default", "productpage", 9080), want: allowBy("default/productpage-viewer"),
		diags: []string{`trust domain "cluster.local" is not the mesh's ("example.org")`}},

	{name: "trustDomains are ignored, as by ztunnel", policies: ap("foo", "td", `rules: [{from: [{source: {principals: ["`+pBarA+`"], trustDomains: ["other.org"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/td"), diags: []string{"rules[0].from[0].source: warning: trustDomains and notTrustDomains are not enforced"}},
	{name: "trustDomains alone leave an ALLOW rule that never matches", policies: ap("foo", "td", `rules: [{from: [{source: {trustDomains: ["cluster.local"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"not enforced", "only fields ztunnel ignores"}},

	// More invalid objects.
	{name: "selector wildcard: the ALLOW policy selects the whole namespace", policies: ap("foo", "bad", "selector: {matchLabels: {app: \"x*\"}}"),
		req: rq(pBarA, "foo", "y", 80), want: denyNoMatch, diags: []string{"selector.matchLabels[app]: wildcards are not supported"}},
	{name: "serviceAccounts with principals: the ALLOW rule matches nothing", policies: ap("foo", "bad", `rules: [{from: [{source: {serviceAccounts: [a], principals: ["`+pBarA+`"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"rules[0].from[0].source: serviceAccounts cannot be combined"}},
	{name: "empty source: the ALLOW rule matches nothing", policies: ap("foo", "bad", `rules: [{from: [{source: {}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"rules[0].from[0].source: must not be empty"}},
	{name: "malformed serviceAccount: the ALLOW rule matches nothing", policies: ap("foo", "bad", `rules: [{from: [{source: {serviceAccounts: ["a/b/c"]}}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"serviceAccounts[0]: malformed service account"}},
	{name: "when destination.namespace: the ALLOW rule matches nothing", policies: ap("foo", "bad", `rules: [{when: [{key: destination.namespace, values: [foo]}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"rules[0].when[0].key: key destination.namespace is replaced by metadata.namespace"}},
	{name: "when without values: the ALLOW rule matches nothing", policies: ap("foo", "bad", `rules: [{when: [{key: source.ip}]}]`),
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"at least one of values or notValues"}},
	{name: "portLevelMtls bad port: the workload reads as STRICT", policies: pa("foo", "bad", "", "selector: {matchLabels: {app: x}}\nportLevelMtls: {\"0\": {mode: STRICT}}"),
		req: rq("", "foo", "x", 80), want: strictBy("foo/bad"), diags: []string{`portLevelMtls[0]: invalid port "0"`}},
	{name: "selector with targetRefs denies what the selector selects", policies: ap("foo", "bad", "selector: {matchLabels: {app: x}}\ntargetRefs: [{kind: Service, name: x}]"),
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/bad"), diags: []string{"only one of selector, targetRef or targetRefs"}},

	// Requests.
	{name: "malformed request principal denied", req: rq("cluster.local/sa/x", "foo", "x", 80),
		want: Decision{Reason: ReasonMalformedPrincipal}},
}

func TestDecide(t *testing.T) {
	if len(scenarios) < 60 {
		t.Fatalf("only %d scenarios", len(scenarios))
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			aps, pas := load(t, sc.policies)
			e, ds := Compile(sc.cfg, aps, pas)
			checkDiags(t, ds, sc.diags)
			got := e.Decide(sc.req)
			if got.Allow != sc.want.Allow || got.Policy != sc.want.Policy || got.Kind != sc.want.Kind {
				t.Fatalf("Decide = %+v\nwant %+v", got, sc.want)
			}
			if sc.want.Reason != "" && got.Reason != sc.want.Reason {
				t.Errorf("Reason = %q, want %q", got.Reason, sc.want.Reason)
			}
			if got.Reason == "" {
				t.Errorf("empty Reason")
			}
			if sc.want.Policy != "" && !strings.Contains(got.Reason, sc.want.Policy) {
				t.Errorf("Reason %q does not name %s", got.Reason, sc.want.Policy)
			}
			// Explain agrees with Decide.
			if x := e.Explain(sc.req); x.Decision != got {
				t.Errorf("Explain().Decision = %+v, Decide = %+v", x.Decision, got)
			}
		})
	}
}

func checkDiags(t *testing.T, ds []Diagnostic, want []string) {
	t.Helper()
	if len(ds) != len(want) {
		t.Errorf("got %d diagnostics, want %d:", len(ds), len(want))
		for _, d := range ds {
			t.Errorf("  %v", d)
		}
		return
	}
	for i, d := range ds {
		if !strings.Contains(d.Error(), want[i]) {
			t.Errorf("diagnostic %d = %q, want it to contain %q", i, d.Error(), want[i])
		}
	}
}

func TestZeroEngineAllows(t *testing.T) {
	var e Engine
	if d := e.Decide(rq("", "foo", "x", 80)); !d.Allow || d.Reason != ReasonNoAllowPolicy {
		t.Fatalf("zero Engine: %+v", d)
	}
}

func TestExplain(t *testing.T) {
	aps, pas := load(t, meshStrict+fixtureF4+
		ap("foo", "deny-9000", `
		action: DENY
		rules: [{to: [{operation: {ports: ["9000"]}}]}]`)+
		ap("istio-system", "mesh-allow", `rules: [{from: [{source: {namespaces: ["bar"]}}]}]`)+
		ap("foo", "other-app", "selector: {matchLabels: {app: other}}")+
		pa("foo", "tcp-echo", "", "selector: {matchLabels: {app: tcp-echo}}\nportLevelMtls: {\"9001\": {mode: PERMISSIVE}}"))
	e, ds := Compile(Config{}, aps, pas)
	checkDiags(t, ds, nil)
	got := e.Explain(rq(pBarA, "foo", "tcp-echo", 9001))
	want := Explanation{
		Decision:           Decision{Allow: true, Policy: "foo/tcp-policy", Kind: KindAuthorizationPolicy, Reason: "allowed by ALLOW policy foo/tcp-policy (rules[0] matched)"},
		PeerAuthentication: PeerAuthenticationResult{Mode: "PERMISSIVE", Policy: "foo/tcp-echo", Field: "portLevelMtls[9001]"},
		Policies: []PolicyResult{
			{Policy: "foo/deny-9000", Action: "DENY", Scope: ScopeNamespace, Rule: -1, Rules: 1},
			{Policy: "foo/tcp-policy", Action: "ALLOW", Scope: ScopeWorkload, Matched: true, Rule: 0, Rules: 1},
			{Policy: "istio-system/mesh-allow", Action: "ALLOW", Scope: ScopeMesh, Matched: true, Rule: 0, Rules: 1},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Explain =\n%+v\nwant\n%+v", got, want)
	}
	js, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"decision":{"allow":true,"policy":"foo/tcp-policy"`, `"peerAuthentication":{"mode":"PERMISSIVE"`, `"matched":true,"rule":0`} {
		if !strings.Contains(string(js), key) {
			t.Errorf("JSON %s lacks %s", js, key)
		}
	}
}

// TestDecideConcurrent shares one Engine between goroutines (run with -race).
func TestDecideConcurrent(t *testing.T) {
	aps, pas := load(t, meshStrict+fixtureF2+fixtureF4+fixtureF5Finance)
	e, _ := Compile(Config{}, aps, pas)
	reqs := []Request{rq(pSleep, "default", "productpage", 9080), rq("", "foo", "finance", 8080), rq(pNoSleep, "foo", "tcp-echo", 9002)}
	want := make([]Decision, len(reqs))
	for i, r := range reqs {
		want[i] = e.Decide(r)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				for i, r := range reqs {
					if got := e.Decide(r); got != want[i] {
						t.Errorf("Decide(%+v) = %+v, want %+v", r, got, want[i])
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

// TestPrincipalIndexMatchesReference runs the differential checks with
// every policy list indexed by principal and namespace (the index starts at
// principalIndexMin policies, which the generated sets rarely reach), and
// checks that the index is built and decides as a scan would.
func TestPrincipalIndexMatchesReference(t *testing.T) {
	defer func(n int) { principalIndexMin = n }(principalIndexMin)
	principalIndexMin = 1

	aps, last := inScope(40)
	e, ds := Compile(Config{}, aps, nil)
	if len(ds) > 0 {
		t.Fatal(ds)
	}
	set := e.byNS["app"]
	if set == nil || set.allow.byPrincipal == nil || len(set.deny.byNamespace["blocked"]) == 0 || len(set.selAllow.m) != 1 {
		t.Fatalf("no principal and namespace index built: %+v", set)
	}
	for _, g := range set.selAllow.m[labelKV{"app", "x"}] {
		if g.list.byPrincipal == nil {
			t.Fatal("selector group not indexed")
		}
	}
	for _, pr := range []string{last, "cluster.local/ns/client/sa/sa-00001", "cluster.local/ns/client/sa/sa-00002", "cluster.local/ns/other/sa/x",
		"cluster.local/ns/blocked/sa/sa-00001", ""} {
		r := Request{SourcePrincipal: pr, SourceIP: ip("198.18.1.1"), Namespace: "app", Labels: map[string]string{"app": "x"},
			DestinationIP: ip("198.18.2.2"), DestinationPort: 8080}
		got, want := e.Decide(r), refDecide(DefaultRootNamespace, aps, nil, r)
		if got.Allow != want.allow || got.Policy != want.policy {
			t.Errorf("%q: engine %+v, reference %+v", pr, got, want)
		}
	}

	t.Run("Compile", TestDecideMatchesReference)
	t.Run("CompileTranslated", TestDecideTranslatedMatchesReference)
	t.Run("fail closed", TestFailClosedSeeded)
	t.Run("translated fail closed", TestTranslatedFailClosedSeeded)
}

// TestBindingOfAnotherEngineIgnored: a Binding is only used by the Engine
// that made it; another Engine resolves the names itself.
func TestBindingOfAnotherEngineIgnored(t *testing.T) {
	deny := []TranslatedPolicy{{Name: "deny", Namespace: "app", Scope: TranslatedScopeWorkloadSelector, Action: "DENY", Groups: []TranslatedGroup{{}}}}
	old, _ := CompileTranslated(Config{}, nil)
	e, ds := CompileTranslated(Config{}, deny)
	if len(ds) > 0 {
		t.Fatal(ds)
	}
	r := Request{SourcePrincipal: "cluster.local/ns/a/sa/b", Namespace: "app", BoundPolicies: []string{"app/deny"}}
	r.Binding = old.Bind(r.BoundPolicies) // names unknown to old
	if d := e.Decide(r); d.Allow || d.Policy != "app/deny" {
		t.Errorf("with another Engine's Binding: %+v, want denied by app/deny", d)
	}
	r.Binding = e.Bind(r.BoundPolicies)
	if d := e.Decide(r); d.Allow || d.Policy != "app/deny" {
		t.Errorf("with its Binding: %+v, want denied by app/deny", d)
	}
	r.Binding = e.Bind([]string{"app/missing"})
	if d := e.Decide(r); d.Allow || d.Reason != ReasonUnknownBoundPolicy {
		t.Errorf("with a Binding naming an unknown policy: %+v, want denied", d)
	}
}
