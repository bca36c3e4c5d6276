package authz

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Builders for TranslatedPolicies, in istiod's shape.

func tpol(ns, name, scope, action string, groups ...TranslatedGroup) TranslatedPolicy {
	return TranslatedPolicy{Name: name, Namespace: ns, Scope: scope, Action: action, Groups: groups}
}

func grp(rules ...TranslatedRules) TranslatedGroup { return TranslatedGroup{Rules: rules} }

// anyOf is one clause: some match must hold.
func anyOf(ms ...TranslatedMatch) TranslatedRules { return TranslatedRules{Matches: ms} }

// one is a group of one clause of one match.
func one(m TranslatedMatch) TranslatedGroup { return grp(anyOf(m)) }

func exact(v string) StringMatch  { return StringMatch{Kind: StringMatchExact, Value: v} }
func prefix(v string) StringMatch { return StringMatch{Kind: StringMatchPrefix, Value: v} }
func suffix(v string) StringMatch { return StringMatch{Kind: StringMatchSuffix, Value: v} }

var presence = StringMatch{Kind: StringMatchPresence}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func (r Request) bind(names ...string) Request { r.BoundPolicies = names; return r }

const (
	global    = TranslatedScopeGlobal
	namespace = TranslatedScopeNamespace
	selector  = TranslatedScopeWorkloadSelector
	staticKey = "istio-system/istio_converted_static_strict"
)

// staticStrict is istiod's DefaultPolicy: PeerAuthentication STRICT as a
// DENY of every connection without a peer identity.
var staticStrict = tpol("istio-system", "istio_converted_static_strict", selector, "DENY",
	one(TranslatedMatch{NotPrincipals: []StringMatch{presence}}))

var allowAllGroup = TranslatedGroup{} // a group without rules matches everything

type translatedScenario struct {
	name     string
	policies []TranslatedPolicy
	req      Request
	want     Decision
	diags    []string // as in scenario.diags
}

var unknownBound = Decision{Policy: "foo/missing", Kind: KindAuthorizationPolicy, Reason: ReasonUnknownBoundPolicy}

