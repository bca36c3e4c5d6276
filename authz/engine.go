package authz

import (
	"net/netip"
	"slices"
	"strconv"
)

// Engine answers authorization questions for one compiled policy set. It is
// immutable: Decide and Explain may be called from many goroutines at once.
// Obtain one from Compile or CompileTranslated; a policy change means
// compiling a new Engine. The zero Engine holds no policy, so it allows every
// connection.
type Engine struct {
	root string
	prog prog

	policies []*policy // all compiled AuthorizationPolicies, by (namespace, name)
	global   scopeSet  // policies applying in every namespace (root-namespace or GLOBAL ones)
	byNS     map[string]*scopeSet

	// translated marks an Engine from CompileTranslated; byKey then holds
	// every policy it knows by "namespace/name" (an empty list for one it
	// knows but does not enforce), for Request.BoundPolicies.
	translated bool
	byKey      map[string][]*policy

	meshPA     *peerAuth // oldest mesh-level policy
	meshRootPA *peerAuth // same, for workloads in the root namespace
	nsPA       map[string]*peerAuth
	wlPA       map[string]*paIndex
	wlPAAll    map[string]*peerAuth // oldest workload-level policy selecting every workload (fail-closed)
}

// scopeSet holds the AuthorizationPolicies of one namespace (or those that
// apply in every namespace), split by action and scope.
type scopeSet struct {
	allow, deny       policyList // no selector
	selAllow, selDeny selIndex[*selGroup]
	// groups finds a selector's group while compiling; nil after.
	groups map[string]*selGroup
}

// selGroup is the policies of one action with the same selector.
type selGroup struct {
	rest  []labelKV // the selector but its first label (its bucket's key)
	first int32     // the lowest ord in list
	list  policyList
}

// policyList is policies in ascending ord. A long one also indexes them by
// the exact peer principals (or namespaces) they need, so that Decide reads
// only the policies a peer can match and those open to every peer, however
// many policies the workload has.
type policyList struct {
	all         []*policy
	byPrincipal map[string][]*policy // needPrincipal; nil while the list is short
	byNamespace map[string][]*policy // needNamespace
	open        []*policy            // the others
}

// principalIndexMin is the length from which a policyList is indexed.
var principalIndexMin = 16

func (l *policyList) add(p *policy) { l.all = append(l.all, p) }

// seal builds the principal index of a long list.
func (l *policyList) seal() {
	if len(l.all) < principalIndexMin {
		return
	}
	l.byPrincipal, l.byNamespace = map[string][]*policy{}, map[string][]*policy{}
	for _, p := range l.all {
		switch {
		case p.needPrincipal:
			for _, v := range p.principals {
				l.byPrincipal[v] = append(l.byPrincipal[v], p)
			}
		case p.needNamespace:
			for _, v := range p.namespaces {
				l.byNamespace[v] = append(l.byNamespace[v], p)
			}
		default:
			l.open = append(l.open, p)
		}
	}
}

// selIndex finds selector policies from a workload's labels: each policy sits
// in the bucket of its first selector label (sorted by key), so a lookup
// touches only policies sharing at least one label with the workload.
type selIndex[T any] struct {
	m    map[labelKV][]T // each bucket in ascending ord
	keys []labelKV       // the keys of m, to avoid ranging over a map
}

func (x *selIndex[T]) add(kv labelKV, v T) {
	if x.m == nil {
		x.m = map[labelKV][]T{}
	}
	if _, ok := x.m[kv]; !ok {
		x.keys = append(x.keys, kv)
	}
	x.m[kv] = append(x.m[kv], v)
}

// byKeys says whether to look each index key up in the labels (true) or each
// label up in the index.
func (x *selIndex[T]) byKeys(labels map[string]string) bool {
	return len(x.keys) <= len(labels) || len(x.keys) <= 4
}

