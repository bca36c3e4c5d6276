package authz

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The types below mirror istio.security.Authorization, the form in which
// istiod sends AuthorizationPolicies (and PeerAuthentications, converted
// into DENY policies) to node proxies over xDS. They are plain data, so authz
// stays free of proto types: the xDS client converts the proto into them and
// CompileTranslated validates them.

// Scopes of a TranslatedPolicy, as istio.security.Scope names them.
const (
	TranslatedScopeGlobal           = "GLOBAL"            // every workload in the mesh
	TranslatedScopeNamespace        = "NAMESPACE"         // every workload in the policy's namespace
	TranslatedScopeWorkloadSelector = "WORKLOAD_SELECTOR" // the workloads that list it (Request.BoundPolicies)
)

// Kinds of StringMatch, as the istio.security.StringMatch oneof names them.
const (
	StringMatchExact    = "exact"
	StringMatchPrefix   = "prefix"
	StringMatchSuffix   = "suffix"
	StringMatchPresence = "presence" // any non-empty value
)

// TranslatedPolicy is an AuthorizationPolicy as istiod sends it to node
// proxies (istio.security.Authorization): selection is already resolved into
// a scope, and rules into groups of matches. Field paths in Diagnostics and
// Problems use the proto's JSON names ("groups[0].rules[1].matches[2].sourceIps[0]").
type TranslatedPolicy struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Scope is TranslatedScopeGlobal, TranslatedScopeNamespace or
	// TranslatedScopeWorkloadSelector; anything else is an error.
	Scope string `json:"scope"`
	// Action is "ALLOW" or "DENY"; anything else is an error.
	Action string `json:"action"`
	// Groups are ORed: the policy matches when any group does. A policy
	// without groups matches nothing (an ALLOW one still applies, so it
	// allows nothing).
	Groups []TranslatedGroup `json:"groups,omitempty"`
	// DryRun policies are not enforced (ztunnel only logs their matches).
	DryRun bool `json:"dryRun,omitempty"`
	// Extensions names the extensions attached to the policy. Ferry
	// understands none: they are ignored with a warning.
	Extensions []string `json:"extensions,omitempty"`
	// Problems lists what the decoder found wrong (an undecodable resource,
	// an unknown enum value, an invalid address), which the fields cannot
	// show. Field is a path as in Diagnostic.Field, or "" for the resource
	// as a whole. CompileTranslated reports each as an error and reads the
	// policy fail-closed, as it does AuthorizationPolicy.Problems.
	Problems []FieldError `json:"-"`
}

// TranslatedGroup is one rule of the original policy. Its Rules are ANDed: a
// group without Rules matches every connection.
type TranslatedGroup struct {
	Rules []TranslatedRules `json:"rules,omitempty"`
}

// TranslatedRules is one from, to or when clause: it holds when any of its
// Matches does. A match without any field never matches (istiod sends one
// when a clause held only HTTP attributes). A Rules entry without matches,
// which istiod never sends, matches anything in ztunnel; Ferry warns and
// reads it as matching nothing in an ALLOW policy, anything in a DENY one.
type TranslatedRules struct {
	Matches []TranslatedMatch `json:"matches,omitempty"`
}

