package authz

import (
	"maps"
	"slices"
)

// PolicyView is one AuthorizationPolicy as an Engine enforces it, laid out
// the way ztunnel holds the policies istiod sends (istio.security.Authorization):
// for the admin endpoint's ztunnel-format dump. It shows the reading Decide
// applies, not the object as written: a policy read fail-closed as a whole
// is a DENY policy with one rule matching everything, an ALLOW rule dropped
// for HTTP attributes or errors is absent, and a DENY rule with errors holds
// its fail-closed reading.
type PolicyView struct {
	Name, Namespace string
	// Scope is TranslatedScopeGlobal, TranslatedScopeNamespace or
	// TranslatedScopeWorkloadSelector.
	Scope string
	// Action is "ALLOW" or "DENY".
	Action string
	// Rules are ORed: the policy matches when any rule does (a policy
	// without rules matches nothing). A rule holds when all its clauses do
	// (a rule without clauses matches everything); a clause holds when any
	// of its matches does (a clause without matches matches nothing); a
	// match holds when each of its fields does (a match without fields
	// matches everything, unlike a TranslatedMatch). Extensions are never
	// set.
	Rules [][][]TranslatedMatch
}

// Policies returns every AuthorizationPolicy e enforces, by (namespace,
// name). Policies e ignores (dry-run, AUDIT, CUSTOM, targetRefs) and
// PeerAuthentications are not listed; see MTLS for the latter. The result is
// the caller's.
func (e *Engine) Policies() []PolicyView {
	out := make([]PolicyView, 0, len(e.policies))
	for _, p := range e.policies {
		v := PolicyView{Name: p.name, Namespace: p.ns, Action: p.action.String(), Rules: [][][]TranslatedMatch{}}
		switch p.scope {
		case ScopeMesh:
			v.Scope = TranslatedScopeGlobal
		case ScopeWorkload:
			v.Scope = TranslatedScopeWorkloadSelector
		default:
			v.Scope = TranslatedScopeNamespace
		}
		pr := &e.prog
		for _, r := range pr.rules[p.rules.lo:p.rules.hi] {
			rule := [][]TranslatedMatch{}
			for _, cl := range pr.clauses[r.clauses.lo:r.clauses.hi] {
				clause := []TranslatedMatch{}
				for _, m := range pr.matches[cl.lo:cl.hi] {
					clause = append(clause, pr.viewMatch(m))
				}
				rule = append(rule, clause)
			}
			v.Rules = append(v.Rules, rule)
		}
		out = append(out, v)
	}
	return out
}

// viewMatch turns a compiled match back into its fields.
func (pr *prog) viewMatch(m span) TranslatedMatch {
	var tm TranslatedMatch
	for _, k := range pr.checks[m.lo:m.hi] {
		switch k.kind {
		case checkPort:
			ports := make([]uint32, 0, k.data.hi-k.data.lo)
			for _, p := range pr.ports[k.data.lo:k.data.hi] {
				ports = append(ports, uint32(p))
			}
			pick(k.neg, &tm.DestinationPorts, &tm.NotDestinationPorts, ports)
		case checkDstIP:
			pick(k.neg, &tm.DestinationIPs, &tm.NotDestinationIPs, slices.Clone(pr.ips[k.data.lo:k.data.hi]))
		case checkSrcIP:
			pick(k.neg, &tm.SourceIPs, &tm.NotSourceIPs, slices.Clone(pr.ips[k.data.lo:k.data.hi]))
		case checkSA:
			sas := make([]ServiceAccountMatch, 0, k.data.hi-k.data.lo)
			for _, r := range pr.sas[k.data.lo:k.data.hi] {
				sas = append(sas, ServiceAccountMatch{Namespace: r.ns, ServiceAccount: r.sa})
			}
			pick(k.neg, &tm.ServiceAccounts, &tm.NotServiceAccounts, sas)
		case checkPrincipal:
			pick(k.neg, &tm.Principals, &tm.NotPrincipals, pr.strs[k.data.lo].view())
		case checkNamespace:
			pick(k.neg, &tm.Namespaces, &tm.NotNamespaces, pr.strs[k.data.lo].view())
		}
	}
	return tm
}

// pick appends vs to pos, or to neg for a not* check.
func pick[T any](isNeg bool, pos, neg *[]T, vs []T) {
	if isNeg {
		*neg = append(*neg, vs...)
	} else {
		*pos = append(*pos, vs...)
	}
}

// view lists s's patterns: presence, then exact values (sorted when s keeps
// them in a map), prefixes and suffixes.
func (s *strSet) view() []StringMatch {
	var out []StringMatch
	if s.presence {
		out = append(out, StringMatch{Kind: StringMatchPresence})
	}
	exact := s.exact
	if s.exactSet != nil {
		exact = slices.Sorted(maps.Keys(s.exactSet))
	}
	for _, v := range exact {
		out = append(out, StringMatch{Kind: StringMatchExact, Value: v})
	}
	for _, v := range s.prefix {
		out = append(out, StringMatch{Kind: StringMatchPrefix, Value: v})
	}
	for _, v := range s.suffix {
		out = append(out, StringMatch{Kind: StringMatchSuffix, Value: v})
	}
	return out
}

// MTLSView is the effective PeerAuthentication mode of one workload, as
// Decide applies it to plaintext connections.
type MTLSView struct {
	// Mode is "STRICT" or "PERMISSIVE" (DISABLE acts as PERMISSIVE): the
	// mode on every port not in Ports. It is empty for an Engine from
	// CompileTranslated, which holds no PeerAuthentication (istiod sends
	// them as DENY policies, listed by Policies).
	Mode string
	// Policy is "namespace/name" of the PeerAuthentication that sets Mode,
	// empty when none does (PERMISSIVE by default).
	Policy string
	// Ports are the ports whose mode differs from Mode, set by the
	// portLevelMtls of the workload's PeerAuthentication, PortPolicy.
	Ports      map[uint16]string
	PortPolicy string
}

// MTLS returns the effective mTLS modes of the workload with labels in
// namespace.
func (e *Engine) MTLS(namespace string, labels map[string]string) MTLSView {
	if e.translated {
		return MTLSView{}
	}
	norm := func(m mtlsMode) string {
		if m == modeStrict {
			return modeStrict.String()
		}
		return modePermissive.String()
	}
	// Port 0 is in no portLevelMtls: it gives the workload's own mode.
	v := e.peerAuthFor(namespace, labels, 0)
	mv := MTLSView{Mode: norm(v.mode)}
	if v.policy != nil {
		mv.Policy = v.policy.key
	}
	var wl *peerAuth
	if x := e.wlPA[namespace]; x != nil {
		wl = firstPeerAuth(x, labels)
	}
	if all := e.wlPAAll[namespace]; all != nil && (wl == nil || all.ord < wl.ord) {
		wl = all
	}
	if wl == nil {
		return mv
	}
	for port, m := range wl.ports {
		if norm(m) != mv.Mode {
			if mv.Ports == nil {
				mv.Ports = map[uint16]string{}
			}
			mv.Ports[port] = norm(m)
		}
	}
	if mv.Ports != nil {
		mv.PortPolicy = wl.key
	}
	return mv
}
