// Package authz is Ferry's L4 authorization engine: it compiles Istio
// AuthorizationPolicy and PeerAuthentication objects into an Engine whose
// Decide method answers whether one connection is allowed, by which policy and
// why.
//
// The package is pure: standard library only, no I/O, no logging, no clock.
//
// # Semantics
//
// Decide gives the answer Istio's ambient node proxy (ztunnel) gives for the
// same objects, as istiod translates them (pilot/pkg/serviceregistry/ambient)
// and ztunnel evaluates them (src/rbac.rs, src/state.rs):
//
//   - A connection without a peer identity (plaintext) is denied when the
//     effective PeerAuthentication mode on its port is STRICT. The mode comes
//     from the oldest selector policy of the workload's namespace that selects
//     it (portLevelMtls first, then mtls), else the oldest namespace policy,
//     else the oldest root-namespace policy; UNSET inherits, nothing set means
//     PERMISSIVE, DISABLE acts as PERMISSIVE, and selector policies in the root
//     namespace are ignored.
//   - Then any matching DENY policy denies; if no ALLOW policy selects the
//     workload the connection is allowed; otherwise some ALLOW policy must
//     match. `spec: {}` allows nothing, `rules: [{}]` everything.
//   - Policies in the root namespace (istio-system unless Config says
//     otherwise) apply in every namespace; a selector selects workloads by
//     label; an empty selector selects nothing (as in ambient); targetRefs,
//     AUDIT, CUSTOM and dry-run policies are ignored with a warning.
//   - Principals are compared without "spiffe://" (exact, prefix*, *suffix,
//     and "*" for any identity); without a peer identity no principal,
//     namespace or service account matches, so their not* forms do.
//     serviceAccounts "sa" means the policy's namespace.
//   - HTTP-only fields: an ALLOW rule using one is dropped (it never matches);
//     in a DENY rule they are removed, and an entry left empty never matches,
//     so a DENY rule whose from, to or when clause held only HTTP fields has
//     no effect (istiod's translation after istio/istio#61126, PR #61166).
//     Every such case is a warning Diagnostic.
//   - Invalid objects (what Istio's validating webhook rejects, principals
//     that can never match: with "spiffe://", a wildcard inside, or not of
//     the form td/ns/NS/sa/SA, and the decoder's Problems: unknown,
//     duplicate or mistyped fields) get an error Diagnostic naming the
//     object and field, and are read fail-closed, never left out (leaving
//     out an ALLOW policy would let every caller in): an erroneous ALLOW
//     rule matches nothing, an erroneous DENY condition matches anything,
//     an object whose intent is unknown denies what it selects, and a
//     PeerAuthentication with an error is STRICT. failclosed.go has the
//     whole reading; Diagnostic.Effect says which applied.
//
// Where istiod's PeerAuthentication conversion loses a port-level setting
// (see peerAuthFor), Decide follows the documented precedence instead.
//
// # Translated policies (xDS mode)
//
// CompileTranslated compiles the form istiod sends node proxies
// (istio.security.Authorization, mirrored by TranslatedPolicy) into the same
// Engine: a group is a rule, its Rules entries are clauses, their matches are
// entries. GLOBAL policies apply to every workload, NAMESPACE ones to their
// namespace's (the root namespace included, and only it), WORKLOAD_SELECTOR
// ones only to workloads whose Request.BoundPolicies list them; labels play no
// part. PeerAuthentication arrives as DENY policies (STRICT is notPrincipals
// presence). Matching is ztunnel's, with its fail-open corners closed: a
// bound policy the Engine does not hold denies every connection (ztunnel
// skips it), a policy with an unknown scope or action is read fail-closed
// (ztunnel drops it), and in an ALLOW policy a Rules entry without matches
// matches nothing (ztunnel: anything; istiod never sends one). Extensions
// are not understood: an ALLOW match carrying one never matches, a DENY match
// is enforced without it. translated.go has the whole fail-closed reading.
//
// # Cost
//
// Compile indexes policies by namespace and, for selector policies, by one
// selector label, so Decide only looks at policies that can select the
// workload. Rules are laid out in flat arrays in (namespace, name) order,
// and a policy whose every rule names exact principals carries a Bloom filter
// that lets Decide skip it for other peers. Decide does not allocate.
package authz