// TranslatedMatch holds when every non-empty field matches and no Not field
// does; within a field the values are ORed. No namespace, principal or
// service account matches a connection without a peer identity, so their Not
// forms hold for it.
type TranslatedMatch struct {
	Namespaces    []StringMatch `json:"namespaces,omitempty"`
	NotNamespaces []StringMatch `json:"notNamespaces,omitempty"`
	// Principals are "td/ns/NS/sa/SA", without "spiffe://".
	Principals         []StringMatch         `json:"principals,omitempty"`
	NotPrincipals      []StringMatch         `json:"notPrincipals,omitempty"`
	ServiceAccounts    []ServiceAccountMatch `json:"serviceAccounts,omitempty"`
	NotServiceAccounts []ServiceAccountMatch `json:"notServiceAccounts,omitempty"`
	// The address fields hold valid prefixes: the decoder reports an
	// address it cannot read as a Problem at its path.
	SourceIPs         []netip.Prefix `json:"sourceIps,omitempty"`
	NotSourceIPs      []netip.Prefix `json:"notSourceIps,omitempty"`
	DestinationIPs    []netip.Prefix `json:"destinationIps,omitempty"`
	NotDestinationIPs []netip.Prefix `json:"notDestinationIps,omitempty"`
	// Ports above 65535 are errors.
	DestinationPorts    []uint32 `json:"destinationPorts,omitempty"`
	NotDestinationPorts []uint32 `json:"notDestinationPorts,omitempty"`
	// Extensions names the extensions attached to the match. Ferry
	// cannot evaluate them: in an ALLOW policy the match never matches, in
	// a DENY policy it is enforced without them (both more restrictive than
	// requested, with a warning).
	Extensions []string `json:"extensions,omitempty"`
}

// StringMatch is one string pattern. Kind is StringMatchExact,
// StringMatchPrefix, StringMatchSuffix or StringMatchPresence; Value is
// non-empty, except for presence, which has none.
type StringMatch struct {
	Kind  string `json:"kind"`
	Value string `json:"value,omitempty"`
}

// ServiceAccountMatch matches the peer identity's namespace and service
// account (whatever its trust domain).
type ServiceAccountMatch struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
}

// ReasonUnknownBoundPolicy is the reason of a denial because
// Request.BoundPolicies names a policy the Engine does not hold; the
// Decision's Policy names it.
const ReasonUnknownBoundPolicy = "denied: istiod bound the workload to this policy but has not sent it (or it was unreadable): denied until it arrives"

// CompileTranslated compiles policies as istiod translates them for node
// proxies into an Engine, with the same guarantees as Compile: it never
// returns a nil Engine, a policy with an error Diagnostic is read fail-closed
// (see translatedFaults) and the rest still applies, only a policy without a
// name is left out, and warnings name policies that apply with parts
// ignored. Diagnostics have Kind KindAuthorizationPolicy.
//
// The Engine selects policies by scope and Request.BoundPolicies, never by
// labels; it holds no PeerAuthentication (istiod sends those as DENY
// policies). Scopes say where policies apply: cfg.RootNamespace only serves
// the fail-closed reading of an unknown scope. CompileTranslated does not
// retain tps.
func CompileTranslated(cfg Config, tps []TranslatedPolicy) (*Engine, []Diagnostic) {
	if cfg.RootNamespace == "" {
		cfg.RootNamespace = DefaultRootNamespace
	}
	var ds []Diagnostic
	e := &Engine{
		root:       cfg.RootNamespace,
		translated: true,
		byNS:       map[string]*scopeSet{},
		byKey:      map[string][]*policy{},
	}
	seen := map[string]bool{}
	for i := range tps {
		tp := &tps[i]
		d := newDiags(KindAuthorizationPolicy, tp.Namespace, tp.Name, &ds)
		p, known := compileTranslatedPolicy(cfg, tp, &d)
		if !known {
			continue
		}
		key := tp.Namespace + "/" + tp.Name
		if _, ok := e.byKey[key]; !ok {
			e.byKey[key] = nil // known, even when not enforced (dry run)
		}
		if p == nil {
			continue
		}
		if seen[p.key] {
			d.errorf("name", "duplicate AuthorizationPolicy %s", p.key)
			d.effect("the second copy denies every connection to " + translatedWhere(p, false) + " until one is removed")
			p.action, p.denyAll, p.groups = actionDeny, true, nil
		}
		seen[p.key] = true
		e.policies = append(e.policies, p)
	}
	slices.SortStableFunc(e.policies, func(a, b *policy) int {
		return cmp.Or(cmp.Compare(a.ns, b.ns), cmp.Compare(a.name, b.name))
	})
	for i, p := range e.policies {
		p.ord = int32(i)
		e.emit(p)
		e.index(p)
		e.byKey[p.key] = append(e.byKey[p.key], p)
	}
	e.seal()
	e.prog.intern, e.prog.key = nil, nil
	return e, ds
}