// firstPeerAuth returns the oldest workload PeerAuthentication selecting
// labels, or nil.
func firstPeerAuth(x *paIndex, labels map[string]string) *peerAuth {
	var best *peerAuth
	bucket := func(b []*peerAuth) {
		for _, p := range b {
			if best != nil && p.ord >= best.ord {
				return
			}
			if selects(p.selector[1:], labels) {
				best = p
				return
			}
		}
	}
	if x.byKeys(labels) {
		for _, kv := range x.keys {
			if v, ok := labels[kv.k]; ok && v == kv.v {
				bucket(x.m[kv])
			}
		}
		return best
	}
	for k, v := range labels {
		if b := x.m[labelKV{k, v}]; b != nil {
			bucket(b)
		}
	}
	return best
}

func (e *Engine) index(p *policy) {
	set := &e.global
	// A root-namespace AuthorizationPolicy applies in every namespace; a
	// translated policy says where it applies. A WORKLOAD_SELECTOR one is
	// found by name only (Engine.byKey).
	if p.translated && p.scope != ScopeMesh || !p.translated && p.ns != e.root {
		set = e.byNS[p.ns]
		if set == nil {
			set = &scopeSet{}
			e.byNS[p.ns] = set
		}
	}
	switch {
	case p.scope == ScopeWorkload && len(p.selector) == 0:
		// An empty selector attaches to no workload in ambient mode.
	case p.scope == ScopeWorkload:
		key := p.action.String() + selectorKey(p.selector)
		g := set.groups[key]
		if g == nil {
			if set.groups == nil {
				set.groups = map[string]*selGroup{}
			}
			g = &selGroup{rest: p.selector[1:], first: p.ord}
			set.groups[key] = g
			if p.action == actionAllow {
				set.selAllow.add(p.selector[0], g)
			} else {
				set.selDeny.add(p.selector[0], g)
			}
		}
		g.list.add(p)
	case p.action == actionAllow:
		set.allow.add(p)
	default:
		set.deny.add(p)
	}
}

// seal builds the principal indexes once every policy is indexed.
func (e *Engine) seal() {
	sets := []*scopeSet{&e.global}
	for _, set := range e.byNS {
		sets = append(sets, set)
	}
	for _, set := range sets {
		set.allow.seal()
		set.deny.seal()
		for _, g := range set.groups {
			g.list.seal()
		}
		set.groups = nil
	}
}

// selectorKey names a selector (sorted pairs) unambiguously.
func selectorKey(sel []labelKV) string {
	var b []byte
	for _, kv := range sel {
		b = strconv.AppendInt(b, int64(len(kv.k)), 10)
		b = append(b, ':')
		b = append(b, kv.k...)
		b = strconv.AppendInt(b, int64(len(kv.v)), 10)
		b = append(b, ':')
		b = append(b, kv.v...)
	}
	return string(b)
}

// Request describes one inbound connection at the destination's node.
type Request struct {
	// SourcePrincipal is the verified peer identity,
	// "<trust domain>/ns/<namespace>/sa/<service account>" (a "spiffe://"
	// prefix is accepted and ignored); empty when the connection has no
	// peer identity (plaintext).
	SourcePrincipal string `json:"sourcePrincipal,omitempty"`
	// SourceIP is the client's address. IPv4-mapped IPv6 addresses are
	// compared as IPv4. The zero Addr matches no ipBlocks.
	SourceIP netip.Addr `json:"sourceIP,omitzero"`
	// Namespace and Labels describe the destination workload.
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
	// DestinationIP and DestinationPort are the workload's address and
	// port the client asked for (for HBONE, the CONNECT target, not 15008).
	DestinationIP   netip.Addr `json:"destinationIP,omitzero"`
	DestinationPort uint16     `json:"destinationPort"`
	// BoundPolicies are "namespace/name" of the WORKLOAD_SELECTOR policies
	// istiod attached to the destination workload
	// (Workload.authorization_policies, xDS mode). An Engine from
	// CompileTranslated applies each of them, and denies every connection
	// while one is unknown to it; it ignores Labels. An Engine from
	// Compile selects by Labels and ignores BoundPolicies.
	BoundPolicies []string `json:"boundPolicies,omitempty"`
	// Binding, when the Engine deciding made it from BoundPolicies (Bind),
	// stands for them: a workload with many bound policies then costs what
	// a namespace with many policies does. Otherwise it is ignored.
	Binding *Binding `json:"-"`
}

