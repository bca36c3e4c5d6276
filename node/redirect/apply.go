//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Apply converges the calling thread's network namespace to p: it adds
// missing rules and routes, then deletes Ferry's (Protocol-tagged) rules and
// routes that p does not list, in any table and at any priority. Objects
// without Ferry's protocol are never modified or deleted. Applying the same
// plan twice changes nothing the second time.
//
// New objects are added before stale ones go, so a pod that stays enrolled is
// never briefly uncaptured. A route p wants that exists without Ferry's tag
// (someone else's) is an error, not an overwrite.
func Apply(p Plan) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("redirect: apply: netlink: %w", err)
	}
	defer h.Close()
	if err := apply(h, p); err != nil {
		return fmt.Errorf("redirect: apply: %w", err)
	}
	return nil
}

// Cleanup removes every rule and route carrying Ferry's protocol tag from the
// calling thread's network namespace, and the probe source address
// (AddProbeSource), and nothing else. It is what `ferry
// cleanup` and an agent shutting down for good run; it is idempotent.
func Cleanup() error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("redirect: cleanup: netlink: %w", err)
	}
	defer h.Close()
	if err := errors.Join(apply(h, Plan{}), removeProbeSource(h)); err != nil {
		return fmt.Errorf("redirect: cleanup: %w", err)
	}
	return nil
}

// apply converges the handle's namespace to p; its errors carry no prefix.
func apply(h *netlink.Handle, p Plan) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	ifindex := lo.Attrs().Index

	rules, err := ownRules(h)
	if err != nil {
		return err
	}
	routes, err := ownRoutes(h, ifindex)
	if err != nil {
		return err
	}

	var errs []error
	wantRules := make(map[Rule]bool, len(p.Rules))
	for _, r := range p.Rules {
		wantRules[r] = true
	}
	wantRoutes := make(map[Route]bool, len(p.Routes))
	for _, r := range p.Routes {
		wantRoutes[r] = true
	}

	// Routes first, then rules, so a rule never points at a table that is
	// missing its route; deletions in the reverse order.
	for _, r := range p.Routes {
		if _, ok := routes.known[r]; ok {
			continue
		}
		if err := h.RouteAdd(toNetlinkRoute(r, ifindex)); err != nil {
			errs = append(errs, fmt.Errorf("add route %v: %w", r, err))
		}
	}
	for _, r := range p.Rules {
		if _, ok := rules.known[r]; ok {
			continue
		}
		if err := h.RuleAdd(toNetlinkRule(r)); err != nil {
			errs = append(errs, fmt.Errorf("add rule %v: %w", r, err))
		}
	}
	for r, nr := range rules.known {
		if wantRules[r] {
			continue
		}
		if err := h.RuleDel(nr); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete rule %v: %w", r, err))
		}
	}
	for _, nr := range rules.other {
		if err := h.RuleDel(nr); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete rule %v: %w", nr, err))
		}
	}
	for r, nr := range routes.known {
		if wantRoutes[r] {
			continue
		}
		if err := h.RouteDel(nr); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %v: %w", r, err))
		}
	}
	for _, nr := range routes.other {
		if err := h.RouteDel(nr); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %v: %w", nr, err))
		}
	}
	return errors.Join(errs...)
}

// owned sorts Ferry-tagged kernel objects into those that are exactly one of
// our shapes (known, by value) and any other (other: always deleted).
type owned[K comparable, N any] struct {
	known map[K]*N
	other []*N
}

// dumpRetries bounds retries of a netlink dump the kernel interrupted
// because the table changed under it (NLM_F_DUMP_INTR).
const dumpRetries = 10

func dump[T any](f func() ([]T, error)) ([]T, error) {
	for range dumpRetries - 1 {
		v, err := f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return f()
}

func ownRules(h *netlink.Handle) (owned[Rule, netlink.Rule], error) {
	o := owned[Rule, netlink.Rule]{known: map[Rule]*netlink.Rule{}}
	var all []netlink.Rule
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := dump(func() ([]netlink.Rule, error) { return h.RuleList(family) })
		if family == netlink.FAMILY_V6 && errors.Is(err, unix.EAFNOSUPPORT) {
			continue // a kernel without IPv6 (ipv6.disable=1): nothing to refuse or own there
		}
		if err != nil {
			return o, fmt.Errorf("list rules: %w", err)
		}
		all = append(all, rs...)
	}
	for i := range all {
		nr := &all[i]
		if nr.Protocol != Protocol {
			continue
		}
		if r, ok := fromNetlinkRule(nr); ok {
			if _, dup := o.known[r]; !dup {
				o.known[r] = nr
				continue
			}
		}
		o.other = append(o.other, nr)
	}
	return o, nil
}