var translatedScenarios = []translatedScenario{
	// Scopes.
	{name: "GLOBAL applies in every namespace", policies: []TranslatedPolicy{tpol("istio-system", "allow-nothing", global, "ALLOW")},
		req: rq(pSleep, "bar", "x", 80), want: denyNoMatch},
	{name: "GLOBAL applies in the root namespace", policies: []TranslatedPolicy{tpol("istio-system", "allow-nothing", global, "ALLOW")},
		req: rq(pSleep, "istio-system", "x", 80), want: denyNoMatch},
	{name: "GLOBAL outside the root namespace still applies everywhere", policies: []TranslatedPolicy{tpol("foo", "deny-all", global, "DENY", allowAllGroup)},
		req: rq(pSleep, "bar", "x", 80), want: denyBy("foo/deny-all")},
	{name: "NAMESPACE applies in its namespace", policies: []TranslatedPolicy{tpol("foo", "deny-all", namespace, "DENY", allowAllGroup)},
		req: rq(pSleep, "foo", "x", 80), want: denyBy("foo/deny-all")},
	{name: "NAMESPACE spares other namespaces", policies: []TranslatedPolicy{tpol("foo", "deny-all", namespace, "DENY", allowAllGroup)},
		req: rq(pSleep, "bar", "x", 80), want: allowDefault},
	{name: "NAMESPACE in the root namespace applies to its workloads", policies: []TranslatedPolicy{tpol("istio-system", "deny-all", namespace, "DENY", allowAllGroup)},
		req: rq(pSleep, "istio-system", "x", 80), want: denyBy("istio-system/deny-all")},
	{name: "NAMESPACE in the root namespace spares other namespaces", policies: []TranslatedPolicy{tpol("istio-system", "deny-all", namespace, "DENY", allowAllGroup)},
		req: rq(pSleep, "foo", "x", 80), want: allowDefault},
	{name: "WORKLOAD_SELECTOR applies when bound", policies: []TranslatedPolicy{tpol("foo", "sel", selector, "DENY", allowAllGroup)},
		req: rq(pSleep, "foo", "x", 80).bind("foo/sel"), want: denyBy("foo/sel")},
	{name: "WORKLOAD_SELECTOR does not apply unbound", policies: []TranslatedPolicy{tpol("foo", "sel", selector, "DENY", allowAllGroup)},
		req: rq(pSleep, "foo", "x", 80), want: allowDefault},
	{name: "WORKLOAD_SELECTOR bound to another workload does not apply", policies: []TranslatedPolicy{
		tpol("foo", "sel", selector, "DENY", allowAllGroup), tpol("foo", "other", selector, "ALLOW", allowAllGroup)},
		req: rq(pSleep, "foo", "x", 80).bind("foo/other"), want: allowBy("foo/other")},
	{name: "root-namespace WORKLOAD_SELECTOR applies where bound", policies: []TranslatedPolicy{tpol("istio-system", "v1", selector, "ALLOW")},
		req: rq(pSleep, "bar", "x", 80).bind("istio-system/v1"), want: denyNoMatch},
	{name: "labels are not selectors", policies: []TranslatedPolicy{tpol("foo", "sel", selector, "DENY", allowAllGroup)},
		req: rq(pSleep, "foo", "sel", 80).label("sel", "foo/sel"), want: allowDefault},
	{name: "unknown bound policy denies", policies: []TranslatedPolicy{tpol("foo", "allow-all", namespace, "ALLOW", allowAllGroup)},
		req: rq(pSleep, "foo", "x", 80).bind("foo/missing"), want: unknownBound},
	{name: "unknown bound policy denies without any policy", req: rq(pSleep, "foo", "x", 80).bind("foo/missing"), want: unknownBound},
	{name: "bound dry-run policy is known", policies: []TranslatedPolicy{{Name: "dry", Namespace: "foo", Scope: selector, Action: "DENY", Groups: []TranslatedGroup{allowAllGroup}, DryRun: true}},
		req: rq(pSleep, "foo", "x", 80).bind("foo/dry"), want: allowDefault, diags: []string{"dryRun: warning: dry-run policies are not enforced"}},

	// PeerAuthentication STRICT, as istiod converts it.
	{name: "static STRICT denies plaintext", policies: []TranslatedPolicy{staticStrict},
		req: rq("", "foo", "x", 80).bind(staticKey), want: denyBy(staticKey)},
	{name: "static STRICT spares mTLS", policies: []TranslatedPolicy{staticStrict},
		req: rq(pBarA, "foo", "x", 80).bind(staticKey), want: allowDefault},
	{name: "static STRICT applies only where bound", policies: []TranslatedPolicy{staticStrict},
		req: rq("", "foo", "x", 80), want: allowDefault},
	{name: "port-level STRICT denies plaintext on its port", policies: []TranslatedPolicy{tpol("foo", "converted_peer_authentication_x", selector, "DENY",
		one(TranslatedMatch{NotPrincipals: []StringMatch{presence}, DestinationPorts: []uint32{8080}}))},
		req: rq("", "foo", "x", 8080).bind("foo/converted_peer_authentication_x"), want: denyBy("foo/converted_peer_authentication_x")},
	{name: "port-level STRICT spares other ports", policies: []TranslatedPolicy{tpol("foo", "converted_peer_authentication_x", selector, "DENY",
		one(TranslatedMatch{NotPrincipals: []StringMatch{presence}, DestinationPorts: []uint32{8080}}))},
		req: rq("", "foo", "x", 80).bind("foo/converted_peer_authentication_x"), want: allowDefault},
	{name: "STRICT with a PERMISSIVE port: exempt port", policies: []TranslatedPolicy{tpol("foo", "converted_peer_authentication_x", selector, "DENY",
		grp(anyOf(TranslatedMatch{NotPrincipals: []StringMatch{presence}}), anyOf(TranslatedMatch{NotDestinationPorts: []uint32{8080}})))},
		req: rq("", "foo", "x", 8080).bind("foo/converted_peer_authentication_x"), want: allowDefault},
	{name: "STRICT with a PERMISSIVE port: other port", policies: []TranslatedPolicy{tpol("foo", "converted_peer_authentication_x", selector, "DENY",
		grp(anyOf(TranslatedMatch{NotPrincipals: []StringMatch{presence}}), anyOf(TranslatedMatch{NotDestinationPorts: []uint32{8080}})))},
		req: rq("", "foo", "x", 80).bind("foo/converted_peer_authentication_x"), want: denyBy("foo/converted_peer_authentication_x")},

	// ALLOW and DENY order.
	{name: "DENY beats a matching ALLOW", policies: []TranslatedPolicy{
		tpol("foo", "allow-all", namespace, "ALLOW", allowAllGroup),
		tpol("foo", "deny-9000", namespace, "DENY", one(TranslatedMatch{DestinationPorts: []uint32{9000}}))},
		req: rq(pSleep, "foo", "x", 9000), want: denyBy("foo/deny-9000")},
	{name: "non-matching DENY falls through to ALLOW", policies: []TranslatedPolicy{
		tpol("foo", "allow-all", namespace, "ALLOW", allowAllGroup),
		tpol("foo", "deny-9000", namespace, "DENY", one(TranslatedMatch{DestinationPorts: []uint32{9000}}))},
		req: rq(pSleep, "foo", "x", 9001), want: allowBy("foo/allow-all")},
	{name: "DENY alone does not make ALLOW required", policies: []TranslatedPolicy{
		tpol("foo", "deny-9000", namespace, "DENY", one(TranslatedMatch{DestinationPorts: []uint32{9000}}))},
		req: rq(pSleep, "foo", "x", 80), want: allowDefault},
	{name: "ALLOW present, none matches", policies: []TranslatedPolicy{
		tpol("foo", "from-bar", namespace, "ALLOW", one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}}))},
		req: rq(pFooA, "foo", "x", 80), want: denyNoMatch},
	{name: "bound ALLOW matches", policies: []TranslatedPolicy{
		tpol("foo", "from-bar", namespace, "ALLOW", one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}})),
		tpol("foo", "sel-from-foo", selector, "ALLOW", one(TranslatedMatch{Namespaces: []StringMatch{exact("foo")}}))},
		req: rq(pFooA, "foo", "x", 80).bind("foo/sel-from-foo"), want: allowBy("foo/sel-from-foo")},
	{name: "bound ALLOW makes ALLOW required", policies: []TranslatedPolicy{
		tpol("foo", "sel-from-foo", selector, "ALLOW", one(TranslatedMatch{Namespaces: []StringMatch{exact("foo")}}))},
		req: rq(pBarA, "foo", "x", 80).bind("foo/sel-from-foo"), want: denyNoMatch},
	{name: "matching DENYs: first by namespace/name decides", policies: []TranslatedPolicy{
		tpol("istio-system", "mesh-deny", global, "DENY", allowAllGroup),
		tpol("foo", "z-deny", namespace, "DENY", allowAllGroup),
		tpol("foo", "b-sel", selector, "DENY", allowAllGroup),
		tpol("foo", "a-sel", selector, "DENY", allowAllGroup)},
		req: rq(pSleep, "foo", "x", 80).bind("foo/b-sel", "foo/a-sel"), want: denyBy("foo/a-sel")},
	{name: "matching ALLOWs: first by namespace/name decides", policies: []TranslatedPolicy{
		tpol("istio-system", "mesh-allow", global, "ALLOW", allowAllGroup),
		tpol("foo", "z-allow", selector, "ALLOW", allowAllGroup)},
		req: rq(pSleep, "foo", "x", 80).bind("foo/z-allow"), want: allowBy("foo/z-allow")},

	// Groups, rules and matches.
	{name: "a group without rules matches everything", policies: []TranslatedPolicy{tpol("foo", "all", namespace, "ALLOW", allowAllGroup)},
		req: rq("", "foo", "x", 80), want: allowBy("foo/all")},
	{name: "a policy without groups allows nothing", policies: []TranslatedPolicy{tpol("foo", "none", namespace, "ALLOW")},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch},
	{name: "a DENY policy without groups has no effect", policies: []TranslatedPolicy{tpol("foo", "none", namespace, "DENY")},
		req: rq(pBarA, "foo", "x", 80), want: allowDefault, diags: []string{"groups: warning: a DENY policy without groups never matches"}},
	{name: "ALLOW: rules without matches match nothing", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW", grp(TranslatedRules{}))},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"groups[0].rules[0]: warning: has no matches"}},
	{name: "DENY: rules without matches match anything, as in ztunnel", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "DENY", grp(TranslatedRules{}))},
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/p"), diags: []string{"groups[0].rules[0]: warning: has no matches"}},
	{name: "an empty match never matches", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "DENY", one(TranslatedMatch{}))},
		req: rq(pBarA, "foo", "x", 80), want: allowDefault},
	{name: "an empty match beside a live one", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "DENY", grp(anyOf(TranslatedMatch{}, TranslatedMatch{DestinationPorts: []uint32{80}})))},
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/p")},
	{name: "clauses AND: both hold", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW", grp(
		anyOf(TranslatedMatch{Namespaces: []StringMatch{exact("foo")}}, TranslatedMatch{Namespaces: []StringMatch{exact("bar")}}),
		anyOf(TranslatedMatch{DestinationPorts: []uint32{80}})))},
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/p")},
	{name: "clauses AND: one fails", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW", grp(
		anyOf(TranslatedMatch{Namespaces: []StringMatch{exact("foo")}}, TranslatedMatch{Namespaces: []StringMatch{exact("bar")}}),
		anyOf(TranslatedMatch{DestinationPorts: []uint32{80}})))},
		req: rq(pBarA, "foo", "x", 81), want: denyNoMatch},
	{name: "groups OR", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{Namespaces: []StringMatch{exact("foo")}}), one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}}))},
		req: rq(pBarA, "foo", "x", 80), want: Decision{Allow: true, Policy: "foo/p", Kind: KindAuthorizationPolicy, Reason: "allowed by ALLOW policy foo/p (groups[1] matched)"}},
	{name: "fields within a match AND", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}, DestinationPorts: []uint32{9000}}))},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch},
	{name: "exact is literal", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{Principals: []StringMatch{exact("cluster.local/ns/bar/*")}}))},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch},
	{name: "many exact principals", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{Principals: []StringMatch{exact("a/ns/b/sa/1"), exact("a/ns/b/sa/2"), exact("a/ns/b/sa/3"), exact("a/ns/b/sa/4"),
			exact("a/ns/b/sa/5"), exact("a/ns/b/sa/6"), exact("a/ns/b/sa/7"), exact(pBarA)}}))},
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/p")},
	{name: "IPv4-mapped source", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{SourceIPs: []netip.Prefix{pfx("10.1.0.0/16")}}))},
		req: rq("", "foo", "x", 80).from("::ffff:10.1.2.3"), want: allowBy("foo/p")},
	{name: "unmasked prefix", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{SourceIPs: []netip.Prefix{pfx("10.1.9.9/16")}}))},
		req: rq("", "foo", "x", 80), want: allowBy("foo/p")},

	// Fail-closed readings.
	{name: "no name: ignored", policies: []TranslatedPolicy{tpol("foo", "", namespace, "DENY", allowAllGroup)},
		req: rq(pBarA, "foo", "x", 80), want: allowDefault, diags: []string{"AuthorizationPolicy foo/: name: must not be empty; enforced meanwhile: the object is ignored"}},
	{name: "no namespace: denies what its scope selects", policies: []TranslatedPolicy{tpol("", "p", global, "ALLOW", allowAllGroup)},
		req: rq(pBarA, "foo", "x", 80), want: denyBy("/p"), diags: []string{"namespace: must not be empty; enforced meanwhile: the policy denies every connection to every workload in the mesh"}},
	{name: "unknown action denies its namespace", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "AUDIT", one(TranslatedMatch{DestinationPorts: []uint32{1}}))},
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/p"),
		diags: []string{`AuthorizationPolicy foo/p: action: unknown action "AUDIT" (want ALLOW or DENY); enforced meanwhile: the policy denies every connection to every workload in namespace foo, whatever its action`}},
	{name: "unknown action spares other namespaces", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "", allowAllGroup)},
		req: rq(pBarA, "bar", "x", 80), want: allowDefault, diags: []string{`action: unknown action ""`}},
	{name: "unknown action on a selector policy: bound", policies: []TranslatedPolicy{tpol("foo", "p", selector, "allow", allowAllGroup)},
		req: rq(pBarA, "foo", "x", 80).bind("foo/p"), want: denyBy("foo/p"), diags: []string{"every connection to the workloads istiod binds it to"}},
	{name: "unknown action on a selector policy: unbound", policies: []TranslatedPolicy{tpol("foo", "p", selector, "allow", allowAllGroup)},
		req: rq(pBarA, "foo", "x", 80), want: allowDefault, diags: []string{`unknown action "allow"`}},
	{name: "unknown scope, ALLOW: allows nothing in its namespace", policies: []TranslatedPolicy{tpol("foo", "p", "MESH", "ALLOW", allowAllGroup)},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch,
		diags: []string{`scope: unknown scope "MESH" (want GLOBAL, NAMESPACE or WORKLOAD_SELECTOR); enforced meanwhile: the policy applies to every workload in namespace foo (its scope is unreadable) and allows nothing`}},
	{name: "unknown scope, ALLOW: spares other namespaces", policies: []TranslatedPolicy{tpol("foo", "p", "", "ALLOW", allowAllGroup)},
		req: rq(pBarA, "bar", "x", 80), want: allowDefault, diags: []string{`unknown scope ""`}},
	{name: "unknown scope, DENY: keeps its rules (match)", policies: []TranslatedPolicy{tpol("foo", "p", "MESH", "DENY", one(TranslatedMatch{DestinationPorts: []uint32{80}}))},
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/p"), diags: []string{"enforced meanwhile: the policy applies to every workload in namespace foo (its scope is unreadable)"}},
	{name: "unknown scope, DENY: keeps its rules (no match)", policies: []TranslatedPolicy{tpol("foo", "p", "MESH", "DENY", one(TranslatedMatch{DestinationPorts: []uint32{80}}))},
		req: rq(pBarA, "foo", "x", 81), want: allowDefault, diags: []string{`unknown scope "MESH"`}},
	{name: "ALLOW: port above 65535, the match never matches", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		grp(anyOf(TranslatedMatch{DestinationPorts: []uint32{80, 65616}}, TranslatedMatch{DestinationPorts: []uint32{9000}})))},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch,
		diags: []string{"groups[0].rules[0].matches[0].destinationPorts[1]: invalid port 65616 (want 0..65535); enforced meanwhile: in groups[0] every erroneous match never matches; the policy's other matches still apply to every workload in namespace foo"}},
	{name: "ALLOW: port above 65535, the other match applies", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		grp(anyOf(TranslatedMatch{DestinationPorts: []uint32{80, 65616}}, TranslatedMatch{DestinationPorts: []uint32{9000}})))},
		req: rq(pBarA, "foo", "x", 9000), want: allowBy("foo/p"), diags: []string{"destinationPorts[1]: invalid port 65616"}},
	{name: "DENY: port above 65535, the field is dropped", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "DENY",
		one(TranslatedMatch{DestinationPorts: []uint32{80, 65616}, Namespaces: []StringMatch{exact("bar")}}))},
		req: rq(pBarA, "foo", "x", 9000), want: Decision{Policy: "foo/p", Kind: KindAuthorizationPolicy, Reason: "denied by DENY policy foo/p (groups[0] matched, its erroneous conditions read as matching until it is fixed)"},
		diags: []string{"destinationPorts[1]: invalid port 65616 (want 0..65535); enforced meanwhile: in groups[0] every erroneous condition is read as matching (a broader deny)"}},
	{name: "DENY: port above 65535, the rest still holds", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "DENY",
		one(TranslatedMatch{DestinationPorts: []uint32{80, 65616}, Namespaces: []StringMatch{exact("bar")}}))},
		req: rq(pFooA, "foo", "x", 9000), want: allowDefault, diags: []string{"invalid port 65616"}},
	{name: "ALLOW: unknown string match kind", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{Namespaces: []StringMatch{{Kind: "regex", Value: "b.*"}, exact("bar")}}))},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{`groups[0].rules[0].matches[0].namespaces[0]: unknown string match kind "regex"`}},
	{name: "ALLOW: empty exact value", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{NotNamespaces: []StringMatch{exact("")}}))},
		req: rq("", "foo", "x", 80), want: denyNoMatch, diags: []string{"notNamespaces[0]: empty exact value"}},
	{name: "DENY: empty prefix value is dropped", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "DENY",
		one(TranslatedMatch{NotPrincipals: []StringMatch{prefix("")}, DestinationPorts: []uint32{80}}))},
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/p"), diags: []string{"notPrincipals[0]: empty prefix value"}},
	{name: "ALLOW: presence with a value", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{Principals: []StringMatch{{Kind: StringMatchPresence, Value: "x"}}}))},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{`principals[0]: presence takes no value (got "x")`}},
	{name: "ALLOW: service account without namespace", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{NotServiceAccounts: []ServiceAccountMatch{{ServiceAccount: "a"}}}))},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"notServiceAccounts[0]: service account needs a namespace and a name"}},
	{name: "ALLOW: invalid prefix", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{NotSourceIPs: []netip.Prefix{{}}}))},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"notSourceIps[0]: invalid address prefix"}},
	{name: "ALLOW: a Problem in a match", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}})), "groups[0].rules[0].matches[0].sourceIps[0]")},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"groups[0].rules[0].matches[0].sourceIps[0]: bad"}},
	{name: "DENY: a Problem in a match field drops it", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "DENY",
		one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}, SourceIPs: []netip.Prefix{pfx("192.168.0.0/16")}})), "groups[0].rules[0].matches[0].sourceIps[1]")},
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/p"), diags: []string{"sourceIps[1]: bad; enforced meanwhile: in groups[0] every erroneous condition"}},
	{name: "DENY: a Problem at a match empties it", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "DENY",
		one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}})), "groups[0].rules[0].matches[0]")},
		req: rq(pFooA, "foo", "x", 80), want: denyBy("foo/p"), diags: []string{"matches[0]: bad"}},
	{name: "DENY: a Problem at a Rules entry: the clause holds", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "DENY",
		grp(anyOf(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}}), anyOf(TranslatedMatch{DestinationPorts: []uint32{80}}))), "groups[0].rules[0]")},
		req: rq(pFooA, "foo", "x", 80), want: denyBy("foo/p"), diags: []string{"groups[0].rules[0]: bad"}},
	{name: "DENY: a Problem at a Rules entry: the other clause still applies", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "DENY",
		grp(anyOf(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}}), anyOf(TranslatedMatch{DestinationPorts: []uint32{80}}))), "groups[0].rules[0]")},
		req: rq(pFooA, "foo", "x", 81), want: allowDefault, diags: []string{"groups[0].rules[0]: bad"}},
	{name: "ALLOW: a Problem at a Rules entry: the group never matches", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "ALLOW",
		grp(anyOf(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}}), anyOf(TranslatedMatch{DestinationPorts: []uint32{80}}))), "groups[0].rules[1]")},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"groups[0].rules[1]: bad"}},
	{name: "DENY: a Problem at a group: it matches everything", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "DENY",
		one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}})), "groups[0]")},
		req: rq(pFooA, "foo", "x", 80), want: denyBy("foo/p"), diags: []string{"groups[0]: bad"}},
	{name: "ALLOW: a Problem at a group: the others apply", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "ALLOW",
		allowAllGroup, one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}})), "groups[0]")},
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/p"), diags: []string{"groups[0]: bad"}},
	{name: "a Problem at the resource: denies its scope", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "ALLOW", allowAllGroup), "")},
		req: rq(pBarA, "foo", "x", 80), want: Decision{Policy: "foo/p", Kind: KindAuthorizationPolicy,
			Reason: "denied by AuthorizationPolicy foo/p: it has errors, so it denies every connection to the workloads it selects until it is fixed (see ferry policies)"},
		diags: []string{"AuthorizationPolicy foo/p: bad; enforced meanwhile: the policy denies every connection to every workload in namespace foo, whatever its action"}},
	{name: "a Problem at the scope: the namespace", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", global, "ALLOW", allowAllGroup), "scope")},
		req: rq(pBarA, "bar", "x", 80), want: allowDefault, diags: []string{"scope: bad; enforced meanwhile: the policy applies to every workload in namespace foo (its scope is unreadable) and allows nothing"}},
	{name: "unknown scope in the root namespace: the mesh", policies: []TranslatedPolicy{tpol("istio-system", "p", "GLOBAL_V2", "ALLOW", allowAllGroup)},
		req: rq(pBarA, "bar", "x", 80), want: denyNoMatch,
		diags: []string{"enforced meanwhile: the policy applies to every workload in the mesh (its scope is unreadable) and allows nothing"}},
	{name: "DENY: a Problem at a missing group: it matches everything", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "DENY",
		one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}})), "groups[3].rules[0]")},
		req: rq(pFooA, "foo", "x", 80), want: Decision{Policy: "foo/p", Kind: KindAuthorizationPolicy, Reason: "denied by DENY policy foo/p (groups[3] matched, its erroneous conditions read as matching until it is fixed)"},
		diags: []string{"groups[3].rules[0]: bad; enforced meanwhile: in groups[3] every erroneous condition is read as matching"}},
	{name: "ALLOW: a Problem at a missing group: the others apply", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}})), "groups[3]")},
		req: rq(pBarA, "foo", "x", 80), want: allowBy("foo/p"), diags: []string{"groups[3]: bad"}},
	{name: "ALLOW: a Problem at a missing Rules entry: the group never matches", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}})), "groups[0].rules[1].matches[0]")},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"groups[0].rules[1].matches[0]: bad"}},
	{name: "DENY: a Problem at a missing match: the clause holds", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "DENY",
		grp(anyOf(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}}), anyOf(TranslatedMatch{DestinationPorts: []uint32{80}}))), "groups[0].rules[0].matches[1].principals[0]")},
		req: rq(pFooA, "foo", "x", 80), want: denyBy("foo/p"), diags: []string{"matches[1].principals[0]: bad"}},
	{name: "DENY: a Problem at a missing match: the other clause still applies", policies: []TranslatedPolicy{withProblems(tpol("foo", "p", namespace, "DENY",
		grp(anyOf(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}}), anyOf(TranslatedMatch{DestinationPorts: []uint32{80}}))), "groups[0].rules[0].matches[1]")},
		req: rq(pFooA, "foo", "x", 81), want: allowDefault, diags: []string{"matches[1]: bad"}},
	{name: "dry-run DENY ignored", policies: []TranslatedPolicy{{Name: "dry", Namespace: "foo", Scope: namespace, Action: "DENY", Groups: []TranslatedGroup{allowAllGroup}, DryRun: true}},
		req: rq(pBarA, "foo", "x", 80), want: allowDefault, diags: []string{"dry-run policies are not enforced"}},
	{name: "dry-run ALLOW ignored", policies: []TranslatedPolicy{{Name: "dry", Namespace: "foo", Scope: namespace, Action: "ALLOW", DryRun: true}},
		req: rq(pBarA, "foo", "x", 80), want: allowDefault, diags: []string{"dry-run policies are not enforced"}},
	{name: "policy extensions ignored", policies: []TranslatedPolicy{{Name: "p", Namespace: "foo", Scope: namespace, Action: "DENY", Groups: []TranslatedGroup{allowAllGroup}, Extensions: []string{"x.io/thing"}}},
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/p"), diags: []string{"extensions: warning: Ferry understands no extensions (x.io/thing): ignored"}},
	{name: "ALLOW: a match with extensions never matches", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}, Extensions: []string{"x.io/thing"}}))},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"matches[0].extensions: warning: Ferry cannot evaluate extensions (x.io/thing): within an ALLOW policy this match never matches"}},
	{name: "DENY: a match's extensions are ignored", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "DENY",
		one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}, Extensions: []string{"x.io/thing"}}))},
		req: rq(pFooA, "foo", "x", 80), want: allowDefault, diags: []string{"this DENY match is enforced without them"}},
	{name: "DENY: a match of extensions only matches everything", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "DENY",
		one(TranslatedMatch{Extensions: []string{"x.io/thing"}}))},
		req: rq(pFooA, "foo", "x", 80), want: denyBy("foo/p"), diags: []string{"this DENY match is enforced without them"}},
	{name: "duplicate: the second denies its scope", policies: []TranslatedPolicy{
		tpol("foo", "dup", namespace, "ALLOW", allowAllGroup), tpol("foo", "dup", namespace, "ALLOW", allowAllGroup)},
		req: rq(pBarA, "foo", "x", 80), want: denyBy("foo/dup"),
		diags: []string{"name: duplicate AuthorizationPolicy foo/dup; enforced meanwhile: the second copy denies every connection to every workload in namespace foo"}},
	{name: "principal with spiffe://: warned, never matches", policies: []TranslatedPolicy{tpol("foo", "p", namespace, "ALLOW",
		one(TranslatedMatch{Principals: []StringMatch{exact("spiffe://" + pBarA)}}))},
		req: rq(pBarA, "foo", "x", 80), want: denyNoMatch, diags: []string{"principals[0]: warning: principal \"spiffe://cluster.local/ns/bar/sa/a\" starts with spiffe://"}},

	manyBound("more bound policies than Decide resolves on the stack: a late DENY", "DENY", 18, denyBy("foo/sel-18")),
	manyBound("more bound policies than Decide resolves on the stack: a late ALLOW", "ALLOW", 19, allowBy("foo/sel-19")),
	{name: "malformed request principal", policies: []TranslatedPolicy{staticStrict}, req: rq("x", "foo", "x", 80).bind(staticKey),
		want: Decision{Reason: ReasonMalformedPrincipal}},
}