// Binding is one workload's BoundPolicies resolved and indexed by an Engine
// from CompileTranslated, to be reused for each of its connections.
type Binding struct {
	e           *Engine
	unknown     string // the first name the Engine does not know
	allow, deny policyList
}

// Bind resolves names, a workload's BoundPolicies, for Request.Binding.
func (e *Engine) Bind(names []string) *Binding {
	b := &Binding{e: e}
	if !e.translated {
		return b
	}
	seen := map[*policy]bool{}
	var ps []*policy
	for _, name := range names {
		found, ok := e.byKey[name]
		if !ok && b.unknown == "" {
			b.unknown = name
		}
		for _, p := range found {
			if !seen[p] {
				seen[p] = true
				ps = append(ps, p)
			}
		}
	}
	slices.SortFunc(ps, func(x, y *policy) int { return int(x.ord - y.ord) })
	for _, p := range ps {
		if p.action == actionAllow {
			b.allow.add(p)
		} else {
			b.deny.add(p)
		}
	}
	b.allow.seal()
	b.deny.seal()
	return b
}

// Decision is the answer for one Request.
type Decision struct {
	Allow bool `json:"allow"`
	// Policy is "namespace/name" of the policy that decided, empty when
	// the default decided (no ALLOW policy selects the workload, or ALLOW
	// policies exist and none matched).
	Policy string `json:"policy,omitempty"`
	// Kind is KindAuthorizationPolicy or KindPeerAuthentication, empty
	// with Policy.
	Kind string `json:"kind,omitempty"`
	// Reason says why, in words for an operator.
	Reason string `json:"reason"`
}

// Reasons of the default decisions.
const (
	ReasonNoAllowPolicy      = "allowed: no ALLOW policy selects the workload"
	ReasonNoAllowMatched     = "denied: ALLOW policies select the workload, but none matched"
	ReasonMalformedPrincipal = "denied: malformed source principal (want <trust domain>/ns/<namespace>/sa/<service account>)"
)

func newConn(r *Request) (conn, bool) {
	c := conn{src: r.SourceIP.Unmap(), dst: r.DestinationIP.Unmap(), port: r.DestinationPort, portBit: portBit(r.DestinationPort)}
	if r.SourcePrincipal != "" {
		p, ns, sa, ok := parsePrincipal(r.SourcePrincipal)
		if !ok {
			return c, false
		}
		c.identity, c.principal, c.ns, c.sa, c.bloom = true, p, ns, sa, principalBit(p)
	}
	return c, true
}

// Decide applies Istio ambient's L4 order: a connection without a peer
// identity is denied where PeerAuthentication makes the port STRICT; then
// any matching DENY policy denies; then, if no ALLOW policy selects the
// workload, the connection is allowed; else some ALLOW policy must match.
// When several policies match, the first by (namespace, name) is reported.
// An Engine from CompileTranslated first denies a request whose
// BoundPolicies names a policy it does not know (ReasonUnknownBoundPolicy).
// Decide does not allocate.
func (e *Engine) Decide(r Request) Decision {
	c, ok := newConn(&r)
	if !ok {
		return Decision{Reason: ReasonMalformedPrincipal}
	}
	if !c.identity {
		if v := e.peerAuthFor(r.Namespace, r.Labels, c.port); v.mode == modeStrict {
			return Decision{Policy: v.policy.key, Kind: KindPeerAuthentication, Reason: v.reason(c.port)}
		}
	}
	b := r.Binding
	if b != nil && b.e != e {
		b = nil
	}
	if b != nil && b.unknown != "" {
		return Decision{Policy: b.unknown, Kind: KindAuthorizationPolicy, Reason: ReasonUnknownBoundPolicy}
	}
	// Resolve the bound names once (on the stack for a usual count).
	var buf [16][]*policy
	bound := buf[:0]
	if e.translated && b == nil {
		for _, name := range r.BoundPolicies {
			ps, ok := e.byKey[name]
			if !ok {
				return Decision{Policy: name, Kind: KindAuthorizationPolicy, Reason: ReasonUnknownBoundPolicy}
			}
			if len(bound) < len(buf) {
				bound = append(bound, ps)
			}
		}
	}
	// Compile keeps root-namespace policies in e.global only, so
	// e.byNS[e.root] holds translated NAMESPACE-scope policies of the root
	// namespace, which apply to its workloads only.
	nss := e.byNS[r.Namespace]

	s := search{pr: &e.prog, c: &c, labels: r.Labels}
	s.list(&e.global.deny)
	s.sel(&e.global.selDeny)
	if nss != nil {
		s.list(&nss.deny)
		s.sel(&nss.selDeny)
	}
	if b != nil {
		s.list(&b.deny)
	} else {
		s.bound(e.byKey, r.BoundPolicies, bound, actionDeny)
	}
	if s.best != nil {
		return Decision{Policy: s.best.key, Kind: KindAuthorizationPolicy, Reason: s.rule.reason}
	}

	s = search{pr: &e.prog, c: &c, labels: r.Labels}
	s.list(&e.global.allow)
	s.sel(&e.global.selAllow)
	if nss != nil {
		s.list(&nss.allow)
		s.sel(&nss.selAllow)
	}
	if b != nil {
		s.list(&b.allow)
	} else {
		s.bound(e.byKey, r.BoundPolicies, bound, actionAllow)
	}
	switch {
	case s.best != nil:
		return Decision{Allow: true, Policy: s.best.key, Kind: KindAuthorizationPolicy, Reason: s.rule.reason}
	case !s.selected:
		return Decision{Allow: true, Reason: ReasonNoAllowPolicy}
	}
	return Decision{Reason: ReasonNoAllowMatched}
}