// TranslatedPolicyErrors returns the error Diagnostics of one policy judged
// on its own (as CompileTranslated reports them, duplicates aside).
func TranslatedPolicyErrors(tp *TranslatedPolicy) []Diagnostic {
	var ds []Diagnostic
	d := newDiags(KindAuthorizationPolicy, tp.Namespace, tp.Name, &ds)
	compileTranslatedPolicy(Config{RootNamespace: DefaultRootNamespace}, tp, &d)
	return errorsOnly(ds)
}

// tGroup is a group as enforced: for a DENY policy with errors, its
// fail-closed reading. Each clause lists its matches; a clause without
// matches matches nothing, and a clause that always holds is left out.
type tGroup struct {
	index   int
	faulty  bool // erroneous conditions were read as matching (DENY)
	clauses [][]TranslatedMatch
}

// translatedWhere says which workloads p applies to, for an Effect.
func translatedWhere(p *policy, scopeUnreadable bool) string {
	switch {
	case scopeUnreadable && p.scope == ScopeMesh:
		return "every workload in the mesh (its scope is unreadable)"
	case scopeUnreadable:
		return "every workload in namespace " + p.ns + " (its scope is unreadable)"
	case p.scope == ScopeMesh:
		return "every workload in the mesh"
	case p.scope == ScopeNamespace:
		return "every workload in namespace " + p.ns
	}
	return "the workloads istiod binds it to"
}

// compileTranslatedPolicy validates tp and returns it compiled; known is
// false when tp cannot be identified, and p is nil (with known true) when tp
// is not enforced.
func compileTranslatedPolicy(cfg Config, tp *TranslatedPolicy, d *diags) (p *policy, known bool) {
	if tp.Name == "" {
		d.errorf("name", "must not be empty")
		d.effect("the object is ignored: without a name it cannot be identified")
		return nil, false
	}
	d.problems(tp.Problems)
	if tp.Namespace == "" {
		d.errorf("namespace", "must not be empty")
	}
	p = &policy{
		key:        tp.Namespace + "/" + tp.Name,
		ns:         tp.Namespace,
		name:       tp.Name,
		translated: true,
		scope:      ScopeNamespace,
	}
	switch tp.Scope {
	case TranslatedScopeGlobal:
		p.scope = ScopeMesh
	case TranslatedScopeNamespace:
	case TranslatedScopeWorkloadSelector:
		p.scope = ScopeWorkload
	default:
		d.errorf("scope", "unknown scope %q (want GLOBAL, NAMESPACE or WORKLOAD_SELECTOR)", tp.Scope)
	}
	var act action
	switch tp.Action {
	case "ALLOW":
	case "DENY":
		act = actionDeny
	default:
		d.errorf("action", "unknown action %q (want ALLOW or DENY)", tp.Action)
	}
	for i := range tp.Groups {
		for j := range tp.Groups[i].Rules {
			for k := range tp.Groups[i].Rules[j].Matches {
				checkTranslatedMatch(&tp.Groups[i].Rules[j].Matches[k], matchPath(i, j, k), d)
			}
		}
	}
	f := classifyTranslated(d.errFields)
	if f.scope {
		// istiod gives a root-namespace policy GLOBAL or
		// WORKLOAD_SELECTOR scope, either of which can reach any
		// namespace; elsewhere NAMESPACE covers every workload it could
		// mean.
		p.scope = ScopeNamespace
		if p.ns == cfg.RootNamespace {
			p.scope = ScopeMesh
		}
	}
	p.action = act
	where := translatedWhere(p, f.scope)
	if f.object {
		d.effect("the policy denies every connection to " + where + ", whatever its action, until it is fixed")
		p.action, p.denyAll = actionDeny, true
		return p, true
	}
	if tp.DryRun {
		d.effect("not enforced: a dry-run policy")
		d.warnf("dryRun", "dry-run policies are not enforced (ztunnel only logs their matches): policy ignored")
		return nil, true
	}
	if len(tp.Extensions) > 0 {
		d.warnf("extensions", "Ferry understands no extensions (%s): ignored", strings.Join(tp.Extensions, ", "))
	}
	if f.scope && act == actionAllow {
		// Spread wider than meant, its rules would admit callers to
		// workloads it was never meant for: it matches nothing instead.
		d.effect("the policy applies to " + where + " and allows nothing until it is fixed")
		return p, true
	}
	if act == actionDeny && len(tp.Groups) == 0 {
		d.warnf("groups", "a DENY policy without groups never matches: it has no effect")
	}
	var faulty []int
	for i := range tp.Groups {
		g, bad := readTranslatedGroup(tp, i, act, f.groups[i], d)
		if bad {
			faulty = append(faulty, i)
		}
		if g != nil {
			p.groups = append(p.groups, *g)
		}
	}
	for _, i := range slices.Sorted(maps.Keys(f.groups)) {
		if i < len(tp.Groups) {
			continue
		}
		// A group the decoder left out: an ALLOW policy loses nothing by
		// missing it, a DENY policy reads it as matching everything.
		faulty = append(faulty, i)
		if act == actionDeny {
			p.groups = append(p.groups, tGroup{index: i, faulty: true})
		}
	}
	var effects []string
	switch {
	case len(faulty) > 0 && act == actionAllow:
		effects = append(effects, "in "+indexList("groups", faulty)+" every erroneous match never matches; the policy's other matches still apply to "+where)
	case len(faulty) > 0:
		effects = append(effects, "in "+indexList("groups", faulty)+" every erroneous condition is read as matching (a broader deny)")
	}
	if f.scope {
		effects = append(effects, "the policy applies to "+where)
	}
	if len(effects) > 0 {
		d.effect(strings.Join(effects, "; "))
	}
	return p, true
}