// manyBound binds a workload to 20 selector policies of action act, of
// which only number hit matches.
func manyBound(name, act string, hit int, want Decision) translatedScenario {
	sc := translatedScenario{name: name, req: rq(pBarA, "foo", "x", 80), want: want}
	var names []string
	for i := range 20 {
		m := TranslatedMatch{Namespaces: []StringMatch{exact("nobody")}}
		if i == hit {
			m = TranslatedMatch{Namespaces: []StringMatch{exact("bar")}}
		}
		sc.policies = append(sc.policies, tpol("foo", "sel-"+strconv.Itoa(i), selector, act, one(m)))
		names = append(names, "foo/sel-"+strconv.Itoa(i))
	}
	sc.req = sc.req.bind(names...)
	return sc
}

func withProblems(tp TranslatedPolicy, fields ...string) TranslatedPolicy {
	for _, f := range fields {
		tp.Problems = append(tp.Problems, FieldError{Field: f, Message: "bad"})
	}
	return tp
}

// TestTranslatedMatchFields ports ztunnel's rbac_test! rows (src/rbac.rs)
// to the translated form directly: one ALLOW policy of one match.
func TestTranslatedMatchFields(t *testing.T) {
	plaintext := Request{SourceIP: ip("127.0.0.1"), Namespace: "dst", DestinationIP: ip("127.0.0.2"), DestinationPort: 8080}
	tls := plaintext
	tls.SourcePrincipal = "td/ns/namespace/sa/account"
	tlsAlt := Request{SourcePrincipal: "td-alt/ns/ns-alt/sa/sa=alt", SourceIP: ip("127.0.0.3"), Namespace: "dst",
		DestinationIP: ip("127.0.0.4"), DestinationPort: 9090}
	sa := []ServiceAccountMatch{{Namespace: "namespace", ServiceAccount: "account"}}
	rows := []struct {
		name                string
		m                   TranslatedMatch
		plain, tlsOK, altOK bool
	}{
		{"namespaces", TranslatedMatch{Namespaces: []StringMatch{exact("namespace")}}, false, true, false},
		{"not_namespaces", TranslatedMatch{NotNamespaces: []StringMatch{exact("namespace")}}, true, false, true},
		{"service_accounts", TranslatedMatch{ServiceAccounts: sa}, false, true, false},
		{"not_service_accounts", TranslatedMatch{NotServiceAccounts: sa}, true, false, true},
		{"principals", TranslatedMatch{Principals: []StringMatch{exact("td/ns/namespace/sa/account")}}, false, true, false},
		{"not_principals", TranslatedMatch{NotPrincipals: []StringMatch{exact("td/ns/namespace/sa/account")}}, true, false, true},
		{"source_ips", TranslatedMatch{SourceIPs: []netip.Prefix{pfx("127.0.0.1/32")}}, true, true, false},
		{"not_source_ips", TranslatedMatch{NotSourceIPs: []netip.Prefix{pfx("127.0.0.1/32")}}, false, false, true},
		{"destination_ips", TranslatedMatch{DestinationIPs: []netip.Prefix{pfx("127.0.0.2/32")}}, true, true, false},
		{"not_destination_ips", TranslatedMatch{NotDestinationIPs: []netip.Prefix{pfx("127.0.0.2/32")}}, false, false, true},
		{"cidr_range", TranslatedMatch{DestinationIPs: []netip.Prefix{pfx("127.0.0.1/24")}}, true, true, true},
		{"destination_ports", TranslatedMatch{DestinationPorts: []uint32{8080}}, true, true, false},
		{"not_destination_ports", TranslatedMatch{NotDestinationPorts: []uint32{8080}}, false, false, true},
		{"prefix", TranslatedMatch{Principals: []StringMatch{prefix("td/ns/namespace/")}}, false, true, false},
		{"suffix", TranslatedMatch{Principals: []StringMatch{suffix("/sa/sa=alt")}}, false, false, true},
		{"presence", TranslatedMatch{Principals: []StringMatch{presence}}, false, true, true},
		{"not presence", TranslatedMatch{NotPrincipals: []StringMatch{presence}}, true, false, false},
		{"namespace presence", TranslatedMatch{Namespaces: []StringMatch{presence}}, false, true, true},
		{"namespace prefix", TranslatedMatch{Namespaces: []StringMatch{prefix("ns-")}}, false, false, true},
		{"namespace suffix", TranslatedMatch{Namespaces: []StringMatch{suffix("space")}}, false, true, false},
		{"values OR", TranslatedMatch{Namespaces: []StringMatch{exact("namespace"), exact("ns-alt")}}, false, true, true},
		{"fields AND", TranslatedMatch{Namespaces: []StringMatch{presence}, DestinationPorts: []uint32{9090}}, false, false, true},
		{"positive and negative", TranslatedMatch{Principals: []StringMatch{presence}, NotNamespaces: []StringMatch{exact("ns-alt")}}, false, true, false},
		{"service account ignores the trust domain", TranslatedMatch{ServiceAccounts: []ServiceAccountMatch{{Namespace: "ns-alt", ServiceAccount: "sa=alt"}}}, false, false, true},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			e, ds := CompileTranslated(Config{}, []TranslatedPolicy{tpol("dst", "p", namespace, "ALLOW", one(row.m))})
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

func TestDecideTranslated(t *testing.T) {
	for _, sc := range translatedScenarios {
		t.Run(sc.name, func(t *testing.T) {
			e, ds := CompileTranslated(Config{}, sc.policies)
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
			if sc.want.Policy != "" && got.Reason != ReasonUnknownBoundPolicy && !strings.Contains(got.Reason, sc.want.Policy) {
				t.Errorf("Reason %q does not name %s", got.Reason, sc.want.Policy)
			}
			if x := e.Explain(sc.req); x.Decision != got {
				t.Errorf("Explain().Decision = %+v, Decide = %+v", x.Decision, got)
			}
		})
	}
}

func TestDecideTranslatedDoesNotAllocate(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts are slow to measure")
	}
	for _, sc := range translatedScenarios {
		e, _ := CompileTranslated(Config{}, sc.policies)
		if n := testing.AllocsPerRun(20, func() { e.Decide(sc.req) }); n != 0 {
			t.Errorf("%s: Decide allocates %v times", sc.name, n)
		}
	}
}

// TestCompileIgnoresBoundPolicies: an Engine from Compile selects by labels
// only, so names from xDS cannot deny through it.
func TestCompileIgnoresBoundPolicies(t *testing.T) {
	aps, _ := load(t, fixtureF1)
	e, _ := Compile(Config{}, aps, nil)
	r := rq(pSleep, "default", "reviews", 9080).bind("default/productpage-viewer", "foo/missing")
	if got := e.Decide(r); got != allowDefault {
		t.Fatalf("Decide = %+v, want %+v", got, allowDefault)
	}
}

func TestExplainTranslated(t *testing.T) {
	e, ds := CompileTranslated(Config{}, []TranslatedPolicy{
		staticStrict,
		tpol("istio-system", "mesh-allow", global, "ALLOW", one(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}})),
		tpol("istio-system", "root-ns", namespace, "DENY", allowAllGroup),
		tpol("foo", "deny-9000", namespace, "DENY", one(TranslatedMatch{DestinationPorts: []uint32{9000}})),
		tpol("foo", "sel", selector, "ALLOW", one(TranslatedMatch{DestinationPorts: []uint32{1}}), one(TranslatedMatch{DestinationPorts: []uint32{9001}})),
		tpol("foo", "unbound", selector, "DENY", allowAllGroup),
		tpol("bar", "other-ns", namespace, "DENY", allowAllGroup),
	})
	checkDiags(t, ds, nil)
	got := e.Explain(rq(pBarA, "foo", "x", 9001).bind(staticKey, "foo/sel"))
	want := Explanation{
		Decision: Decision{Allow: true, Policy: "foo/sel", Kind: KindAuthorizationPolicy, Reason: "allowed by ALLOW policy foo/sel (groups[1] matched)"},
		Policies: []PolicyResult{
			{Policy: "foo/deny-9000", Action: "DENY", Scope: ScopeNamespace, Rule: -1, Rules: 1},
			{Policy: "foo/sel", Action: "ALLOW", Scope: ScopeWorkload, Matched: true, Rule: 1, Rules: 2},
			{Policy: "istio-system/istio_converted_static_strict", Action: "DENY", Scope: ScopeWorkload, Rule: -1, Rules: 1},
			{Policy: "istio-system/mesh-allow", Action: "ALLOW", Scope: ScopeMesh, Matched: true, Rule: 0, Rules: 1},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Explain =\n%+v\nwant\n%+v", got, want)
	}
}

