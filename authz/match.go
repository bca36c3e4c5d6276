package authz

import (
	"net/netip"
	"strings"
)

// conn is a Request after parsing: what rules match against.
type conn struct {
	identity  bool   // a verified peer identity is present
	principal string // "td/ns/NS/sa/SA", "" without identity
	ns, sa    string // from the principal, "" without identity
	src, dst  netip.Addr
	port      uint16
}

// parsePrincipal splits "td/ns/NS/sa/SA" (an optional "spiffe://" prefix is
// removed first). It returns ok=false unless every part is present and
// non-empty. It does not allocate.
func parsePrincipal(s string) (principal, ns, sa string, ok bool) {
	s = strings.TrimPrefix(s, "spiffe://")
	td, rest, ok1 := strings.Cut(s, "/")
	lit1, rest, ok2 := strings.Cut(rest, "/")
	ns, rest, ok3 := strings.Cut(rest, "/")
	lit2, sa, ok4 := strings.Cut(rest, "/")
	if !ok1 || !ok2 || !ok3 || !ok4 || td == "" || lit1 != "ns" || ns == "" || lit2 != "sa" || sa == "" ||
		strings.Contains(sa, "/") {
		return "", "", "", false
	}
	return s, ns, sa, true
}

// strSet is a compiled list of Istio string patterns: exact "abc", prefix
// "abc*", suffix "*abc" and presence "*" (non-empty). It matches when any
// pattern does.
type strSet struct {
	n        int // number of patterns; 0 = field not set
	presence bool
	exact    []string
	exactSet map[string]struct{} // replaces exact when the list is long
	prefix   []string
	suffix   []string
}

// exactMapMin is the list length from which exact patterns go in a map.
const exactMapMin = 8

func newStrSet(values []string) strSet {
	s := strSet{n: len(values)}
	for _, v := range values {
		switch {
		case v == "*":
			s.presence = true
		case strings.HasPrefix(v, "*"):
			s.suffix = append(s.suffix, v[1:])
		case strings.HasSuffix(v, "*"):
			s.prefix = append(s.prefix, v[:len(v)-1])
		default:
			s.exact = append(s.exact, v)
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

func (s *strSet) any(v string) bool {
	if s.presence && v != "" {
		return true
	}
	for _, e := range s.exact {
		if v == e {
			return true
		}
	}
	if s.exactSet != nil {
		if _, ok := s.exactSet[v]; ok {
			return true
		}
	}
	for _, p := range s.prefix {
		if strings.HasPrefix(v, p) {
			return true
		}
	}
	for _, p := range s.suffix {
		if strings.HasSuffix(v, p) {
			return true
		}
	}
	return false
}

// saRef is a serviceAccounts entry resolved to (namespace, name).
type saRef struct{ ns, sa string }

// match is one L4 match entry (ztunnel's Match): every field that is set must
// match; inside a field any value may. A not* field matches when none of its
// values does.
type match struct {
	principals, notPrincipals strSet
	namespaces, notNamespaces strSet
	sas, notSAs               []saRef
	srcIPs, notSrcIPs         []netip.Prefix
	dstIPs, notDstIPs         []netip.Prefix
	ports, notPorts           []uint16
}

func (m *match) empty() bool {
	return m.principals.n == 0 && m.notPrincipals.n == 0 && m.namespaces.n == 0 && m.notNamespaces.n == 0 &&
		len(m.sas) == 0 && len(m.notSAs) == 0 && len(m.srcIPs) == 0 && len(m.notSrcIPs) == 0 &&
		len(m.dstIPs) == 0 && len(m.notDstIPs) == 0 && len(m.ports) == 0 && len(m.notPorts) == 0
}

func (m *match) matches(c *conn) bool {
	return matchPrefixes(m.dstIPs, m.notDstIPs, c.dst) &&
		matchPrefixes(m.srcIPs, m.notSrcIPs, c.src) &&
		matchPorts(m.ports, m.notPorts, c.port) &&
		matchSAs(m.sas, m.notSAs, c) &&
		matchPrincipal(&m.principals, &m.notPrincipals, c) &&
		matchStr(&m.namespaces, &m.notNamespaces, c.ns)
}

func matchPrefixes(pos, neg []netip.Prefix, a netip.Addr) bool {
	if len(pos) > 0 && !anyPrefix(pos, a) {
		return false
	}
	return len(neg) == 0 || !anyPrefix(neg, a)
}

func anyPrefix(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func matchPorts(pos, neg []uint16, p uint16) bool {
	if len(pos) > 0 && !anyPort(pos, p) {
		return false
	}
	return len(neg) == 0 || !anyPort(neg, p)
}

func anyPort(ps []uint16, p uint16) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// matchSAs: a serviceAccounts entry never matches a connection without a
// peer identity (so notServiceAccounts always does).
func matchSAs(pos, neg []saRef, c *conn) bool {
	if len(pos) > 0 && !anySA(pos, c) {
		return false
	}
	return len(neg) == 0 || !anySA(neg, c)
}

func anySA(refs []saRef, c *conn) bool {
	if !c.identity {
		return false
	}
	for _, r := range refs {
		if r.ns == c.ns && r.sa == c.sa {
			return true
		}
	}
	return false
}

// matchPrincipal: like ztunnel, no pattern (not even "*") matches a
// connection without a peer identity, so notPrincipals always does.
func matchPrincipal(pos, neg *strSet, c *conn) bool {
	if pos.n > 0 && (!c.identity || !pos.any(c.principal)) {
		return false
	}
	return neg.n == 0 || !c.identity || !neg.any(c.principal)
}

func matchStr(pos, neg *strSet, v string) bool {
	if pos.n > 0 && !pos.any(v) {
		return false
	}
	return neg.n == 0 || !neg.any(v)
}

// clause is one from, to or when clause: it matches when any of its match
// entries does. Entries that were empty (after L7 fields were removed) are
// not stored: like ztunnel, an empty entry never matches, so a clause whose
// entries were all empty never matches and its rule is dead.
type clause struct {
	matches []match
}

func (cl *clause) match(c *conn) bool {
	for i := range cl.matches {
		if cl.matches[i].matches(c) {
			return true
		}
	}
	return false
}

// rule is one compiled spec.rules entry: every clause must match; a rule
// without clauses (`{}`) matches everything.
type rule struct {
	index   int // position in spec.rules
	clauses []clause
	reason  string // Decision.Reason when this rule decides
}

func (r *rule) matches(c *conn) bool {
	for i := range r.clauses {
		if !r.clauses[i].match(c) {
			return false
		}
	}
	return true
}