func matchPath(i, j, k int) string {
	return "groups[" + strconv.Itoa(i) + "].rules[" + strconv.Itoa(j) + "].matches[" + strconv.Itoa(k) + "]"
}

func matchIsEmpty(m *TranslatedMatch) bool {
	return len(m.Namespaces)+len(m.NotNamespaces)+len(m.Principals)+len(m.NotPrincipals)+
		len(m.ServiceAccounts)+len(m.NotServiceAccounts)+len(m.SourceIPs)+len(m.NotSourceIPs)+
		len(m.DestinationIPs)+len(m.NotDestinationIPs)+len(m.DestinationPorts)+len(m.NotDestinationPorts) == 0
}

// checkTranslatedMatch reports every value of m that cannot be enforced as
// written. istiod never sends one; a decoder or another control plane might.
func checkTranslatedMatch(m *TranslatedMatch, path string, d *diags) {
	checkStringMatches(m.Namespaces, path+".namespaces", false, d)
	checkStringMatches(m.NotNamespaces, path+".notNamespaces", false, d)
	checkStringMatches(m.Principals, path+".principals", true, d)
	checkStringMatches(m.NotPrincipals, path+".notPrincipals", true, d)
	checkSAMatches(m.ServiceAccounts, path+".serviceAccounts", d)
	checkSAMatches(m.NotServiceAccounts, path+".notServiceAccounts", d)
	checkPrefixes(m.SourceIPs, path+".sourceIps", d)
	checkPrefixes(m.NotSourceIPs, path+".notSourceIps", d)
	checkPrefixes(m.DestinationIPs, path+".destinationIps", d)
	checkPrefixes(m.NotDestinationIPs, path+".notDestinationIps", d)
	checkPortValues(m.DestinationPorts, path+".destinationPorts", d)
	checkPortValues(m.NotDestinationPorts, path+".notDestinationPorts", d)
}