// TestTranslatedErrors: TranslatedPolicyErrors reports errors only.
func TestTranslatedErrors(t *testing.T) {
	tp := tpol("foo", "p", "MESH", "DENY", one(TranslatedMatch{DestinationPorts: []uint32{70000}, Extensions: []string{"x"}}))
	ds := TranslatedPolicyErrors(&tp)
	checkDiags(t, ds, []string{`scope: unknown scope "MESH"`, "destinationPorts[0]: invalid port 70000"})
	good := tpol("foo", "p", namespace, "DENY", allowAllGroup)
	if ds := TranslatedPolicyErrors(&good); len(ds) != 0 {
		t.Fatalf("clean policy: %v", ds)
	}
}

// Equivalence with Compile: istiod's translation of a valid
// AuthorizationPolicy, evaluated with the workload's bound policies, decides
// as Compile does on the policy itself.

// handTranslated pairs scenario fixtures with their translation written out
// by hand, as istiod (pilot/pkg/serviceregistry/ambient/authorization.go)
// produces it.
var handTranslated = []struct {
	name string
	crd  string
	tps  []TranslatedPolicy
}{
	{"F1", fixtureF1, []TranslatedPolicy{tpol("default", "productpage-viewer", selector, "ALLOW",
		one(TranslatedMatch{Principals: []StringMatch{exact(pGateway)}}))}},
	{"F2", fixtureF2, []TranslatedPolicy{tpol("default", "productpage-viewer", selector, "ALLOW",
		one(TranslatedMatch{Principals: []StringMatch{exact(pSleep), exact(pIngress)}}))}},
	// An ALLOW rule with HTTP fields yields no group.
	{"F3 with methods", fixtureF3L7, []TranslatedPolicy{tpol("ambient-demo", "allow-sleep-to-httpbin", selector, "ALLOW")}},
	{"F4", fixtureF4, []TranslatedPolicy{tpol("foo", "tcp-policy", selector, "ALLOW",
		one(TranslatedMatch{DestinationPorts: []uint32{9000, 9001}}))}},
	{"F4 DENY methods+ports", fixtureF4DenyL7, []TranslatedPolicy{tpol("foo", "tcp-policy", selector, "DENY",
		one(TranslatedMatch{DestinationPorts: []uint32{9000}}))}},
	{"F4 DENY methods only", fixtureF4DenyMethodsOnly, []TranslatedPolicy{tpol("foo", "tcp-policy", selector, "DENY",
		one(TranslatedMatch{}))}},
	{"F5 allow-nothing", fixtureF5AllowNothing, []TranslatedPolicy{tpol("foo", "allow-nothing", namespace, "ALLOW")}},
	{"F5 allow-all", fixtureF5AllowAll, []TranslatedPolicy{tpol("foo", "allow-all", namespace, "ALLOW", allowAllGroup)}},
	{"F5 mesh selector", fixtureF5MeshAllowNothingV1, []TranslatedPolicy{tpol("istio-system", "allow-nothing-v1", selector, "ALLOW")}},
	{"mesh-wide ALLOW", ap("istio-system", "allow-sleep", `rules: [{from: [{source: {principals: ["`+pSleep+`"]}}]}]`),
		[]TranslatedPolicy{tpol("istio-system", "allow-sleep", global, "ALLOW", one(TranslatedMatch{Principals: []StringMatch{exact(pSleep)}}))}},
	{"notPrincipals * DENY", ap("foo", "deny-plain", "action: DENY\nrules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]"),
		[]TranslatedPolicy{tpol("foo", "deny-plain", namespace, "DENY", one(TranslatedMatch{NotPrincipals: []StringMatch{presence}}))}},
	{"serviceAccounts bare and qualified", ap("foo", "sa", `rules: [{from: [{source: {serviceAccounts: ["a", "bar/admin"]}}]}]`),
		[]TranslatedPolicy{tpol("foo", "sa", namespace, "ALLOW", one(TranslatedMatch{ServiceAccounts: []ServiceAccountMatch{{"foo", "a"}, {"bar", "admin"}}}))}},
	{"patterns", ap("foo", "pat", `rules: [{from: [{source: {principals: ["cluster.local/ns/bar/*", "*/sa/admin"], notNamespaces: ["*o"]}}]}]`),
		[]TranslatedPolicy{tpol("foo", "pat", namespace, "ALLOW", one(TranslatedMatch{
			Principals: []StringMatch{prefix("cluster.local/ns/bar/"), suffix("/sa/admin")}, NotNamespaces: []StringMatch{suffix("o")}}))}},
	{"rules of from, to and when", ap("foo", "mix", `
		rules:
		- from: [{source: {namespaces: [bar]}}, {source: {ipBlocks: ["10.1.0.0/24"], notIpBlocks: ["10.1.0.5"]}}]
		  to: [{operation: {ports: ["9000"]}}, {operation: {notPorts: ["80", "9001"]}}]
		  when: [{key: destination.ip, values: ["10.2.0.0/16"]}, {key: source.principal, notValues: ["`+pBarAdm+`"]}]
		- when: [{key: destination.port, values: ["9080"]}]`),
		[]TranslatedPolicy{tpol("foo", "mix", namespace, "ALLOW",
			grp(
				anyOf(TranslatedMatch{DestinationPorts: []uint32{9000}}, TranslatedMatch{NotDestinationPorts: []uint32{80, 9001}}),
				anyOf(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}},
					TranslatedMatch{SourceIPs: []netip.Prefix{pfx("10.1.0.0/24")}, NotSourceIPs: []netip.Prefix{pfx("10.1.0.5/32")}}),
				anyOf(TranslatedMatch{DestinationIPs: []netip.Prefix{pfx("10.2.0.0/16")}}),
				anyOf(TranslatedMatch{NotPrincipals: []StringMatch{exact(pBarAdm)}})),
			one(TranslatedMatch{DestinationPorts: []uint32{9080}}))}},
	{"DENY with an HTTP when", ap("foo", "deny-hdr", "action: DENY\nrules: [{from: [{source: {namespaces: [bar]}}], when: [{key: \"request.headers[x]\", values: [\"y\"]}]}]"),
		[]TranslatedPolicy{tpol("foo", "deny-hdr", namespace, "DENY", grp(anyOf(TranslatedMatch{Namespaces: []StringMatch{exact("bar")}}), anyOf(TranslatedMatch{})))}},
}