func ownRoutes(h *netlink.Handle, lo int) (owned[Route, netlink.Route], error) {
	o := owned[Route, netlink.Route]{known: map[Route]*netlink.Route{}}
	var all []netlink.Route
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := dump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		})
		if family == netlink.FAMILY_V6 && errors.Is(err, unix.EAFNOSUPPORT) {
			continue
		}
		if err != nil {
			return o, fmt.Errorf("list routes: %w", err)
		}
		all = append(all, rs...)
	}
	for i := range all {
		nr := &all[i]
		if nr.Protocol != Protocol {
			continue
		}
		if r, ok := fromNetlinkRoute(nr, lo); ok {
			if _, dup := o.known[r]; !dup {
				o.known[r] = nr
				continue
			}
		}
		o.other = append(o.other, nr)
	}
	return o, nil
}

func toNetlinkRule(r Rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = netlink.FAMILY_V4
	if r.IPv6() {
		nr.Family = netlink.FAMILY_V6
	}
	nr.Priority = r.Priority
	nr.Table = r.Table
	nr.IifName = r.IIF
	nr.IPProto = int(r.IPProto)
	nr.Protocol = Protocol
	if r.Mark != 0 {
		nr.Mark = r.Mark
		mask := uint32(MarkMask)
		nr.Mask = &mask
	}
	if r.Src.IsValid() {
		nr.Src = prefixToIPNet(r.Src)
	}
	if r.Dst.IsValid() {
		nr.Dst = prefixToIPNet(r.Dst)
	}
	return nr
}

// fromNetlinkRule maps a dumped rule back to a Rule when it has exactly the
// attributes a Rule can express.
func fromNetlinkRule(nr *netlink.Rule) (Rule, bool) {
	if nr.Family != netlink.FAMILY_V4 && nr.Family != netlink.FAMILY_V6 || nr.Table <= 0 || nr.Goto >= 0 || nr.Invert ||
		nr.Mark != 0 && (nr.Mask == nil || *nr.Mask != MarkMask) || nr.Mark == 0 && nr.Mask != nil || nr.Tos != 0 || nr.TunID != 0 || nr.Flow >= 0 ||
		nr.OifName != "" || nr.SuppressIfgroup >= 0 || nr.SuppressPrefixlen >= 0 ||
		nr.Dport != nil || nr.Sport != nil || nr.UIDRange != nil || nr.IPProto < 0 || nr.IPProto > 255 {
		return Rule{}, false
	}
	r := Rule{Priority: nr.Priority, IIF: nr.IifName, IPProto: uint8(nr.IPProto), Mark: nr.Mark, Table: nr.Table}
	if nr.Src != nil {
		p, ok := ipNetToPrefix(nr.Src)
		if !ok {
			return Rule{}, false
		}
		r.Src = p
	}
	if nr.Dst != nil {
		p, ok := ipNetToPrefix(nr.Dst)
		if !ok {
			return Rule{}, false
		}
		r.Dst = p
	}
	// A rule whose prefixes disagree with its family (or an IPv6 rule with
	// no prefix, which Ferry never makes) is not ours in shape.
	if r.IPv6() != (nr.Family == netlink.FAMILY_V6) {
		return Rule{}, false
	}
	return r, true
}

func toNetlinkRoute(r Route, lo int) *netlink.Route {
	if r.Prohibit {
		return &netlink.Route{
			Dst:      prefixToIPNet(r.Dst),
			Table:    r.Table,
			Type:     unix.RTN_PROHIBIT,
			Protocol: Protocol,
			Family:   family(r.Dst),
		}
	}
	nr := &netlink.Route{
		LinkIndex: lo,
		Dst:       prefixToIPNet(r.Dst),
		Table:     r.Table,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Protocol:  Protocol,
		Family:    netlink.FAMILY_V4,
	}
	if r.Src.IsValid() {
		nr.Src = r.Src.AsSlice()
	}
	return nr
}

func family(p netip.Prefix) int {
	if p.Addr().Is6() {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func fromNetlinkRoute(nr *netlink.Route, lo int) (Route, bool) {
	if nr.Type == unix.RTN_PROHIBIT {
		// The kernel attaches IPv6 reject routes to lo and gives them the
		// default metric (1024): neither is part of the shape.
		if nr.Gw != nil || nr.Src != nil || len(nr.MultiPath) > 0 {
			return Route{}, false
		}
		dst := netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		if nr.Family == netlink.FAMILY_V4 {
			dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		}
		if nr.Dst != nil {
			p, ok := ipNetToPrefix(nr.Dst)
			if !ok {
				return Route{}, false
			}
			dst = p
		}
		return Route{Table: nr.Table, Dst: dst, Prohibit: true}, true
	}
	if nr.Type != unix.RTN_LOCAL || nr.LinkIndex != lo || nr.Scope != netlink.SCOPE_HOST ||
		nr.Gw != nil || len(nr.MultiPath) > 0 || nr.Priority != 0 {
		return Route{}, false
	}
	var src netip.Addr
	if nr.Src != nil {
		a, ok := netip.AddrFromSlice(nr.Src)
		if !ok {
			return Route{}, false
		}
		src = a.Unmap()
	}
	dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if nr.Dst != nil {
		p, ok := ipNetToPrefix(nr.Dst)
		if !ok {
			return Route{}, false
		}
		dst = p
	}
	return Route{Table: nr.Table, Dst: dst, Src: src}, true
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
