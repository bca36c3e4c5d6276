package authz

import (
	"cmp"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// DefaultRootNamespace is Istio's default MeshConfig.rootNamespace.
const DefaultRootNamespace = "istio-system"

// Config tunes Compile. The zero value is ready to use.
type Config struct {
	// RootNamespace holds mesh-wide policies. Empty means
	// DefaultRootNamespace.
	RootNamespace string
	// TrustDomain is the mesh's trust domain (e.g. "cluster.local"). When
	// set, Compile warns about principals naming another trust domain:
	// Istio ambient does not translate trust-domain aliases, so they never
	// match. Empty disables the check; matching never depends on it.
	TrustDomain string
}

// Compile validates and compiles AuthorizationPolicy and PeerAuthentication
// objects into an Engine. It never returns a nil Engine. An object with an
// error Diagnostic is read fail-closed (see failclosed.go: it never widens
// access) and the rest still applies; only an object without a name is left
// out. Warnings name objects that apply with parts ignored. Compile does not
// retain aps or pas.
func Compile(cfg Config, aps []AuthorizationPolicy, pas []PeerAuthentication) (*Engine, []Diagnostic) {
	if cfg.RootNamespace == "" {
		cfg.RootNamespace = DefaultRootNamespace
	}
	var ds []Diagnostic
	e := &Engine{
		root:    cfg.RootNamespace,
		byNS:    map[string]*scopeSet{},
		nsPA:    map[string]*peerAuth{},
		wlPA:    map[string]*paIndex{},
		wlPAAll: map[string]*peerAuth{},
	}

	seen := map[string]bool{}
	for i := range aps {
		ap := &aps[i]
		d := newDiags(KindAuthorizationPolicy, ap.Metadata.Namespace, ap.Metadata.Name, &ds)
		p := compileAuthorizationPolicy(cfg, ap, &d)
		if p == nil {
			continue
		}
		if seen[p.key] {
			// Which of the two was meant is unknown: the second denies
			// what it selects.
			d.errorf("metadata.name", "duplicate AuthorizationPolicy %s", p.key)
			d.effect("the second copy denies every connection to the workloads it selects until one is removed")
			p.action, p.denyAll, p.keep = actionDeny, true, nil
		}
		seen[p.key] = true
		e.policies = append(e.policies, p)
	}
	slices.SortFunc(e.policies, func(a, b *policy) int {
		return cmp.Or(cmp.Compare(a.ns, b.ns), cmp.Compare(a.name, b.name))
	})
	for i, p := range e.policies {
		p.ord = int32(i)
		e.emit(p)
		e.index(p)
	}
	e.seal()
	e.prog.intern, e.prog.key = nil, nil

	clear(seen)
	var compiled []*peerAuth
	for i := range pas {
		pa := &pas[i]
		d := newDiags(KindPeerAuthentication, pa.Metadata.Namespace, pa.Metadata.Name, &ds)
		p := compilePeerAuthentication(cfg, pa, &d)
		if p == nil {
			continue
		}
		if seen[p.key] {
			d.errorf("metadata.name", "duplicate PeerAuthentication %s", p.key)
			d.effect("the second copy is STRICT for its scope until one is removed")
			p.strict()
		}
		seen[p.key] = true
		compiled = append(compiled, p)
	}
	e.indexPeerAuthentications(compiled)
	return e, ds
}

// metadata checks name and namespace; an empty namespace becomes "default",
// as kubectl does for a manifest without one.
func metadata(m *ObjectMeta, d *diags) (ns string, ok bool) {
	ok = true
	if m.Name == "" {
		d.errorf("metadata.name", "must not be empty")
		ok = false
	}
	ns = m.Namespace
	if ns == "" {
		ns = "default"
		d.ns = ns
		d.warnf("metadata.namespace", "empty: using \"default\", as kubectl does")
	}
	return ns, ok
}

func checkSelector(sel *WorkloadSelector, d *diags) {
	if sel == nil {
		return
	}
	for _, k := range sortedKeys(sel.MatchLabels) {
		v := sel.MatchLabels[k]
		if k == "" {
			d.errorf("selector.matchLabels", "empty label key")
		}
		if strings.Contains(k, "*") || strings.Contains(v, "*") {
			d.errorf("selector.matchLabels["+k+"]", "wildcards are not supported in selectors (%s=%s)", k, v)
		}
	}
}

// labelKV is one selector label.
type labelKV struct{ k, v string }

func selectorPairs(m map[string]string) []labelKV {
	out := make([]labelKV, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, labelKV{k, m[k]})
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// selects reports whether labels carry every selector label.
func selects(sel []labelKV, labels map[string]string) bool {
	for _, kv := range sel {
		if v, ok := labels[kv.k]; !ok || v != kv.v {
			return false
		}
	}
	return true
}

type action uint8

const (
	actionAllow action = iota
	actionDeny
)

func (a action) String() string {
	if a == actionDeny {
		return "DENY"
	}
	return "ALLOW"
}

// Scope of a policy, as ztunnel names it.
const (
	ScopeMesh      = "mesh"      // root namespace, no selector
	ScopeNamespace = "namespace" // no selector
	ScopeWorkload  = "workload"  // selector
)

// policy is a compiled AuthorizationPolicy.
type policy struct {
	ord      int32 // rank in (namespace, name) order; ties between matches go to the lowest
	key      string
	ns, name string
	action   action
	scope    string
	selector []labelKV // scope == ScopeWorkload only; never empty
	rules    span      // in prog.rules

	// Quick rejects (see Engine.emit).
	needPrincipal bool
	bloom         uint64
	principals    []string // with needPrincipal: the peers it can match, sorted
	// needNamespace (without needPrincipal) says every rule needs the
	// peer's namespace to be one of namespaces, sorted.
	needNamespace bool
	namespaces    []string
	ports         uint64
	srcCover      cover

	// denyAll marks a policy read fail-closed as a whole: it denies every
	// connection to the workloads it selects.
	denyAll bool

	// translated marks a policy from CompileTranslated: it is selected by
	// scope and Request.BoundPolicies, and its rules are groups.
	translated bool

	keep   []keptRule // until laid out in the prog
	groups []tGroup   // same, for a translated policy
}

// keptRule is a rule to lay out: spec.rules[index] as enforced (for a DENY
// rule with errors, its fail-closed reading).
type keptRule struct {
	index  int
	rule   *Rule
	faults *ruleFaults // nil for a clean rule
}

// emit lays out p's rules (a translated policy's groups) in e.prog and sets
// its quick rejects: when every rule needs the peer principal to be one of
// exact values, principals lists them, bloom has their bits and
// needPrincipal is true (else, likewise with namespaces, needNamespace);
// ports
// has the bits of every port some rule can match (all ones when a rule
// matches any port); srcCover holds every source address some rule can
// match. Decide then skips the policy for other peers, ports or sources
// without reading its rules.
func (e *Engine) emit(p *policy) {
	pr := &e.prog
	p.rules.lo = int32(len(pr.rules))
	p.needPrincipal = true
	verb := "allowed"
	if p.action == actionDeny {
		verb = "denied"
	}
	unit := "rules"
	if p.translated {
		unit = "groups"
	}
	if p.denyAll {
		p.keep, p.groups = []keptRule{{index: -1, rule: &Rule{}}}, nil
	}
	needNamespace := true
	add := func(index int, faulty bool, cs span, f filter) {
		p.srcCover = p.srcCover.union(f.src)
		ports := f.ports
		if ports == 0 {
			ports = ^uint64(0) // the rule matches any port
		}
		p.ports |= ports
		reason := verb + " by " + p.action.String() + " policy " + p.key + " (" + unit + "[" + strconv.Itoa(index) + "] matched)"
		switch {
		case p.denyAll:
			reason = "denied by AuthorizationPolicy " + p.key + ": it has errors, so it denies every connection to the workloads it selects until it is fixed (see ferry policies)"
		case faulty:
			reason = verb + " by " + p.action.String() + " policy " + p.key + " (" + unit + "[" + strconv.Itoa(index) + "] matched, its erroneous conditions read as matching until it is fixed)"
		}
		pr.rules = append(pr.rules, rule{clauses: cs, index: int32(index), reason: reason})
		if f.principals == nil {
			p.needPrincipal = false
		}
		if f.namespaces == nil {
			needNamespace = false
		}
		for _, v := range f.principals {
			p.bloom |= principalBit(v)
		}
		p.principals = append(p.principals, f.principals...)
		p.namespaces = append(p.namespaces, f.namespaces...)
	}
	for _, k := range p.keep {
		cs, f := pr.emitRule(k.rule, p.ns, k.faults)
		add(k.index, k.faults != nil, cs, f)
	}
	for i := range p.groups {
		g := &p.groups[i]
		cs, f := pr.emitGroup(g)
		add(g.index, g.faulty, cs, f)
	}
	p.rules.hi = int32(len(pr.rules))
	p.keep, p.groups = nil, nil
	// A policy without rules matches nothing (needPrincipal, no bits).
	p.needNamespace = !p.needPrincipal && needNamespace && p.rules.hi > p.rules.lo
	if !p.needPrincipal || p.rules.hi == p.rules.lo {
		p.principals = nil
	}
	if !p.needNamespace {
		p.namespaces = nil
	}
	slices.Sort(p.principals)
	p.principals = slices.Compact(p.principals)
	slices.Sort(p.namespaces)
	p.namespaces = slices.Compact(p.namespaces)
}

// match returns the first rule of p that matches c, or nil.
func (p *policy) match(pr *prog, c *conn) *rule {
	if p.needPrincipal && p.bloom&c.bloom == 0 || p.ports&c.portBit == 0 || !p.srcCover.contains(c.src) {
		return nil
	}
	for i := p.rules.lo; i < p.rules.hi; i++ {
		if pr.ruleMatches(&pr.rules[i], c) {
			return &pr.rules[i]
		}
	}
	return nil
}

const dryRunAnnotation = "istio.io/dry-run"

func compileAuthorizationPolicy(cfg Config, ap *AuthorizationPolicy, d *diags) *policy {
	ns, ok := metadata(&ap.Metadata, d)
	if !ok {
		d.effect("the object is ignored: without a name it cannot be identified")
		return nil
	}
	d.problems(ap.Problems)
	spec := &ap.Spec
	checkSelector(spec.Selector, d)
	set := 0
	if spec.Selector != nil {
		set++
	}
	if spec.TargetRef != nil {
		set++
	}
	if len(spec.TargetRefs) > 0 {
		set++
	}
	if set > 1 {
		d.errorf("targetRefs", "only one of selector, targetRef or targetRefs may be set")
	}
	var act action
	switch spec.Action {
	case "", "ALLOW":
		act = actionAllow
	case "DENY":
		act = actionDeny
	case "AUDIT", "CUSTOM":
	default:
		d.errorf("action", "unknown action %q (want ALLOW, DENY, AUDIT or CUSTOM)", spec.Action)
	}
	if spec.Provider != nil && spec.Action != "CUSTOM" {
		d.errorf("provider", "only allowed with action CUSTOM")
	}
	if spec.Action == "DENY" && len(spec.Rules) == 0 {
		d.errorf("rules", "a DENY policy without rules never matches; add an empty rule {} to deny everything")
	}
	for i := range spec.Rules {
		checkRule(cfg, &spec.Rules[i], i, d)
	}
	f := classify(d.errFields)

	p := &policy{
		key:    ns + "/" + ap.Metadata.Name,
		ns:     ns,
		name:   ap.Metadata.Name,
		action: act,
		scope:  ScopeNamespace,
	}
	switch {
	case f.selector && ns == cfg.RootNamespace:
		p.scope = ScopeMesh
	case f.selector:
	case spec.Selector != nil && len(spec.Selector.MatchLabels) == 0:
		d.warnf("selector", "selector without labels: Istio ambient attaches such a policy to no workload, so it has no effect")
		p.scope = ScopeWorkload
	case spec.Selector != nil:
		p.scope = ScopeWorkload
		p.selector = selectorPairs(spec.Selector.MatchLabels)
	case ns == cfg.RootNamespace:
		p.scope = ScopeMesh
	}
	where := "the workloads it selects"
	if f.selector {
		where = "every workload in namespace " + ns + " (its selector is unreadable)"
		if p.scope == ScopeMesh {
			where = "every workload in the mesh (its selector is unreadable)"
		}
	}
	if f.object {
		d.effect("the policy denies every connection to " + where + ", whatever its action, until it is fixed")
		p.action, p.denyAll = actionDeny, true
		return p
	}

	switch spec.Action {
	case "AUDIT", "CUSTOM":
		d.effect("not enforced by the node agent (action " + spec.Action + ")")
		d.warnf("action", "%s is not supported at L4 (ztunnel does not support it either): policy ignored", spec.Action)
		return nil
	}
	if v, ok := ap.Metadata.Annotations[dryRunAnnotation]; ok {
		dry, err := strconv.ParseBool(v)
		switch {
		case err != nil:
			d.warnf("metadata.annotations["+dryRunAnnotation+"]", "not a boolean (%q): policy enforced", v)
		case dry:
			d.effect("not enforced: a dry-run policy")
			d.warnf("metadata.annotations["+dryRunAnnotation+"]", "dry-run policies are not enforced at L4 (as in Istio ambient by default): policy ignored")
			return nil
		}
	}
	if spec.TargetRef != nil || len(spec.TargetRefs) > 0 {
		d.effect("not enforced by the node agent: a targetRefs policy is a waypoint's")
		d.warnf("targetRefs", "targetRefs policies are enforced by waypoints, not by the node agent: policy ignored")
		return nil
	}

	if f.selector && act == actionAllow {
		// Spread over the namespace, its rules would admit callers to
		// workloads it never selected: it matches nothing instead.
		d.effect("the policy selects " + where + " and allows nothing until it is fixed")
		return p
	}
	dead := 0
	var faulty []int
	for i := range spec.Rules {
		r := &spec.Rules[i]
		field := "rules[" + strconv.Itoa(i) + "]"
		var rf *ruleFaults
		if errs, bad := f.rules[i]; bad {
			faulty = append(faulty, i)
			if act == actionAllow {
				continue // an ALLOW rule with an error matches nothing
			}
			x := parseRuleFaults(errs)
			rf = &x
			read := readDenyRule(r, x)
			r = &read
		}
		for j := range r.From {
			if s := &r.From[j].Source; len(s.TrustDomains)+len(s.NotTrustDomains) > 0 {
				d.warnf(loc{rule: i, part: "from", j: j}.String(), "trustDomains and notTrustDomains are not enforced by ztunnel: ignored")
			}
		}
		l7, isDead := ruleShape(r, rf)
		switch {
		case act == actionAllow && len(l7) > 0:
			d.warnf(field, "uses HTTP attributes (%s) that need a waypoint: within an ALLOW policy the rule is dropped and never matches (more restrictive than requested)",
				strings.Join(l7, ", "))
			continue
		case isDead && len(l7) > 0:
			dead++
			d.warnf(field, "uses HTTP attributes (%s) that need a waypoint: without them a from, to or when clause is empty, so this DENY rule never matches",
				strings.Join(l7, ", "))
			continue
		case isDead:
			dead++
			d.warnf(field, "a from clause holds only fields ztunnel ignores, so this rule never matches")
			continue
		case len(l7) > 0:
			d.warnf(field, "uses HTTP attributes (%s) that need a waypoint: this DENY rule is enforced without them (more restrictive than requested)",
				strings.Join(l7, ", "))
		}
		p.keep = append(p.keep, keptRule{index: i, rule: r, faults: rf})
	}
	if act == actionDeny && len(spec.Rules) > 0 && dead == len(spec.Rules) {
		d.warnf("rules", "no rule of this DENY policy can match at L4: the policy has no effect")
	}
	switch {
	case len(faulty) > 0 && act == actionAllow:
		d.effect(ruleList(faulty) + " matches nothing; the policy's other rules still apply to " + where)
	case len(faulty) > 0:
		d.effect("in " + ruleList(faulty) + " every erroneous condition is read as matching (a broader deny)")
	case f.selector:
		d.effect("the policy applies to " + where)
	}
	return p
}

// loc is the path of a field inside a rule, turned into a string only when
// a diagnostic needs it.
type loc struct {
	rule  int
	part  string // "from", "to" or "when"
	j     int
	field string
}

func (l loc) with(field string) loc { l.field = field; return l }

func (l loc) String() string {
	s := "rules[" + strconv.Itoa(l.rule) + "]"
	switch l.part {
	case "from":
		s += ".from[" + strconv.Itoa(l.j) + "].source"
	case "to":
		s += ".to[" + strconv.Itoa(l.j) + "].operation"
	case "when":
		s += ".when[" + strconv.Itoa(l.j) + "]"
	}
	if l.field != "" {
		s += "." + l.field
	}
	return s
}

func (l loc) at(i int) string { return l.String() + "[" + strconv.Itoa(i) + "]" }

// checkRule reports every invalid value of one rule, as Istio's validating
// webhook would reject it (plus principals that can never match).
func checkRule(cfg Config, r *Rule, i int, d *diags) {
	for j := range r.From {
		f := loc{rule: i, part: "from", j: j}
		s := &r.From[j].Source
		n := len(s.Principals) + len(s.NotPrincipals) + len(s.RequestPrincipals) + len(s.NotRequestPrincipals) +
			len(s.Namespaces) + len(s.NotNamespaces) + len(s.ServiceAccounts) + len(s.NotServiceAccounts) +
			len(s.IPBlocks) + len(s.NotIPBlocks) + len(s.RemoteIPBlocks) + len(s.NotRemoteIPBlocks) +
			len(s.TrustDomains) + len(s.NotTrustDomains)
		if n == 0 {
			d.errorf(f.String(), "must not be empty")
		}
		if len(s.ServiceAccounts)+len(s.NotServiceAccounts) > 0 &&
			len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces) > 0 {
			d.errorf(f.String(), "serviceAccounts cannot be combined with principals or namespaces")
		}
		checkPrincipals(cfg, s.Principals, f.with("principals"), d)
		checkPrincipals(cfg, s.NotPrincipals, f.with("notPrincipals"), d)
		checkNonEmpty(s.RequestPrincipals, f.with("requestPrincipals"), d)
		checkNonEmpty(s.NotRequestPrincipals, f.with("notRequestPrincipals"), d)
		checkNonEmpty(s.Namespaces, f.with("namespaces"), d)
		checkNonEmpty(s.NotNamespaces, f.with("notNamespaces"), d)
		checkSAs(s.ServiceAccounts, f.with("serviceAccounts"), d)
		checkSAs(s.NotServiceAccounts, f.with("notServiceAccounts"), d)
		checkIPs(s.IPBlocks, f.with("ipBlocks"), d)
		checkIPs(s.NotIPBlocks, f.with("notIpBlocks"), d)
		checkIPs(s.RemoteIPBlocks, f.with("remoteIpBlocks"), d)
		checkIPs(s.NotRemoteIPBlocks, f.with("notRemoteIpBlocks"), d)
		checkTrustDomains(s.TrustDomains, f.with("trustDomains"), d)
		checkTrustDomains(s.NotTrustDomains, f.with("notTrustDomains"), d)
	}
	for j := range r.To {
		f := loc{rule: i, part: "to", j: j}
		op := &r.To[j].Operation
		if len(op.Hosts)+len(op.NotHosts)+len(op.Ports)+len(op.NotPorts)+len(op.Methods)+len(op.NotMethods)+
			len(op.Paths)+len(op.NotPaths) == 0 {
			d.errorf(f.String(), "must not be empty")
		}
		checkPorts(op.Ports, f.with("ports"), d)
		checkPorts(op.NotPorts, f.with("notPorts"), d)
		checkNonEmpty(op.Hosts, f.with("hosts"), d)
		checkNonEmpty(op.NotHosts, f.with("notHosts"), d)
		checkNonEmpty(op.Methods, f.with("methods"), d)
		checkNonEmpty(op.NotMethods, f.with("notMethods"), d)
		checkNonEmpty(op.Paths, f.with("paths"), d)
		checkNonEmpty(op.NotPaths, f.with("notPaths"), d)
	}
	for j := range r.When {
		f := loc{rule: i, part: "when", j: j}
		w := &r.When[j]
		if w.Key == "" {
			d.errorf(f.with("key").String(), "must not be empty")
			continue
		}
		if len(w.Values) == 0 && len(w.NotValues) == 0 {
			d.errorf(f.String(), "at least one of values or notValues must be set for key %s", w.Key)
			continue
		}
		if checkWhenKey(w.Key, f.with("key"), d) {
			checkWhen(cfg, w.Key, w.Values, f.with("values"), d)
			checkWhen(cfg, w.Key, w.NotValues, f.with("notValues"), d)
		}
	}
}

// checkWhenKey accepts the condition keys Istio knows: the L4 ones and the
// HTTP ones (which Compile then treats as L7).
func checkWhenKey(key string, f loc, d *diags) bool {
	switch {
	case key == "source.ip", key == "destination.ip", key == "remote.ip", key == "destination.port",
		key == "source.principal", key == "source.serviceAccount", key == "source.namespace",
		key == "source.trustDomain", key == "connection.sni",
		key == "request.auth.principal", key == "request.auth.audiences", key == "request.auth.presenter":
		return true
	case strings.HasPrefix(key, "request.headers"), strings.HasPrefix(key, "request.auth.claims"),
		strings.HasPrefix(key, "experimental.envoy.filters."):
		open := strings.Index(key, "[")
		if !strings.HasSuffix(key, "]") || open <= 0 || open >= len(key)-2 {
			d.errorf(f.String(), "bad key %q: want the form a[b]", key)
			return false
		}
		return true
	case key == "destination.namespace":
		d.errorf(f.String(), "key %s is replaced by metadata.namespace", key)
	case strings.HasPrefix(key, "destination.labels"):
		d.errorf(f.String(), "key %s is replaced by the workload selector", key)
	case key == "destination.name", key == "destination.user":
		d.errorf(f.String(), "key %s is only supported in v1alpha1", key)
	default:
		d.errorf(f.String(), "unknown key %q", key)
	}
	return false
}

func checkWhen(cfg Config, key string, values []string, f loc, d *diags) {
	switch key {
	case "source.ip", "destination.ip", "remote.ip":
		checkIPs(values, f, d)
	case "destination.port":
		checkPorts(values, f, d)
	case "source.principal":
		checkPrincipals(cfg, values, f, d)
	case "source.serviceAccount":
		checkSAs(values, f, d)
	default:
		checkNonEmpty(values, f, d)
	}
}

func checkNonEmpty(values []string, f loc, d *diags) {
	for i, v := range values {
		if v == "" {
			d.errorf(f.at(i), "empty value")
		}
	}
}

// checkPrincipals rejects principals that can never match a peer identity:
// empty, with a "spiffe://" prefix (Istio compares identities without it),
// with a wildcard elsewhere than at one end, or, without a wildcard, not of
// the form <trust domain>/ns/<namespace>/sa/<service account>.
func checkPrincipals(cfg Config, values []string, f loc, d *diags) {
	for i, v := range values {
		fi := func() string { return f.at(i) }
		stars := strings.Count(v, "*")
		switch {
		case v == "":
			d.errorf(fi(), "empty value")
		case strings.HasPrefix(v, "spiffe://"):
			d.errorf(fi(), "malformed principal %q: write it without the spiffe:// prefix", v)
		case stars > 1 || stars == 1 && v != "*" && !strings.HasPrefix(v, "*") && !strings.HasSuffix(v, "*"):
			d.errorf(fi(), "malformed principal %q: one wildcard at most, at the start or the end", v)
		case stars == 0:
			if _, _, _, ok := parsePrincipal(v); !ok {
				d.errorf(fi(), "malformed principal %q: want <trust domain>/ns/<namespace>/sa/<service account>", v)
			} else if td, _, _ := strings.Cut(v, "/"); cfg.TrustDomain != "" && td != cfg.TrustDomain {
				d.warnf(fi(), "trust domain %q is not the mesh's (%q): this principal never matches a local identity", td, cfg.TrustDomain)
			}
		}
	}
}

func checkTrustDomains(values []string, f loc, d *diags) {
	for i, v := range values {
		stars := strings.Count(v, "*")
		switch {
		case v == "":
			d.errorf(f.at(i), "empty value")
		case stars > 1 || stars == 1 && v != "*" && !strings.HasPrefix(v, "*") && !strings.HasSuffix(v, "*"):
			d.errorf(f.at(i), "one wildcard at most, at the start or the end (%q)", v)
		case strings.Contains(v, "/"):
			d.errorf(f.at(i), "a trust domain has no '/' (%q)", v)
		}
	}
}

func checkSAs(values []string, f loc, d *diags) {
	if len(values) > 16 {
		d.errorf(f.String(), "at most 16 values")
	}
	for i, v := range values {
		fi := func() string { return f.at(i) }
		ns, sa, cut := strings.Cut(v, "/")
		switch {
		case v == "":
			d.errorf(fi(), "empty value")
		case strings.Contains(v, "*"):
			d.errorf(fi(), "wildcards are not allowed in service accounts (%q)", v)
		case len(v) > 320:
			d.errorf(fi(), "longer than 320 characters")
		case strings.Count(v, "/") > 1, cut && (ns == "" || sa == ""):
			d.errorf(fi(), "malformed service account %q: want <service account> or <namespace>/<service account>", v)
		}
	}
}

func checkIPs(values []string, f loc, d *diags) {
	for i, v := range values {
		if _, err := parseIPBlock(v); err != nil {
			d.errorf(f.at(i), "%v", err)
		}
	}
}

func checkPorts(values []string, f loc, d *diags) {
	for i, v := range values {
		if _, err := parsePort(v); err != nil {
			d.errorf(f.at(i), "%v", err)
		}
	}
}

// parseIPBlock parses an IP address or a CIDR into a masked prefix.
func parseIPBlock(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, errors.New(sprintf("invalid CIDR %q", s))
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, errors.New(sprintf("invalid IP address %q", s))
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parsePort(s string) (uint16, error) {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, errors.New(sprintf("invalid port %q", s))
	}
	return uint16(p), nil
}

// AuthorizationPolicyErrors returns the error Diagnostics of one object
// judged on its own (as Compile reports them, duplicates aside). Sources use
// it to decide whether a new version is good enough to replace the last.
func AuthorizationPolicyErrors(ap *AuthorizationPolicy) []Diagnostic {
	var ds []Diagnostic
	d := newDiags(KindAuthorizationPolicy, ap.Metadata.Namespace, ap.Metadata.Name, &ds)
	compileAuthorizationPolicy(Config{RootNamespace: DefaultRootNamespace}, ap, &d)
	return errorsOnly(ds)
}

// PeerAuthenticationErrors is AuthorizationPolicyErrors for a
// PeerAuthentication.
func PeerAuthenticationErrors(pa *PeerAuthentication) []Diagnostic {
	var ds []Diagnostic
	d := newDiags(KindPeerAuthentication, pa.Metadata.Namespace, pa.Metadata.Name, &ds)
	compilePeerAuthentication(Config{RootNamespace: DefaultRootNamespace}, pa, &d)
	return errorsOnly(ds)
}

func errorsOnly(ds []Diagnostic) []Diagnostic {
	return slices.DeleteFunc(ds, func(d Diagnostic) bool { return d.Severity != Error })
}