// boundFor returns the keys istiod attaches to a workload: the selector
// policies it sends (see istiodTranslate) of the workload's namespace and of
// the root namespace whose labels it carries (buildWorkloadPolicies; an
// empty selector attaches nowhere).
func boundFor(root string, aps []AuthorizationPolicy, r Request) []string {
	var out []string
	for _, p := range aps {
		if _, sent := istiodTranslate(root, p); !sent {
			continue
		}
		if p.Spec.Selector == nil || len(p.Spec.Selector.MatchLabels) == 0 ||
			p.Metadata.Namespace != root && p.Metadata.Namespace != r.Namespace {
			continue
		}
		if selects(selectorPairs(p.Spec.Selector.MatchLabels), r.Labels) {
			out = append(out, p.Metadata.Namespace+"/"+p.Metadata.Name)
		}
	}
	slices.Sort(out)
	return out
}

func handGrid() []Request {
	var out []Request
	for _, pr := range []string{"", pGateway, pSleep, pIngress, pBarA, pBarAdm, pFooA, "other.td/ns/bar/sa/a"} {
		for _, ns := range []string{"default", "foo", "bar", "istio-system", "ambient-demo"} {
			for _, labels := range []map[string]string{nil, {"app": "productpage"}, {"app": "tcp-echo"}, {"app": "httpbin"}, {"version": "v1"}} {
				for _, port := range []uint16{80, 9000, 9001, 9080} {
					for _, src := range []string{clientIP, "10.1.0.9", "192.168.0.1"} {
						out = append(out, Request{SourcePrincipal: pr, SourceIP: ip(src), Namespace: ns, Labels: labels,
							DestinationIP: ip(workloadIP), DestinationPort: port})
					}
				}
			}
		}
	}
	return out
}

func TestTranslatedEquivalentByHand(t *testing.T) {
	grid := handGrid()
	for _, c := range handTranslated {
		t.Run(c.name, func(t *testing.T) {
			aps, _ := load(t, c.crd)
			crd, _ := Compile(Config{}, aps, nil)
			tr, ds := CompileTranslated(Config{}, c.tps)
			checkDiags(t, errorsOnly(ds), nil)
			// The mechanical translation agrees with the hand one.
			var mech []TranslatedPolicy
			for _, p := range aps {
				if tp, ok := istiodTranslate(DefaultRootNamespace, p); ok {
					mech = append(mech, tp)
				}
			}
			if !reflect.DeepEqual(normTranslated(mech), normTranslated(c.tps)) {
				t.Errorf("istiodTranslate =\n%+v\nby hand\n%+v", mech, c.tps)
			}
			for _, r := range grid {
				want := crd.Decide(r)
				got := tr.Decide(r.bind(boundFor(DefaultRootNamespace, aps, r)...))
				if got.Allow != want.Allow || got.Policy != want.Policy || got.Kind != want.Kind {
					t.Fatalf("request %+v\ntranslated %+v\ncompiled   %+v", r, got, want)
				}
			}
		})
	}
}