// search finds the matching policy of lowest ord among candidates.
type search struct {
	pr       *prog
	c        *conn
	labels   map[string]string
	selected bool // some candidate selects the workload
	best     *policy
	rule     *rule
}

func (s *search) consider(p *policy) {
	s.selected = true
	if r := p.match(s.pr, s.c); r != nil {
		s.best, s.rule = p, r
	}
}

// list considers the policies of l, which all apply to the workload: with
// an index, only those the peer can match, in ord order.
func (s *search) list(l *policyList) {
	if len(l.all) == 0 {
		return
	}
	s.selected = true
	if l.byPrincipal == nil {
		s.scan(l.all)
		return
	}
	// Merge the three ord-sorted candidate lists; a policy is in one.
	lists := [3][]*policy{l.byPrincipal[s.c.principal], l.byNamespace[s.c.ns], l.open}
	for {
		next := -1
		for i, ps := range lists {
			if len(ps) > 0 && (next < 0 || ps[0].ord < lists[next][0].ord) {
				next = i
			}
		}
		if next < 0 {
			return
		}
		p := lists[next][0]
		lists[next] = lists[next][1:]
		if s.best != nil && p.ord >= s.best.ord {
			return
		}
		s.consider(p)
	}
}

func (s *search) scan(ps []*policy) {
	for _, p := range ps {
		if s.best != nil && p.ord >= s.best.ord {
			return
		}
		s.consider(p)
	}
}

// bound considers the policies of action act that names bind: resolved
// holds them when it holds every name, else they are looked up in byKey
// (nil, and names ignored, in an Engine from Compile).
func (s *search) bound(byKey map[string][]*policy, names []string, resolved [][]*policy, act action) {
	if len(byKey) == 0 {
		return
	}
	if len(resolved) == len(names) {
		for _, ps := range resolved {
			s.boundList(ps, act)
		}
		return
	}
	for _, name := range names {
		s.boundList(byKey[name], act)
	}
}

func (s *search) boundList(ps []*policy, act action) {
	for _, p := range ps {
		if p.action == act && (s.best == nil || p.ord < s.best.ord) {
			s.consider(p)
		}
	}
}

func (s *search) sel(x *selIndex[*selGroup]) {
	if len(x.m) == 0 || len(s.labels) == 0 {
		return
	}
	if x.byKeys(s.labels) {
		for _, kv := range x.keys {
			if v, ok := s.labels[kv.k]; ok && v == kv.v {
				s.bucket(x.m[kv])
			}
		}
		return
	}
	for k, v := range s.labels {
		if b := x.m[labelKV{k, v}]; b != nil {
			s.bucket(b)
		}
	}
}