func checkStringMatches(ms []StringMatch, path string, principal bool, d *diags) {
	for i, m := range ms {
		fi := func() string { return path + "[" + strconv.Itoa(i) + "]" }
		switch m.Kind {
		case StringMatchExact, StringMatchPrefix, StringMatchSuffix:
			if m.Value == "" {
				// ztunnel would match an empty namespace (no peer
				// identity), or anything for a prefix or suffix.
				d.errorf(fi(), "empty %s value", m.Kind)
			} else if principal && m.Kind != StringMatchSuffix && strings.HasPrefix(m.Value, "spiffe://") {
				d.warnf(fi(), "principal %q starts with spiffe://, which istiod strips: it never matches a peer", m.Value)
			}
		case StringMatchPresence:
			if m.Value != "" {
				d.errorf(fi(), "presence takes no value (got %q)", m.Value)
			}
		default:
			d.errorf(fi(), "unknown string match kind %q (want exact, prefix, suffix or presence)", m.Kind)
		}
	}
}

func checkSAMatches(ms []ServiceAccountMatch, path string, d *diags) {
	for i, m := range ms {
		if m.Namespace == "" || m.ServiceAccount == "" {
			d.errorf(path+"["+strconv.Itoa(i)+"]", "service account needs a namespace and a name (got %q/%q)", m.Namespace, m.ServiceAccount)
		}
	}
}

func checkPrefixes(ps []netip.Prefix, path string, d *diags) {
	for i, p := range ps {
		if !p.IsValid() {
			d.errorf(path+"["+strconv.Itoa(i)+"]", "invalid address prefix")
		}
	}
}

func checkPortValues(ps []uint32, path string, d *diags) {
	for i, p := range ps {
		if p > 65535 {
			d.errorf(path+"["+strconv.Itoa(i)+"]", "invalid port %s (want 0..65535)", strconv.FormatUint(uint64(p), 10))
		}
	}
}

// The fail-closed reading of a TranslatedPolicy with errors, by where they
// lie (as failclosed.go reads an AuthorizationPolicy):
//
//   - in a match (an invalid value, a Problem at or below its path): in an
//     ALLOW policy the match never matches; in a DENY policy the erroneous
//     field is dropped (an error at the match itself empties it), so the
//     match holds at least where it was meant to;
//   - in a Rules entry or a group themselves: in an ALLOW policy the group
//     never matches; in a DENY policy the clause, or the whole group, holds;
//   - at an index the policy does not hold (an entry the decoder left
//     out): a missing group matches everything in a DENY policy; a missing
//     Rules entry makes an ALLOW group never match; a missing match makes
//     a DENY clause hold;
//   - in the scope: the policy applies to every workload of its namespace
//     (of the mesh, in the root namespace, where istiod puts GLOBAL
//     policies); an ALLOW policy then matches nothing, a DENY policy keeps
//     its rules;
//   - anywhere else (the action, the namespace, a Problem naming the
//     resource or another top-level field): the policy's intent is unknown,
//     so it denies every connection to the workloads its scope selects,
//     whatever its action;
//   - a duplicate namespace/name: the second copy denies everything its
//     scope selects.
//
// A policy without a name is left out. A workload bound to a policy the
// Engine does not hold is denied every connection (see Engine.Decide).

// translatedFaults is where a TranslatedPolicy's errors lie.
type translatedFaults struct {
	object bool
	scope  bool
	groups map[int]*groupFaults
}

type groupFaults struct {
	whole bool
	rules map[int]*rulesFaults
}

type rulesFaults struct {
	whole   bool
	matches map[int]*matchFaults
}

type matchFaults struct {
	whole  bool
	fields []string // erroneous field names ("sourceIps")
}

// translatedMatchFields are the field names of a match, as in paths.
var translatedMatchFields = []string{
	"namespaces", "notNamespaces", "principals", "notPrincipals", "serviceAccounts", "notServiceAccounts",
	"sourceIps", "notSourceIps", "destinationIps", "notDestinationIps", "destinationPorts", "notDestinationPorts",
	"extensions",
}