// normTranslated makes empty and nil slices compare equal.
func normTranslated(tps []TranslatedPolicy) string {
	b, _ := json.Marshal(tps)
	return string(b)
}

// istiodTranslate mirrors istiod's convertAuthorizationPolicy and handleRule
// (pilot/pkg/serviceregistry/ambient/authorization.go) on a valid policy; ok
// is false for a policy istiod does not send to node proxies.
func istiodTranslate(root string, ap AuthorizationPolicy) (TranslatedPolicy, bool) {
	if v, _ := strconv.ParseBool(ap.Metadata.Annotations[dryRunAnnotation]); v {
		return TranslatedPolicy{}, false // not sent unless dry-run support is enabled
	}
	spec := &ap.Spec
	if spec.TargetRef != nil || len(spec.TargetRefs) > 0 {
		return TranslatedPolicy{}, false
	}
	tp := TranslatedPolicy{Name: ap.Metadata.Name, Namespace: ap.Metadata.Namespace, Scope: selector}
	if spec.Selector == nil {
		tp.Scope = namespace
		if tp.Namespace == root {
			tp.Scope = global
		}
	}
	switch spec.Action {
	case "", "ALLOW":
		tp.Action = "ALLOW"
	case "DENY":
		tp.Action = "DENY"
	default:
		return TranslatedPolicy{}, false
	}
	for _, r := range spec.Rules {
		if rules, ok := istiodHandleRule(tp.Action == "DENY", r, tp.Namespace); ok {
			tp.Groups = append(tp.Groups, TranslatedGroup{Rules: rules})
		}
	}
	return tp, true
}

func istiodHandleRule(deny bool, r Rule, ns string) ([]TranslatedRules, bool) {
	l7 := false
	var to, from []TranslatedMatch
	for _, t := range r.To {
		op := t.Operation
		l7 = l7 || len(op.Hosts)+len(op.NotHosts)+len(op.Methods)+len(op.NotMethods)+len(op.Paths)+len(op.NotPaths) > 0
		to = append(to, TranslatedMatch{DestinationPorts: istiodPorts(op.Ports), NotDestinationPorts: istiodPorts(op.NotPorts)})
	}
	for _, f := range r.From {
		s := f.Source
		l7 = l7 || len(s.RemoteIPBlocks)+len(s.NotRemoteIPBlocks)+len(s.RequestPrincipals)+len(s.NotRequestPrincipals) > 0
		from = append(from, TranslatedMatch{
			SourceIPs: istiodIPs(s.IPBlocks), NotSourceIPs: istiodIPs(s.NotIPBlocks),
			Namespaces: istiodStrings(s.Namespaces), NotNamespaces: istiodStrings(s.NotNamespaces),
			ServiceAccounts: istiodSAs(s.ServiceAccounts, ns), NotServiceAccounts: istiodSAs(s.NotServiceAccounts, ns),
			Principals: istiodStrings(s.Principals), NotPrincipals: istiodStrings(s.NotPrincipals),
		})
	}
	var rules []TranslatedRules
	if len(to) > 0 {
		rules = append(rules, TranslatedRules{Matches: to})
	}
	if len(from) > 0 {
		rules = append(rules, TranslatedRules{Matches: from})
	}
	for _, w := range r.When {
		var m TranslatedMatch
		switch w.Key {
		case "source.namespace":
			m.Namespaces, m.NotNamespaces = istiodStrings(w.Values), istiodStrings(w.NotValues)
		case "source.principal":
			m.Principals, m.NotPrincipals = istiodStrings(w.Values), istiodStrings(w.NotValues)
		case "source.ip":
			m.SourceIPs, m.NotSourceIPs = istiodIPs(w.Values), istiodIPs(w.NotValues)
		case "destination.port":
			m.DestinationPorts, m.NotDestinationPorts = istiodPorts(w.Values), istiodPorts(w.NotValues)
		case "destination.ip":
			m.DestinationIPs, m.NotDestinationIPs = istiodIPs(w.Values), istiodIPs(w.NotValues)
		default:
			l7 = true
		}
		rules = append(rules, TranslatedRules{Matches: []TranslatedMatch{m}})
	}
	if !deny && l7 {
		return nil, false // an ALLOW rule with HTTP fields is dropped
	}
	return rules, true
}

func istiodStrings(vs []string) []StringMatch {
	var out []StringMatch
	for _, v := range vs {
		switch {
		case v == "*":
			out = append(out, presence)
		case strings.HasPrefix(v, "*"):
			out = append(out, suffix(v[1:]))
		case strings.HasSuffix(v, "*"):
			out = append(out, prefix(v[:len(v)-1]))
		default:
			out = append(out, exact(v))
		}
	}
	return out
}

func istiodSAs(vs []string, ns string) []ServiceAccountMatch {
	var out []ServiceAccountMatch
	for _, v := range vs {
		if n, sa, ok := strings.Cut(v, "/"); ok {
			out = append(out, ServiceAccountMatch{n, sa})
		} else {
			out = append(out, ServiceAccountMatch{ns, v})
		}
	}
	return out
}

// istiodPorts drops what istiod's stringToPort drops.
func istiodPorts(vs []string) []uint32 {
	var out []uint32
	for _, v := range vs {
		if p, err := strconv.ParseUint(v, 10, 32); err == nil && p <= 65535 {
			out = append(out, uint32(p))
		}
	}
	return out
}