func (s *search) bucket(b []*selGroup) {
	for _, g := range b { // by first
		if s.best != nil && g.first >= s.best.ord {
			return
		}
		// The bucket key is the selector's first label: the workload has it.
		if selects(g.rest, s.labels) {
			s.list(&g.list)
		}
	}
}

// Explanation is a Decision with the evidence behind it, for
// `ferry policy check -o json` and the admin endpoint.
type Explanation struct {
	Decision Decision `json:"decision"`
	// PeerAuthentication is the effective mTLS mode on the port. An Engine
	// from CompileTranslated leaves it zero: istiod sends
	// PeerAuthentications as DENY policies, listed in Policies.
	PeerAuthentication PeerAuthenticationResult `json:"peerAuthentication"`
	// Policies lists every AuthorizationPolicy that selects the workload,
	// by (namespace, name).
	Policies []PolicyResult `json:"policies"`
}

// PeerAuthenticationResult is the effective mTLS mode for a request.
type PeerAuthenticationResult struct {
	// Mode is STRICT, PERMISSIVE or DISABLE (which acts as PERMISSIVE).
	Mode string `json:"mode"`
	// Policy is "namespace/name" of the PeerAuthentication that set the
	// mode, empty when none did (PERMISSIVE by default).
	Policy string `json:"policy,omitempty"`
	// Field is "mtls.mode" or "portLevelMtls[N]".
	Field string `json:"field,omitempty"`
}

// PolicyResult is how one AuthorizationPolicy judged a request.
type PolicyResult struct {
	Policy  string `json:"policy"`
	Action  string `json:"action"`
	Scope   string `json:"scope"` // ScopeMesh, ScopeNamespace or ScopeWorkload
	Matched bool   `json:"matched"`
	// Rule is the spec.rules index of the first matching rule (for a
	// translated policy, the groups index), -1 if none (or, when Matched,
	// the deny-everything reading of a policy with errors).
	Rule int `json:"rule"`
	// Rules is the number of rules (groups) enforced at L4 (ALLOW rules
	// with HTTP attributes and DENY rules that cannot match are not
	// counted).
	Rules int `json:"rules"`
}

// Explain returns Decide's answer together with the effective mTLS mode and
// every AuthorizationPolicy that selects the workload. Unlike Decide, it
// allocates.
func (e *Engine) Explain(r Request) Explanation {
	x := Explanation{Decision: e.Decide(r), Policies: []PolicyResult{}}
	if !e.translated {
		v := e.peerAuthFor(r.Namespace, r.Labels, r.DestinationPort)
		x.PeerAuthentication.Mode = v.mode.String()
		if v.policy != nil {
			x.PeerAuthentication.Policy = v.policy.key
			x.PeerAuthentication.Field = "mtls.mode"
			if v.port {
				x.PeerAuthentication.Field = "portLevelMtls[" + strconv.Itoa(int(r.DestinationPort)) + "]"
			}
		}
	}
	c, ok := newConn(&r)
	for _, p := range e.candidates(&r) {
		res := PolicyResult{Policy: p.key, Action: p.action.String(), Scope: p.scope, Rule: -1, Rules: int(p.rules.hi - p.rules.lo)}
		if ok {
			if rl := p.match(&e.prog, &c); rl != nil {
				res.Matched, res.Rule = true, int(rl.index)
			}
		}
		x.Policies = append(x.Policies, res)
	}
	return x
}

// candidates lists the policies that apply to r's workload, by ord.
func (e *Engine) candidates(r *Request) []*policy {
	var out []*policy
	for _, p := range e.policies {
		if e.applies(p, r) {
			out = append(out, p)
		}
	}
	return out
}

// applies reports whether p applies to r's workload, as Decide selects it.
func (e *Engine) applies(p *policy, r *Request) bool {
	if p.translated {
		switch {
		case slices.Contains(r.BoundPolicies, p.key):
			return true
		case p.scope == ScopeMesh:
			return true
		case p.scope == ScopeNamespace:
			return p.ns == r.Namespace
		}
		return false
	}
	if p.ns != e.root && p.ns != r.Namespace {
		return false
	}
	return p.scope != ScopeWorkload || len(p.selector) > 0 && selects(p.selector, r.Labels)
}