// classifyTranslated reads error paths such as "scope", "action",
// "groups[0]", "groups[0].rules[1]" or
// "groups[0].rules[1].matches[2].destinationPorts[0]".
func classifyTranslated(fields []string) translatedFaults {
	var f translatedFaults
	for _, field := range fields {
		if field == "scope" {
			f.scope = true
			continue
		}
		part, rest, gi, ok := cutIndex(field)
		if !ok || part != "groups" {
			f.object = true
			continue
		}
		if f.groups == nil {
			f.groups = map[int]*groupFaults{}
		}
		g := f.groups[gi]
		if g == nil {
			g = &groupFaults{rules: map[int]*rulesFaults{}}
			f.groups[gi] = g
		}
		part, rest, ri, ok := cutIndex(strings.TrimPrefix(rest, "."))
		if !ok || part != "rules" {
			g.whole = true
			continue
		}
		r := g.rules[ri]
		if r == nil {
			r = &rulesFaults{matches: map[int]*matchFaults{}}
			g.rules[ri] = r
		}
		part, rest, mi, ok := cutIndex(strings.TrimPrefix(rest, "."))
		if !ok || part != "matches" {
			r.whole = true
			continue
		}
		m := r.matches[mi]
		if m == nil {
			m = &matchFaults{}
			r.matches[mi] = m
		}
		name, ok := strings.CutPrefix(rest, ".")
		if j := strings.IndexAny(name, ".["); j >= 0 {
			name = name[:j]
		}
		if !ok || !slices.Contains(translatedMatchFields, name) {
			m.whole = true
			continue
		}
		m.fields = append(m.fields, name)
	}
	return f
}

func dropMatchField(m *TranslatedMatch, name string) {
	switch name {
	case "namespaces":
		m.Namespaces = nil
	case "notNamespaces":
		m.NotNamespaces = nil
	case "principals":
		m.Principals = nil
	case "notPrincipals":
		m.NotPrincipals = nil
	case "serviceAccounts":
		m.ServiceAccounts = nil
	case "notServiceAccounts":
		m.NotServiceAccounts = nil
	case "sourceIps":
		m.SourceIPs = nil
	case "notSourceIps":
		m.NotSourceIPs = nil
	case "destinationIps":
		m.DestinationIPs = nil
	case "notDestinationIps":
		m.NotDestinationIPs = nil
	case "destinationPorts":
		m.DestinationPorts = nil
	case "notDestinationPorts":
		m.NotDestinationPorts = nil
	}
}

// readTranslatedGroup returns group i of tp as enforced (nil when it never
// matches) and whether an error in it changed its reading. An ALLOW policy
// drops what is erroneous (an erroneous match never matches, an erroneous
// clause or group makes its group never match); a DENY policy drops the
// erroneous fields and clauses instead, so what remains matches at least
// what was meant. An error at an index the policy does not hold (an entry
// the decoder could not read and left out) is read the same way: in an
// ALLOW group a missing clause could have required more, so the group never
// matches; in a DENY group a missing match could have matched, so its clause
// holds.
func readTranslatedGroup(tp *TranslatedPolicy, i int, act action, gf *groupFaults, d *diags) (g *tGroup, faulty bool) {
	deny := act == actionDeny
	g = &tGroup{index: i}
	if gf == nil {
		gf = &groupFaults{}
	}
	rules := tp.Groups[i].Rules
	for j := range gf.rules {
		if j >= len(rules) || gf.rules[j].whole {
			gf.whole = gf.whole || !deny
			faulty, g.faulty = true, true
		}
	}
	if gf.whole {
		if deny {
			g.faulty = true
			return g, true // a group without clauses matches everything
		}
		return nil, true
	}
	for j, r := range rules {
		rf := gf.rules[j]
		if rf == nil {
			rf = &rulesFaults{}
		}
		if rf.whole {
			continue // DENY: the clause reads as holding
		}
		for k := range rf.matches {
			if k >= len(r.Matches) {
				faulty = true
				rf.whole = rf.whole || deny
			}
		}
		if rf.whole {
			g.faulty = true
			continue // DENY: a missing match could have matched: the clause holds
		}
		if len(r.Matches) == 0 {
			path := "groups[" + strconv.Itoa(i) + "].rules[" + strconv.Itoa(j) + "]"
			if deny {
				d.warnf(path, "has no matches: ztunnel reads it as matching anything, and so does this DENY policy (istiod never sends one)")
				continue
			}
			d.warnf(path, "has no matches: ztunnel reads it as matching anything, but within an ALLOW policy Ferry reads it as matching nothing (istiod never sends one; more restrictive)")
			g.clauses = append(g.clauses, nil)
			continue
		}
		var clause []TranslatedMatch
		for k, m := range r.Matches {
			mf := rf.matches[k]
			if mf == nil && matchIsEmpty(&m) && len(m.Extensions) == 0 {
				continue // an empty match never matches, as in ztunnel
			}
			if len(m.Extensions) > 0 {
				path := matchPath(i, j, k) + ".extensions"
				if !deny {
					d.warnf(path, "Ferry cannot evaluate extensions (%s): within an ALLOW policy this match never matches (more restrictive than requested)", strings.Join(m.Extensions, ", "))
				} else {
					d.warnf(path, "Ferry cannot evaluate extensions (%s): this DENY match is enforced without them (more restrictive than requested)", strings.Join(m.Extensions, ", "))
				}
			}
			if mf != nil {
				faulty = true
				if !deny {
					continue // an erroneous ALLOW match never matches
				}
				g.faulty = true
				if mf.whole {
					m = TranslatedMatch{}
				}
				for _, name := range mf.fields {
					dropMatchField(&m, name)
				}
			}
			if len(m.Extensions) > 0 && !deny {
				continue
			}
			m.Extensions = nil
			clause = append(clause, m)
		}
		g.clauses = append(g.clauses, clause)
	}
	return g, faulty
}

