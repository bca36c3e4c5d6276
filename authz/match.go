package authz

import (
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// conn is a Request after parsing: what rules match against.
type conn struct {
	identity  bool   // a verified peer identity is present
	principal string // "td/ns/NS/sa/SA", "" without identity
	ns, sa    string // from the principal, "" without identity
	bloom     uint64 // principalBit(principal); 0 without identity
	portBit   uint64 // portBit(port)
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

// principalBit hashes a principal to one bit of a 64-bit Bloom filter.
func principalBit(s string) uint64 {
	h := uint64(14695981039346656037) // FNV-1a
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	// FNV's high bits barely depend on the last bytes, which is where
	// principals differ: finish with murmur3's mixer.
	return mixBit(h)
}

// portBit hashes a port to one bit of a 64-bit Bloom filter.
func portBit(p uint16) uint64 { return mixBit(uint64(p)) }

func mixBit(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return 1 << (h >> 58)
}

// strSet is a compiled list of Istio string patterns: exact "abc", prefix
// "abc*", suffix "*abc" and presence "*" (non-empty). It matches when any
// pattern does.
type strSet struct {
	presence bool
	exact    []string
	exactSet map[string]struct{} // replaces exact when the list is long
	prefix   []string
	suffix   []string
}

// exactMapMin is the list length from which exact patterns go in a map.
const exactMapMin = 8

func newStrSet(values []string) strSet {
	var s strSet
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

// span is a range [lo, hi) of one of prog's arrays.
type span struct{ lo, hi int32 }

// The kinds of check, in the order a match evaluates them (cheapest and
// most selective first).
const (
	checkPort uint8 = iota
	checkDstIP
	checkSrcIP
	checkSA
	checkPrincipal
	checkNamespace
)

// check is one field of a match: kind says which, data indexes prog.ports,
// prog.ips, prog.sas (a range) or prog.strs (data.lo). neg marks a not*
// field, which holds when no value matches.
type check struct {
	kind uint8
	neg  bool
	data span
}

// rule is one compiled spec.rules entry: every clause in clauses (a range of
// prog.clauses) must match; a rule without clauses (`{}`) matches
// everything. A clause is a range of prog.matches and holds when any of
// them does; a match is a range of prog.checks and holds when all do.
//
// Like ztunnel, a match entry left empty (after HTTP fields are removed) is
// skipped, never stored: a clause whose entries were all empty would never
// match, so its rule is dead and Compile drops it (see ruleShape).
type rule struct {
	clauses span
	index   int32  // position in spec.rules
	reason  string // Decision.Reason when this rule decides
}

// prog holds every compiled rule of an Engine in flat arrays, policies in
// (namespace, name) order, so evaluation reads memory mostly in sequence.
type prog struct {
	rules   []rule
	clauses []span
	matches []span
	checks  []check
	strs    []strSet
	ips     []netip.Prefix
	ports   []uint16
	sas     []saRef

	intern map[string]int32 // compile time only: strSet dedup
	key    []byte
}

func (pr *prog) ruleMatches(r *rule, c *conn) bool {
	for ci := r.clauses.lo; ci < r.clauses.hi; ci++ {
		if !pr.clauseMatches(pr.clauses[ci], c) {
			return false
		}
	}
	return true
}

func (pr *prog) clauseMatches(cl span, c *conn) bool {
	for mi := cl.lo; mi < cl.hi; mi++ {
		if pr.matchMatches(pr.matches[mi], c) {
			return true
		}
	}
	return false
}

func (pr *prog) matchMatches(m span, c *conn) bool {
	for ki := m.lo; ki < m.hi; ki++ {
		k := &pr.checks[ki]
		if pr.checkAny(k, c) == k.neg {
			return false
		}
	}
	return true
}

// checkAny reports whether any value of k matches c. Like ztunnel, no
// principal or service account matches a connection without a peer
// identity (so their not* forms always hold), and a namespace pattern is
// matched against "" then, which no valid pattern matches.
func (pr *prog) checkAny(k *check, c *conn) bool {
	switch k.kind {
	case checkPort:
		for _, p := range pr.ports[k.data.lo:k.data.hi] {
			if p == c.port {
				return true
			}
		}
	case checkDstIP:
		for _, p := range pr.ips[k.data.lo:k.data.hi] {
			if p.Contains(c.dst) {
				return true
			}
		}
	case checkSrcIP:
		for _, p := range pr.ips[k.data.lo:k.data.hi] {
			if p.Contains(c.src) {
				return true
			}
		}
	case checkSA:
		if !c.identity {
			return false
		}
		for _, r := range pr.sas[k.data.lo:k.data.hi] {
			if r.ns == c.ns && r.sa == c.sa {
				return true
			}
		}
	case checkPrincipal:
		return c.identity && pr.strs[k.data.lo].any(c.principal)
	case checkNamespace:
		return pr.strs[k.data.lo].any(c.ns)
	}
	return false
}

// The emit methods lay validated rules out in the prog. They run after
// validation, so parse errors cannot happen there.

// fromHasL4 reports whether a from entry keeps a field at L4.
func fromHasL4(s *Source) bool {
	return len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces)+len(s.ServiceAccounts)+
		len(s.NotServiceAccounts)+len(s.IPBlocks)+len(s.NotIPBlocks) > 0
}

// toHasL4 reports whether a to entry keeps a field at L4.
func toHasL4(op *Operation) bool { return len(op.Ports)+len(op.NotPorts) > 0 }

func isL4When(key string) bool {
	switch key {
	case "source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port":
		return true
	}
	return false
}

// ruleShape inspects a rule as ztunnel receives it: l7 names its HTTP-only
// fields; dead says some from, to or when clause keeps no L4 entry, so the
// rule can never match. An entry rf forces (an erroneous one, read
// fail-closed) is live.
func ruleShape(r *Rule, rf *ruleFaults) (l7 []string, dead bool) {
	add := func(name string, n int) {
		if n > 0 && !slices.Contains(l7, name) {
			l7 = append(l7, name)
		}
	}
	if len(r.To) > 0 {
		live := false
		for i := range r.To {
			op := &r.To[i].Operation
			add("hosts", len(op.Hosts))
			add("notHosts", len(op.NotHosts))
			add("methods", len(op.Methods))
			add("notMethods", len(op.NotMethods))
			add("paths", len(op.Paths))
			add("notPaths", len(op.NotPaths))
			live = live || toHasL4(op) || rf.forced("to", i)
		}
		dead = dead || !live
	}
	if len(r.From) > 0 {
		live := false
		for i := range r.From {
			s := &r.From[i].Source
			add("remoteIpBlocks", len(s.RemoteIPBlocks))
			add("notRemoteIpBlocks", len(s.NotRemoteIPBlocks))
			add("requestPrincipals", len(s.RequestPrincipals))
			add("notRequestPrincipals", len(s.NotRequestPrincipals))
			live = live || fromHasL4(s) || rf.forced("from", i)
		}
		dead = dead || !live
	}
	for _, w := range r.When {
		if !isL4When(w.Key) {
			add("when "+w.Key, 1)
			dead = true
		}
	}
	return l7, dead
}

// emitRule lays out a live rule: a clause for the to list, one for the from
// list, one per when condition (cheapest first: ports compare fastest);
// entries without L4 fields are skipped unless rf forces them (they then
// match anything). It returns the rule's clauses and its filter: the exact
// principals (namespaces) one of which it needs when some clause needs the
// peer's to be one of exact values, its port Bloom bits (0 unless some
// clause needs one of exact ports) and the source addresses it can match.
func (pr *prog) emitRule(r *Rule, policyNS string, rf *ruleFaults) (cs span, f filter) {
	f.src = cover{all: true}
	cs.lo = int32(len(pr.clauses))
	if len(r.To) > 0 {
		cl := span{lo: int32(len(pr.matches))}
		var pb uint64
		for i := range r.To {
			op := &r.To[i].Operation
			if !toHasL4(op) && !rf.forced("to", i) {
				continue
			}
			pb = portBloom(pb, op.Ports)
			m := span{lo: int32(len(pr.checks))}
			pr.addPorts(false, op.Ports)
			pr.addPorts(true, op.NotPorts)
			m.hi = int32(len(pr.checks))
			pr.matches = append(pr.matches, m)
		}
		cl.hi = int32(len(pr.matches))
		pr.clauses = append(pr.clauses, cl)
		f.ports = pb
	}
	if len(r.From) > 0 {
		cl := span{lo: int32(len(pr.matches))}
		var ps, nss []string
		psExact, nssExact := true, true
		var sc cover
		for i := range r.From {
			s := &r.From[i].Source
			if !fromHasL4(s) && !rf.forced("from", i) {
				continue
			}
			sc = sc.addAll(s.IPBlocks)
			m := span{lo: int32(len(pr.checks))}
			pr.addIPs(checkSrcIP, false, s.IPBlocks)
			pr.addIPs(checkSrcIP, true, s.NotIPBlocks)
			pr.addSAs(false, s.ServiceAccounts, policyNS)
			pr.addSAs(true, s.NotServiceAccounts, policyNS)
			pr.addStrs(checkPrincipal, false, s.Principals)
			pr.addStrs(checkPrincipal, true, s.NotPrincipals)
			pr.addStrs(checkNamespace, false, s.Namespaces)
			pr.addStrs(checkNamespace, true, s.NotNamespaces)
			m.hi = int32(len(pr.checks))
			pr.matches = append(pr.matches, m)
			ps, psExact = exactValues(ps, psExact, s.Principals)
			nss, nssExact = exactValues(nss, nssExact, s.Namespaces)
		}
		cl.hi = int32(len(pr.matches))
		pr.clauses = append(pr.clauses, cl)
		if psExact {
			f.principals = ps
		}
		if nssExact {
			f.namespaces = nss
		}
		f.src = sc
	}
	for _, w := range r.When {
		cl := span{lo: int32(len(pr.matches))}
		m := span{lo: int32(len(pr.checks))}
		switch w.Key {
		case "source.ip":
			pr.addIPs(checkSrcIP, false, w.Values)
			pr.addIPs(checkSrcIP, true, w.NotValues)
			if f.src.all {
				f.src = cover{}.addAll(w.Values)
			}
		case "destination.ip":
			pr.addIPs(checkDstIP, false, w.Values)
			pr.addIPs(checkDstIP, true, w.NotValues)
		case "destination.port":
			pr.addPorts(false, w.Values)
			pr.addPorts(true, w.NotValues)
			if f.ports == 0 || f.ports == ^uint64(0) {
				f.ports = portBloom(0, w.Values)
			}
		case "source.namespace":
			pr.addStrs(checkNamespace, false, w.Values)
			pr.addStrs(checkNamespace, true, w.NotValues)
			if vs, exact := exactValues(nil, true, w.Values); exact && f.namespaces == nil {
				f.namespaces = vs
			}
		case "source.principal":
			pr.addStrs(checkPrincipal, false, w.Values)
			pr.addStrs(checkPrincipal, true, w.NotValues)
			if vs, exact := exactValues(nil, true, w.Values); exact && f.principals == nil {
				f.principals = vs
			}
		}
		m.hi = int32(len(pr.checks))
		pr.matches = append(pr.matches, m)
		cl.hi = int32(len(pr.matches))
		pr.clauses = append(pr.clauses, cl)
	}
	cs.hi = int32(len(pr.clauses))
	return cs, f
}

// cover is the smallest prefix holding a set of address blocks: a policy's
// quick reject on source addresses. The zero cover holds nothing; all means
// no restriction (also when IPv4 and IPv6 blocks mix).
type cover struct {
	p   netip.Prefix
	set bool
	all bool
}

func (c cover) contains(a netip.Addr) bool { return c.all || c.set && c.p.Contains(a) }

// addAll adds one match entry's blocks; an entry without blocks accepts any
// address.
func (c cover) addAll(blocks []string) cover {
	if len(blocks) == 0 {
		return cover{all: true}
	}
	for _, v := range blocks {
		p, _ := parseIPBlock(v)
		c = c.union(cover{p: p, set: true})
	}
	return c
}

func (c cover) union(d cover) cover {
	switch {
	case c.all || d.all:
		return cover{all: true}
	case !c.set:
		return d
	case !d.set:
		return c
	case c.p.Addr().Is4() != d.p.Addr().Is4():
		return cover{all: true}
	}
	x, y := c.p.Addr().As16(), d.p.Addr().As16()
	common := 0
	for i := range x {
		if diff := x[i] ^ y[i]; diff != 0 {
			common += bits.LeadingZeros8(diff)
			break
		}
		common += 8
	}
	if c.p.Addr().Is4() {
		common -= 96
	}
	p, _ := c.p.Addr().Prefix(min(common, c.p.Bits(), d.p.Bits()))
	return cover{p: p, set: true}
}

// portBloom folds one match entry's ports into a clause's filter, which
// stays usable only while every entry requires one of its ports: once an
// entry has none, the clause filter is all ones.
func portBloom(b uint64, ports []string) uint64 {
	if len(ports) == 0 {
		return ^uint64(0)
	}
	for _, v := range ports {
		p, _ := parsePort(v)
		b |= portBit(p)
	}
	return b
}

// exactValues folds one match entry's principals (or namespaces) into a
// clause's filter: the clause keeps a filter only while every entry
// requires the value to be one of exact values (exact stays true).
func exactValues(need []string, exact bool, values []string) ([]string, bool) {
	if len(values) == 0 {
		return nil, false
	}
	for _, v := range values {
		if strings.Contains(v, "*") {
			return nil, false
		}
	}
	return append(need, values...), exact
}

// filter is what a rule needs of a connection for its checks to be worth
// reading (Engine.emit): nil lists and zero ports need nothing.
type filter struct {
	principals []string // the peer's principal is one of these
	namespaces []string // the peer's namespace is one of these
	ports      uint64   // Bloom bits of the ports it can match
	src        cover    // the source addresses it can match
}

func (pr *prog) addPorts(neg bool, values []string) {
	if len(values) == 0 {
		return
	}
	d := span{lo: int32(len(pr.ports))}
	for _, v := range values {
		p, _ := parsePort(v)
		pr.ports = append(pr.ports, p)
	}
	d.hi = int32(len(pr.ports))
	pr.checks = append(pr.checks, check{kind: checkPort, neg: neg, data: d})
}

func (pr *prog) addIPs(kind uint8, neg bool, values []string) {
	if len(values) == 0 {
		return
	}
	d := span{lo: int32(len(pr.ips))}
	for _, v := range values {
		p, _ := parseIPBlock(v)
		pr.ips = append(pr.ips, p)
	}
	d.hi = int32(len(pr.ips))
	pr.checks = append(pr.checks, check{kind: kind, neg: neg, data: d})
}

// addSAs resolves "sa" to the policy's namespace and "ns/sa" to itself.
func (pr *prog) addSAs(neg bool, values []string, policyNS string) {
	if len(values) == 0 {
		return
	}
	d := span{lo: int32(len(pr.sas))}
	for _, v := range values {
		if ns, sa, ok := strings.Cut(v, "/"); ok {
			pr.sas = append(pr.sas, saRef{ns, sa})
		} else {
			pr.sas = append(pr.sas, saRef{policyNS, v})
		}
	}
	d.hi = int32(len(pr.sas))
	pr.checks = append(pr.checks, check{kind: checkSA, neg: neg, data: d})
}

// addStrs adds a pattern check; identical pattern lists share one strSet.
func (pr *prog) addStrs(kind uint8, neg bool, values []string) {
	if len(values) == 0 {
		return
	}
	pr.key = pr.key[:0]
	for _, v := range values {
		pr.key = strconv.AppendInt(pr.key, int64(len(v)), 10)
		pr.key = append(pr.key, ':')
		pr.key = append(pr.key, v...)
	}
	pr.addInterned(kind, neg, func() strSet { return newStrSet(values) })
}

// addInterned adds a check on the strSet keyed by pr.key, building it only
// the first time the key is seen.
func (pr *prog) addInterned(kind uint8, neg bool, build func() strSet) {
	i, ok := pr.intern[string(pr.key)]
	if !ok {
		if pr.intern == nil {
			pr.intern = map[string]int32{}
		}
		i = int32(len(pr.strs))
		pr.strs = append(pr.strs, build())
		pr.intern[string(pr.key)] = i
	}
	pr.checks = append(pr.checks, check{kind: kind, neg: neg, data: span{lo: i}})
}