// istiodIPs is istiod's stringToIP, then the decoder's Address → Prefix.
func istiodIPs(vs []string) []netip.Prefix {
	var out []netip.Prefix
	for _, v := range vs {
		if strings.Contains(v, "/") {
			if p, err := netip.ParsePrefix(v); err == nil {
				out = append(out, p)
			}
		} else if a, err := netip.ParseAddr(v); err == nil {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

// checkTranslatedEquivalent compiles the valid policies of a generated set
// both ways and compares every decision on the request grid, counting the
// kinds of outcome in outcomes (when not nil).
func checkTranslatedEquivalent(t *testing.T, data []byte, outcomes map[string]int) {
	t.Helper()
	aps, _ := (&gen{b: data}).policies()
	_, ds := Compile(Config{}, aps, nil)
	aps, _ = accepted(aps, nil, ds)
	crd, _ := Compile(Config{}, aps, nil)
	var tps []TranslatedPolicy
	for _, p := range aps {
		if tp, ok := istiodTranslate(DefaultRootNamespace, p); ok {
			tps = append(tps, tp)
		}
	}
	tr, tds := CompileTranslated(Config{}, tps)
	if errs := errorsOnly(tds); len(errs) > 0 {
		t.Fatalf("translation of valid policies has errors: %v", errs)
	}
	for r := range genRequests() {
		want := crd.Decide(r)
		got := tr.Decide(r.bind(boundFor(DefaultRootNamespace, aps, r)...))
		if got.Allow != want.Allow || got.Policy != want.Policy || got.Kind != want.Kind {
			js, _ := json.MarshalIndent(struct {
				APs []AuthorizationPolicy
				TPs []TranslatedPolicy
			}{aps, tps}, "", " ")
			t.Fatalf("request %+v\ntranslated %+v\ncompiled   %+v\n%s", r, got, want, js)
		}
		if outcomes != nil {
			switch {
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
}

// TestTranslatedMatchesCompile runs FuzzTranslatedMatchesCompile's check on
// seeded pseudo-random policy sets in every `go test`.
func TestTranslatedMatchesCompile(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	outcomes := map[string]int{}
	for range 400 {
		data := make([]byte, 64+rng.IntN(192))
		for i := range data {
			data[i] = byte(rng.UintN(256))
		}
		checkTranslatedEquivalent(t, data, outcomes)
	}
	t.Logf("outcomes: %v", outcomes)
	for _, k := range []string{"allowed by policy", "denied by policy", "no allow policy", "no allow matched"} {
		if outcomes[k] < 1000 {
			t.Errorf("only %d decisions %q: the generator is too narrow", outcomes[k], k)
		}
	}
}

func FuzzTranslatedMatchesCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x01\x01\x00\x02\x03\x02\x01\x00\x00\x02\x01\x04\x00\x02\x02\x01"))
	f.Add([]byte("\x05\x02\x02\x01\x02\x03\x01\x02\x00\x01\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a"))
	f.Fuzz(func(t *testing.T, data []byte) { checkTranslatedEquivalent(t, data, nil) })
}

// FuzzCompileTranslated feeds arbitrary JSON policies to CompileTranslated:
// it must never panic, always return an Engine, and that Engine must answer,
// also for workloads bound to known and unknown names.
func FuzzCompileTranslated(f *testing.F) {
	f.Add(`[{"name":"a","namespace":"foo","scope":"NAMESPACE","action":"DENY","groups":[{"rules":[{"matches":[{"destinationPorts":[70000],"sourceIps":["10.0.0.0/8"]}]}]}]}]`)
	f.Add(`[{"name":"a","namespace":"istio-system","scope":"WORKLOAD_SELECTOR","action":"ALLOW","groups":[{},{"rules":[{}]},{"rules":[{"matches":[{},{"principals":[{"kind":"presence"}],"extensions":["x"]}]}]}]}]`)
	f.Add(`[{"name":"","namespace":"","scope":"X","action":"Y","dryRun":true,"extensions":["e"]},{"name":"a","namespace":"foo","scope":"GLOBAL","action":"ALLOW","groups":[{"rules":[{"matches":[{"notNamespaces":[{"kind":"regex","value":""}],"serviceAccounts":[{"namespace":"","serviceAccount":"a"}]}]}]}]}]`)
	f.Add(`[{"name":"a","namespace":"foo","scope":"NAMESPACE","action":"ALLOW","groups":[{"rules":[{"matches":[{"destinationIps":[""],"notSourceIps":["::ffff:10.0.0.0/104"]}]}]}]},{"name":"a","namespace":"foo","scope":"NAMESPACE","action":"DENY"}]`)
	f.Fuzz(func(t *testing.T, in string) {
		var tps []TranslatedPolicy
		if json.Unmarshal([]byte(in), &tps) != nil {
			return
		}
		// Problems at every depth, from the shape of the input.
		for i := range tps {
			if i%2 == 1 {
				tps[i].Problems = append(tps[i].Problems, FieldError{Field: "groups[0].rules[0].matches[" + strconv.Itoa(i) + "].principals[0]", Message: "bad"})
			}
		}
		e, ds := CompileTranslated(Config{}, tps)
		if e == nil {
			t.Fatal("CompileTranslated returned a nil Engine")
		}
		for _, d := range ds {
			if d.Kind != KindAuthorizationPolicy || d.Message == "" || !strings.HasPrefix(d.Error(), "authz: ") {
				t.Fatalf("bad diagnostic %#v", d)
			}
		}
		var names []string
		for _, tp := range tps {
			names = append(names, tp.Namespace+"/"+tp.Name)
		}
		for _, pr := range reqPrincipals {
			for _, ns := range []string{"foo", "istio-system", ""} {
				for _, bound := range [][]string{nil, names, {"foo/unknown"}} {
					r := Request{SourcePrincipal: pr, SourceIP: ip(clientIP), Namespace: ns, DestinationIP: ip(workloadIP),
						DestinationPort: 80, BoundPolicies: bound}
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

// breakTranslated introduces one error into one policy of a valid
// translated set, as a decoder or a newer istiod could: a value out of
// range, an unknown kind, enum or extension, or a Problem at some depth
// (the entry there left as it was, or left out). It returns false when the
// set has nothing to break.
func (g *gen) breakTranslated(tps []TranslatedPolicy) bool {
	if len(tps) == 0 {
		return false
	}
	tp := &tps[g.n(len(tps))]
	problem := func(field string) { tp.Problems = append(tp.Problems, FieldError{Field: field, Message: "bad"}) }
	// A path into the policy, possibly one index past its end.
	gi, ri, mi := g.n(len(tp.Groups)+1), 0, 0
	var m *TranslatedMatch
	if gi < len(tp.Groups) {
		ri = g.n(len(tp.Groups[gi].Rules) + 1)
		if ri < len(tp.Groups[gi].Rules) {
			mi = g.n(len(tp.Groups[gi].Rules[ri].Matches) + 1)
			if mi < len(tp.Groups[gi].Rules[ri].Matches) {
				m = &tp.Groups[gi].Rules[ri].Matches[mi]
			}
		}
	}
	switch g.n(9) {
	case 0:
		tp.Action = "AUDIT"
	case 1:
		tp.Scope = "SCOPE_V2"
	case 2:
		problem("")
	case 3:
		problem("groups[" + strconv.Itoa(gi) + "]")
	case 4:
		problem("groups[" + strconv.Itoa(gi) + "].rules[" + strconv.Itoa(ri) + "]")
	case 5:
		problem(matchPath(gi, ri, mi) + "." + g.pick(translatedMatchFields) + "[0]")
	case 6: // a match's field unreadable, so the decoder left it out
		if m == nil {
			problem(matchPath(gi, ri, mi))
			return true
		}
		name := g.pick(translatedMatchFields)
		dropMatchField(m, name)
		problem(matchPath(gi, ri, mi) + "." + name)
	case 7:
		if m == nil {
			tp.Extensions = append(tp.Extensions, "x")
			return true
		}
		m.Extensions = append(m.Extensions, "x")
	default:
		if m == nil {
			tp.Action = "DENNY"
			return true
		}
		switch {
		case len(m.DestinationPorts) > 0:
			m.DestinationPorts[0] = 65536 + m.DestinationPorts[0]
		case len(m.NotPrincipals) > 0:
			m.NotPrincipals[0].Kind = "regex"
		case len(m.Namespaces) > 0:
			m.Namespaces[0].Value = ""
		default:
			m.NotSourceIPs = append(m.NotSourceIPs, netip.Prefix{})
		}
	}
	return true
}

// checkTranslatedFailClosed: breaking a valid translated set never turns a
// denied connection into an allowed one.
func checkTranslatedFailClosed(t *testing.T, data, breaks []byte) {
	t.Helper()
	aps, _ := (&gen{b: data}).policies()
	_, ds := Compile(Config{}, aps, nil)
	aps, _ = accepted(aps, nil, ds)
	var tps []TranslatedPolicy
	for _, p := range aps {
		if tp, ok := istiodTranslate(DefaultRootNamespace, p); ok {
			tps = append(tps, tp)
		}
	}
	before, _ := CompileTranslated(Config{}, tps)
	js, _ := json.Marshal(tps)
	var broken []TranslatedPolicy
	_ = json.Unmarshal(js, &broken)
	if !(&gen{b: breaks}).breakTranslated(broken) {
		return
	}
	after, _ := CompileTranslated(Config{}, broken)
	for r := range genRequests() {
		r = r.bind(boundFor(DefaultRootNamespace, aps, r)...)
		if b, a := before.Decide(r), after.Decide(r); !b.Allow && a.Allow {
			out, _ := json.MarshalIndent(struct {
				Before, After []TranslatedPolicy
				Problems      [][]FieldError
			}{tps, broken, problemsOf(broken)}, "", " ")
			t.Fatalf("an error widened access: %+v\nbefore %+v\nafter  %+v\n%s", r, b, a, out)
		}
	}
}

func problemsOf(tps []TranslatedPolicy) [][]FieldError {
	var out [][]FieldError
	for _, tp := range tps {
		out = append(out, tp.Problems)
	}
	return out
}

func TestTranslatedFailClosedSeeded(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for range 600 {
		data := make([]byte, 64+rng.IntN(192))
		for i := range data {
			data[i] = byte(rng.UintN(256))
		}
		breaks := make([]byte, 8)
		for i := range breaks {
			breaks[i] = byte(rng.UintN(256))
		}
		checkTranslatedFailClosed(t, data, breaks)
	}
}

func FuzzTranslatedFailClosed(f *testing.F) {
	f.Add([]byte{}, []byte{0})
	f.Add([]byte("\x01\x01\x00\x02\x03\x02\x01\x00\x00\x02\x01\x04\x00\x02\x02\x01"), []byte{0, 0, 0, 0, 5, 1, 1, 0})
	f.Add([]byte("\x05\x02\x02\x01\x02\x03\x01\x02\x00\x01\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a"), []byte{1, 1, 0, 0, 6, 0, 0})
	f.Fuzz(checkTranslatedFailClosed)
}

// refTranslatedDecide evaluates valid translated policies as ztunnel does
// (src/state.rs assert_rbac, src/rbac.rs Authorization::matches), read
// plainly on every call, except where Ferry documents otherwise: a Rules
// entry without matches matches nothing in an ALLOW policy.
func refTranslatedDecide(tps []TranslatedPolicy, r Request) refResult {
	principal := strings.TrimPrefix(r.SourcePrincipal, "spiffe://")
	env := refEnv{hasID: principal != "", principal: principal, src: r.SourceIP.Unmap(), dst: r.DestinationIP.Unmap(), port: r.DestinationPort}
	if env.hasID {
		parts := strings.Split(principal, "/")
		if len(parts) != 5 || parts[0] == "" || parts[1] != "ns" || parts[2] == "" || parts[3] != "sa" || parts[4] == "" {
			return refResult{}
		}
		env.ns, env.sa = parts[2], parts[4]
	}
	known := map[string]bool{}
	for _, tp := range tps {
		known[tp.Namespace+"/"+tp.Name] = true
	}
	for _, b := range r.BoundPolicies {
		if !known[b] {
			return refResult{policy: b, kind: KindAuthorizationPolicy}
		}
	}
	var allows, denies []TranslatedPolicy
	for _, tp := range tps {
		key := tp.Namespace + "/" + tp.Name
		applies := tp.Scope == global || tp.Scope == namespace && tp.Namespace == r.Namespace || slices.Contains(r.BoundPolicies, key)
		if !applies || tp.DryRun {
			continue
		}
		if tp.Action == "DENY" {
			denies = append(denies, tp)
		} else {
			allows = append(allows, tp)
		}
	}
	byKey := func(a, b TranslatedPolicy) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	}
	slices.SortFunc(denies, byKey)
	slices.SortFunc(allows, byKey)
	for _, tp := range denies {
		if env.translatedMatches(tp) {
			return refResult{policy: tp.Namespace + "/" + tp.Name, kind: KindAuthorizationPolicy}
		}
	}
	if len(allows) == 0 {
		return refResult{allow: true}
	}
	for _, tp := range allows {
		if env.translatedMatches(tp) {
			return refResult{allow: true, policy: tp.Namespace + "/" + tp.Name, kind: KindAuthorizationPolicy}
		}
	}
	return refResult{}
}

func (env refEnv) translatedMatches(tp TranslatedPolicy) bool {
	for _, g := range tp.Groups {
		all := true
		for _, rules := range g.Rules {
			if len(rules.Matches) == 0 {
				all = all && tp.Action == "DENY"
				continue
			}
			any := false
			for _, m := range rules.Matches {
				if matchIsEmpty(&m) {
					continue
				}
				any = any || env.smIn(m.Principals, true, true) && !env.smIn(m.NotPrincipals, true, false) &&
					env.smIn(m.Namespaces, false, true) && !env.smIn(m.NotNamespaces, false, false) &&
					env.samIn(m.ServiceAccounts, true) && !env.samIn(m.NotServiceAccounts, false) &&
					prefixIn(m.SourceIPs, env.src, true) && !prefixIn(m.NotSourceIPs, env.src, false) &&
					prefixIn(m.DestinationIPs, env.dst, true) && !prefixIn(m.NotDestinationIPs, env.dst, false) &&
					portValueIn(m.DestinationPorts, env.port, true) && !portValueIn(m.NotDestinationPorts, env.port, false)
			}
			all = all && any
		}
		if all {
			return true
		}
	}
	return false
}

func (env refEnv) smIn(ms []StringMatch, principal, ifEmpty bool) bool {
	if len(ms) == 0 {
		return ifEmpty
	}
	v := env.ns
	if principal {
		if !env.hasID {
			return false
		}
		v = env.principal
	}
	for _, m := range ms {
		switch m.Kind {
		case StringMatchExact:
			if v == m.Value {
				return true
			}
		case StringMatchPrefix:
			if strings.HasPrefix(v, m.Value) {
				return true
			}
		case StringMatchSuffix:
			if strings.HasSuffix(v, m.Value) {
				return true
			}
		case StringMatchPresence:
			if v != "" {
				return true
			}
		}
	}
	return false
}

func (env refEnv) samIn(ms []ServiceAccountMatch, ifEmpty bool) bool {
	if len(ms) == 0 {
		return ifEmpty
	}
	for _, m := range ms {
		if env.hasID && m.Namespace == env.ns && m.ServiceAccount == env.sa {
			return true
		}
	}
	return false
}

func prefixIn(ps []netip.Prefix, a netip.Addr, ifEmpty bool) bool {
	if len(ps) == 0 {
		return ifEmpty
	}
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func portValueIn(ps []uint32, port uint16, ifEmpty bool) bool {
	if len(ps) == 0 {
		return ifEmpty
	}
	return slices.Contains(ps, uint32(port))
}

var (
	genStringMatches = []StringMatch{exact("foo"), exact("bar"), prefix("f"), suffix("r"), presence, exact("a*"),
		exact("cluster.local/ns/foo/sa/a"), exact("cluster.local/ns/bar/sa/b"), prefix("cluster.local/ns/foo/"), suffix("/sa/a")}
	genSAMatches = []ServiceAccountMatch{{"foo", "a"}, {"bar", "b"}, {"istio-system", "a"}}
	genPrefixes  = []netip.Prefix{pfx("10.0.0.0/8"), pfx("10.1.0.5/32"), pfx("10.1.0.9/24"), pfx("fd00::/8"), pfx("192.168.0.1/32"), pfx("10.2.0.7/32"), pfx("0.0.0.0/0")}
	genPortVals  = []uint32{80, 8080, 9000, 0}
	genScopes    = []string{global, namespace, selector, selector}
)

// translatedPolicies turns fuzz bytes into valid translated policies of
// any shape the types allow, istiod's or not.
func (g *gen) translatedPolicies() []TranslatedPolicy {
	someSM := func() []StringMatch {
		var out []StringMatch
		for range g.n(3) {
			out = append(out, genStringMatches[g.n(len(genStringMatches))])
		}
		return out
	}
	var tps []TranslatedPolicy
	for i := range g.n(8) {
		tp := TranslatedPolicy{Name: "tp" + strconv.Itoa(i), Namespace: g.pick(genNamespaces), Scope: g.pick(genScopes),
			Action: g.pick([]string{"ALLOW", "DENY"}), DryRun: g.n(10) == 0}
		for range g.n(3) {
			var grp TranslatedGroup
			for range g.n(3) {
				var rules TranslatedRules
				for range g.n(3) {
					var m TranslatedMatch
					for range 1 + g.n(2) {
						switch g.n(8) {
						case 0:
							m.Principals, m.NotPrincipals = someSM(), someSM()
						case 1:
							m.Namespaces, m.NotNamespaces = someSM(), someSM()
						case 2:
							for range g.n(3) {
								m.ServiceAccounts = append(m.ServiceAccounts, genSAMatches[g.n(len(genSAMatches))])
							}
							m.NotServiceAccounts = append(m.NotServiceAccounts, genSAMatches[g.n(len(genSAMatches))])
						case 3, 4:
							for range g.n(3) {
								m.SourceIPs = append(m.SourceIPs, genPrefixes[g.n(len(genPrefixes))])
								m.NotDestinationIPs = append(m.NotDestinationIPs, genPrefixes[g.n(len(genPrefixes))])
							}
						case 5:
							for range g.n(3) {
								m.NotSourceIPs = append(m.NotSourceIPs, genPrefixes[g.n(len(genPrefixes))])
								m.DestinationIPs = append(m.DestinationIPs, genPrefixes[g.n(len(genPrefixes))])
							}
						default:
							for range g.n(3) {
								m.DestinationPorts = append(m.DestinationPorts, genPortVals[g.n(len(genPortVals))])
							}
							if g.n(3) == 0 {
								m.NotDestinationPorts = append(m.NotDestinationPorts, genPortVals[g.n(len(genPortVals))])
							}
						}
					}
					rules.Matches = append(rules.Matches, m)
				}
				grp.Rules = append(grp.Rules, rules)
			}
			tp.Groups = append(tp.Groups, grp)
		}
		tps = append(tps, tp)
	}
	return tps
}

// bindGenerated binds a request's workload to some of the generated
// WORKLOAD_SELECTOR policies (and, for app=b, to one istiod has not sent).
func bindGenerated(tps []TranslatedPolicy, r Request) Request {
	var out []string
	for i, tp := range tps {
		if tp.Scope == selector && (r.Labels["app"] == "a" && i%2 == 0 || r.Labels["version"] == "a" && i%2 == 1) {
			out = append(out, tp.Namespace+"/"+tp.Name)
		}
	}
	if r.Labels["app"] == "b" && r.Labels["version"] == "a" && r.DestinationPort == 9000 {
		out = append(out, "foo/not-sent")
	}
	return r.bind(out...)
}

func checkTranslatedReference(t *testing.T, data []byte, outcomes map[string]int) {
	t.Helper()
	tps := (&gen{b: data}).translatedPolicies()
	e, ds := CompileTranslated(Config{}, tps)
	if errs := errorsOnly(ds); len(errs) > 0 {
		t.Fatalf("generated policies have errors: %v", errs)
	}
	for r := range genRequests() {
		r = bindGenerated(tps, r)
		got := e.Decide(r)
		want := refTranslatedDecide(tps, r)
		// The same names resolved once, as the agent does per workload.
		rb := r
		rb.Binding = e.Bind(r.BoundPolicies)
		if bound := e.Decide(rb); bound != got {
			t.Fatalf("request %+v: with its Binding %+v, without %+v", r, bound, got)
		}
		if got.Allow != want.allow || got.Policy != want.policy || got.Kind != want.kind {
			js, _ := json.MarshalIndent(tps, "", " ")
			t.Fatalf("request %+v\nengine    %+v\nreference %+v\npolicies %s", r, got, want, js)
		}
		if outcomes != nil {
			switch {
			case got.Reason == ReasonUnknownBoundPolicy:
				outcomes["unknown bound"]++
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
}

// TestDecideTranslatedMatchesReference runs FuzzDecideTranslated's check
// on seeded pseudo-random inputs in every `go test`.
func TestDecideTranslatedMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	outcomes := map[string]int{}
	for range 300 {
		data := make([]byte, 64+rng.IntN(448))
		for i := range data {
			data[i] = byte(rng.UintN(256))
		}
		checkTranslatedReference(t, data, outcomes)
	}
	t.Logf("outcomes: %v", outcomes)
	for _, k := range []string{"unknown bound", "allowed by policy", "denied by policy", "no allow policy", "no allow matched"} {
		if outcomes[k] < 500 {
			t.Errorf("only %d decisions %q: the generator is too narrow", outcomes[k], k)
		}
	}
}

// FuzzDecideTranslated compares the Engine with refTranslatedDecide on
// generated translated policies of every shape.
func FuzzDecideTranslated(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x03\x00\x02\x01\x02\x02\x02\x01\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"))
	f.Add([]byte("\x07\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f"))
	f.Fuzz(func(t *testing.T, data []byte) { checkTranslatedReference(t, data, nil) })
}

// BenchmarkDecideTranslated is BenchmarkDecide's in-scope=N case in xDS
// form: half the policies are bound to the workload by name.
func BenchmarkDecideTranslated(b *testing.B) {
	for _, n := range []int{1, 100, 10000} {
		b.Run("in-scope="+strconv.Itoa(n), func(b *testing.B) {
			aps, last := inScope(n)
			var tps []TranslatedPolicy
			for _, p := range aps {
				tp, _ := istiodTranslate(DefaultRootNamespace, p)
				tps = append(tps, tp)
			}
			e, ds := CompileTranslated(Config{}, tps)
			for _, d := range ds {
				b.Fatal(d)
			}
			r := Request{SourcePrincipal: last, SourceIP: ip("198.18.1.1"), Namespace: "app",
				DestinationIP: ip("198.18.2.2"), DestinationPort: 8080}
			r = r.bind(boundFor(DefaultRootNamespace, aps, Request{Namespace: "app", Labels: map[string]string{"app": "x"}})...)
			r.Binding = e.Bind(r.BoundPolicies) // as the agent does, once per workload
			if d := e.Decide(r); !d.Allow || d.Policy == "" {
				b.Fatalf("Decide = %+v, want allowed by a policy", d)
			}
			b.ReportAllocs()
			for b.Loop() {
				e.Decide(r)
			}
		})
	}
}