// indexList formats indexes for an Effect: "groups[0], groups[2]".
func indexList(name string, idx []int) string {
	var b strings.Builder
	for i, n := range idx {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(name + "[" + strconv.Itoa(n) + "]")
	}
	return b.String()
}

// emitGroup lays out an enforced group as one rule: a clause per Rules entry
// holding one match per enforced match, and returns the same quick rejects
// as emitRule.
func (pr *prog) emitGroup(g *tGroup) (cs span, f filter) {
	f.src = cover{all: true}
	cs.lo = int32(len(pr.clauses))
	for _, cl := range g.clauses {
		c := span{lo: int32(len(pr.matches))}
		var ps, nss []string
		var pb uint64
		psExact, nssExact := true, true
		var sc cover
		for i := range cl {
			m := &cl[i]
			k := span{lo: int32(len(pr.checks))}
			pr.addPortValues(false, m.DestinationPorts)
			pr.addPortValues(true, m.NotDestinationPorts)
			pr.addPrefixes(checkDstIP, false, m.DestinationIPs)
			pr.addPrefixes(checkDstIP, true, m.NotDestinationIPs)
			pr.addPrefixes(checkSrcIP, false, m.SourceIPs)
			pr.addPrefixes(checkSrcIP, true, m.NotSourceIPs)
			pr.addSAMatches(false, m.ServiceAccounts)
			pr.addSAMatches(true, m.NotServiceAccounts)
			pr.addStringMatches(checkPrincipal, false, m.Principals)
			pr.addStringMatches(checkPrincipal, true, m.NotPrincipals)
			pr.addStringMatches(checkNamespace, false, m.Namespaces)
			pr.addStringMatches(checkNamespace, true, m.NotNamespaces)
			k.hi = int32(len(pr.checks))
			pr.matches = append(pr.matches, k)

			ps, psExact = exactStringValues(ps, psExact, m.Principals)
			nss, nssExact = exactStringValues(nss, nssExact, m.Namespaces)
			pb = portValuesBloom(pb, m.DestinationPorts)
			sc = sc.union(prefixCover(m.SourceIPs))
		}
		c.hi = int32(len(pr.matches))
		pr.clauses = append(pr.clauses, c)
		if len(cl) == 0 {
			continue // matches nothing: no filter needed
		}
		// Any clause's filter is the rule's: the rule needs every clause.
		if psExact && ps != nil && f.principals == nil {
			f.principals = ps
		}
		if nssExact && nss != nil && f.namespaces == nil {
			f.namespaces = nss
		}
		if pb != ^uint64(0) && f.ports == 0 {
			f.ports = pb
		}
		if !sc.all && f.src.all {
			f.src = sc
		}
	}
	cs.hi = int32(len(pr.clauses))
	return cs, f
}

// exactStringValues is exactValues for StringMatches.
func exactStringValues(need []string, exact bool, ms []StringMatch) ([]string, bool) {
	if len(ms) == 0 {
		return nil, false
	}
	for _, m := range ms {
		if m.Kind != StringMatchExact {
			return nil, false
		}
	}
	for _, m := range ms {
		need = append(need, m.Value)
	}
	return need, exact
}

// portValuesBloom is portBloom for validated port numbers.
func portValuesBloom(b uint64, ports []uint32) uint64 {
	if len(ports) == 0 {
		return ^uint64(0)
	}
	for _, p := range ports {
		b |= portBit(uint16(p))
	}
	return b
}

// prefixCover is cover.addAll for prefixes.
func prefixCover(ps []netip.Prefix) cover {
	if len(ps) == 0 {
		return cover{all: true}
	}
	var c cover
	for _, p := range ps {
		c = c.union(cover{p: p.Masked(), set: true})
	}
	return c
}

func (pr *prog) addPortValues(neg bool, values []uint32) {
	if len(values) == 0 {
		return
	}
	d := span{lo: int32(len(pr.ports))}
	for _, p := range values {
		pr.ports = append(pr.ports, uint16(p))
	}
	d.hi = int32(len(pr.ports))
	pr.checks = append(pr.checks, check{kind: checkPort, neg: neg, data: d})
}

func (pr *prog) addPrefixes(kind uint8, neg bool, values []netip.Prefix) {
	if len(values) == 0 {
		return
	}
	d := span{lo: int32(len(pr.ips))}
	for _, p := range values {
		pr.ips = append(pr.ips, p.Masked())
	}
	d.hi = int32(len(pr.ips))
	pr.checks = append(pr.checks, check{kind: kind, neg: neg, data: d})
}

func (pr *prog) addSAMatches(neg bool, values []ServiceAccountMatch) {
	if len(values) == 0 {
		return
	}
	d := span{lo: int32(len(pr.sas))}
	for _, v := range values {
		pr.sas = append(pr.sas, saRef{v.Namespace, v.ServiceAccount})
	}
	d.hi = int32(len(pr.sas))
	pr.checks = append(pr.checks, check{kind: checkSA, neg: neg, data: d})
}

// addStringMatches adds a pattern check; identical lists share one strSet.
// The patterns are typed, so an exact value may hold '*'.
func (pr *prog) addStringMatches(kind uint8, neg bool, values []StringMatch) {
	if len(values) == 0 {
		return
	}
	pr.key = append(pr.key[:0], '#') // never the first byte of an addStrs key
	for _, v := range values {
		pr.key = append(pr.key, v.Kind...)
		pr.key = append(pr.key, ':')
		pr.key = strconv.AppendInt(pr.key, int64(len(v.Value)), 10)
		pr.key = append(pr.key, ':')
		pr.key = append(pr.key, v.Value...)
	}
	pr.addInterned(kind, neg, func() strSet { return newStringMatchSet(values) })
}

func newStringMatchSet(values []StringMatch) strSet {
	var s strSet
	for _, v := range values {
		switch v.Kind {
		case StringMatchPresence:
			s.presence = true
		case StringMatchPrefix:
			s.prefix = append(s.prefix, v.Value)
		case StringMatchSuffix:
			s.suffix = append(s.suffix, v.Value)
		default:
			s.exact = append(s.exact, v.Value)
		}
	}
	if len(s.exact) >= exactMapMin {
		s.exactSet = make(map[string]struct{}, len(s.exact))
		for _, v := range s.exact {
			s.exactSet[v] = struct{}{}
		}
		s.exact = nil
	}
	return s
}
