package redirect

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Protocol is the routing protocol number (RTPROT_*, FRA_PROTOCOL) carried by
// every rule and route Ferry installs. It is how Apply and Cleanup recognise
// Ferry's objects, so nothing else may use it. 153 (0x99) is not assigned in
// the kernel's or iproute2's protocol tables (which stop at 99 below the
// routing daemons' 186–192); `ip rule` and `ip route` show it as "proto 153".
//
// `ip rule show protocol 153` does not filter (iproute2 6.1 lists every rule):
// filter in code.
const Protocol = 153

// Defaults for Config. The table numbers echo the outbound (15001) and inbound
// (15006) capture ports and stay clear of the ranges CNIs allocate from
// (Calico 1–250, Cilium 2004–2005, AWS VPC CNI per-ENI tables) and of the
// kernel's own tables (253–255).
const (
	DefaultCaptureTable = 15001
	DefaultInboundTable = 15006
	DefaultPriority     = 99
)

// NumPriorities is the size of Ferry's reserved rule priority range,
// [Config.Priority, Config.Priority+NumPriorities).
const NumPriorities = 3

// Config chooses Ferry's routing table numbers and rule priorities. The zero
// value means the defaults.
type Config struct {
	// CaptureTable holds the single route `local 0.0.0.0/0 dev lo`;
	// enrolled pods' TCP is looked up there. Its IPv6 namesake (a separate
	// table in the kernel) holds the single route `prohibit ::/0`, where
	// enrolled pods' IPv6 TCP is refused. 0 means DefaultCaptureTable.
	CaptureTable int
	// InboundTable holds `local <pod>/32 dev lo` for each enrolled pod.
	// 0 means DefaultInboundTable.
	InboundTable int
	// Priority is the first of NumPriorities consecutive rule priorities
	// reserved for Ferry: Priority (node-originated traffic to main),
	// Priority+1 (per-pod outbound capture), Priority+2 (inbound capture).
	// They must come before the main table's rule (32766) and after the
	// local table's (0). 0 means DefaultPriority.
	Priority int
}

// RegisterFlags registers c's fields as flags on fs, with their defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.CaptureTable, "redirect-capture-table", DefaultCaptureTable, "routing table for enrolled pods' outbound TCP (local 0.0.0.0/0 dev lo)")
	fs.IntVar(&c.InboundTable, "redirect-inbound-table", DefaultInboundTable, "routing table holding local <podIP>/32 routes for inbound capture")
	fs.IntVar(&c.Priority, "redirect-rule-priority", DefaultPriority, fmt.Sprintf("first of %d consecutive ip rule priorities reserved for Ferry", NumPriorities))
}

func (c Config) withDefaults() Config {
	if c.CaptureTable == 0 {
		c.CaptureTable = DefaultCaptureTable
	}
	if c.InboundTable == 0 {
		c.InboundTable = DefaultInboundTable
	}
	if c.Priority == 0 {
		c.Priority = DefaultPriority
	}
	return c
}

// Kernel tables and rule priorities Ferry must never take.
const (
	tableMain    = 254
	tableDefault = 253
	tableLocal   = 255
	prioMain     = 32766
)

func (c Config) validate() error {
	var errs []error
	for _, t := range []struct {
		name string
		n    int
	}{{"capture", c.CaptureTable}, {"inbound", c.InboundTable}} {
		if t.n < 1 || t.n >= tableDefault && t.n <= tableLocal || int64(t.n) > 1<<32-1 {
			errs = append(errs, fmt.Errorf("%s table %d: want 1–252 or 256–4294967295", t.name, t.n))
		}
	}
	if c.CaptureTable == c.InboundTable {
		errs = append(errs, fmt.Errorf("capture and inbound tables are both %d", c.CaptureTable))
	}
	if c.Priority < 1 || c.Priority+NumPriorities > prioMain {
		errs = append(errs, fmt.Errorf("rule priority %d: want 1–%d", c.Priority, prioMain-NumPriorities))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("redirect: config: %w", err)
	}
	return nil
}

// Rule is one policy routing rule: `ip [-6] rule add pref Priority [from
// Src] [to Dst] [iif IIF] [ipproto IPProto] [fwmark Mark/MarkMask] lookup
// Table proto 153`. It is an
// IPv6 rule when Src or Dst is an IPv6 prefix, an IPv4 rule otherwise.
type Rule struct {
	Priority int
	Src      netip.Prefix // the zero Prefix matches any source
	Dst      netip.Prefix // the zero Prefix matches any destination
	IIF      string       // "" matches any input interface
	IPProto  uint8        // 0 matches any protocol
	Mark     uint32       // with MarkMask: fwmark Mark/MarkMask; 0 matches any
	Table    int
}

// IPv6 reports whether r is an IPv6 rule.
func (r Rule) IPv6() bool {
	return r.Src.IsValid() && r.Src.Addr().Is6() || r.Dst.IsValid() && r.Dst.Addr().Is6()
}

func (r Rule) String() string {
	var b strings.Builder
	if r.IPv6() {
		b.WriteString("-6 ")
	}
	fmt.Fprintf(&b, "pref %d from ", r.Priority)
	if r.Src.IsValid() {
		b.WriteString(r.Src.String())
	} else {
		b.WriteString("all")
	}
	if r.Dst.IsValid() {
		fmt.Fprintf(&b, " to %s", r.Dst)
	}
	if r.IIF != "" {
		fmt.Fprintf(&b, " iif %s", r.IIF)
	}
	if r.IPProto != 0 {
		fmt.Fprintf(&b, " ipproto %s", protoName(r.IPProto))
	}
	if r.Mark != 0 {
		fmt.Fprintf(&b, " fwmark %#x/%#x", r.Mark, MarkMask)
	}
	fmt.Fprintf(&b, " lookup %s proto %d", tableName(r.Table), Protocol)
	return b.String()
}

// Route is one route in one of Ferry's tables: `ip route add local Dst dev
// lo [src Src] table Table proto 153` (scope host), or with Prohibit, `ip -6
// route add prohibit Dst table Table proto 153`. Ferry installs no other
// kind.
type Route struct {
	Table    int
	Dst      netip.Prefix
	Src      netip.Addr // the preferred source; the zero Addr sets none
	Prohibit bool       // refuse: the kernel drops the packet and answers ICMP administratively prohibited
}

func (r Route) String() string {
	if r.Prohibit {
		return fmt.Sprintf("prohibit %s table %d proto %d", r.Dst, r.Table, Protocol)
	}
	src := ""
	if r.Src.IsValid() {
		src = " src " + r.Src.String()
	}
	return fmt.Sprintf("local %s dev lo%s table %d proto %d scope host", r.Dst, src, r.Table, Protocol)
}

// Plan is the state the node's network namespace must be in for a set of
// enrolled pods: Ferry's rules and routes, and the addresses the BPF
// ferry_pods map must hold. Apply installs Rules and Routes; the caller puts
// Pods in the map (bpf.Objects.SetPods).
type Plan struct {
	Rules  []Rule
	Routes []Route
	// Pods are the enrolled IPv4 addresses, sorted and without duplicates.
	Pods []netip.Addr
	// Refused are the enrolled IPv6 addresses, sorted and without
	// duplicates. Ferry cannot carry IPv6 yet, so the plan refuses their TCP
	// in both directions instead (see refuse below); the caller reports them.
	Refused []netip.Addr
}

// NewPlan computes the plan for the enrolled pod addresses pods (every
// address of every enrolled pod on the node, both families). It is pure.
// With no pod the plan is empty: Ferry leaves no trace in a namespace that
// has nothing to capture. The error reports an invalid Config.
//
// IPv4 addresses are captured. IPv6 addresses are refused: a dual-stack pod
// reachable over IPv6 would otherwise bypass STRICT mTLS and every policy,
// since nothing captures that family. Refusal is fail-closed policy routing,
// owned like the rest of the plan (Protocol-tagged, removed by Apply when the
// pod leaves and by Cleanup):
//
//	ip -6 rule pref P+1 from <pod6>/128 ipproto tcp lookup T   the pod's own connections
//	ip -6 rule pref P+1 to <pod6>/128 ipproto tcp lookup T     connections to the pod: other pods, peer nodes, the node itself
//	ip -6 route prohibit ::/0 table T                          T is CaptureTable's IPv6 namesake
//
// Routing rules rather than a BPF drop: the node forwards a pod's traffic, so
// the routing decision is the one place that sees both directions for every
// path (forwarded and locally sent) with no iptables and no program on the
// pod's interface; a prohibit route answers ICMPv6 "administratively
// prohibited", so clients fail at once instead of timing out; and the objects
// are tagged, listed and removed by the same code as the IPv4 capture. There
// is no `iif lo` exemption for IPv6: a node connection would get no answer
// anyway, since the pod's replies match the `from` rule.
func NewPlan(pods []netip.Addr, cfg Config) (Plan, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return Plan{}, err
	}
	p := planFor(pods)
	p.refuse(cfg)
	if len(p.Pods) == 0 {
		return p, nil
	}

	p.Rules = append(p.Rules, Rule{Priority: cfg.Priority, IIF: "lo", Table: tableMain})
	for _, a := range p.Pods {
		p.Rules = append(p.Rules, Rule{Priority: cfg.Priority + 1, Src: netip.PrefixFrom(a, 32), IPProto: tcp, Table: cfg.CaptureTable})
	}
	p.Rules = append(p.Rules, Rule{Priority: cfg.Priority + 2, IPProto: tcp, Table: cfg.InboundTable})

	p.Routes = append(p.Routes, Route{Table: cfg.CaptureTable, Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0)})
	for _, a := range p.Pods {
		p.Routes = append(p.Routes, Route{Table: cfg.InboundTable, Dst: netip.PrefixFrom(a, 32)})
	}
	return p, nil
}

const tcp = 6

// planFor starts a plan for addrs: the IPv4 ones in Pods, the IPv6 ones in
// Refused, each sorted and without duplicates.
func planFor(addrs []netip.Addr) Plan {
	var p Plan
	for _, a := range addrs {
		a = a.Unmap()
		if a.Is4() {
			p.Pods = append(p.Pods, a)
		} else if a.IsValid() {
			p.Refused = append(p.Refused, a)
		}
	}
	slices.SortFunc(p.Pods, netip.Addr.Compare)
	p.Pods = slices.Compact(p.Pods)
	slices.SortFunc(p.Refused, netip.Addr.Compare)
	p.Refused = slices.Compact(p.Refused)
	return p
}

// refuse adds the IPv6 refusal of p.Refused (see NewPlan).
func (p *Plan) refuse(cfg Config) {
	if len(p.Refused) == 0 {
		return
	}
	for _, a := range p.Refused {
		pod := netip.PrefixFrom(a, 128)
		p.Rules = append(p.Rules,
			Rule{Priority: cfg.Priority + 1, Src: pod, IPProto: tcp, Table: cfg.CaptureTable},
			Rule{Priority: cfg.Priority + 1, Dst: pod, IPProto: tcp, Table: cfg.CaptureTable})
	}
	p.Routes = append(p.Routes, Route{Table: cfg.CaptureTable, Dst: netip.PrefixFrom(netip.IPv6Unspecified(), 0), Prohibit: true})
}

// String renders p one object per line, in a stable order: the golden-file
// form.
func (p Plan) String() string {
	var b strings.Builder
	b.WriteString("# ip rules\n")
	for _, r := range p.Rules {
		b.WriteString(r.String() + "\n")
	}
	b.WriteString("# ip routes\n")
	for _, r := range p.Routes {
		b.WriteString(r.String() + "\n")
	}
	b.WriteString("# bpf ferry_pods\n")
	for _, a := range p.Pods {
		b.WriteString(a.String() + "\n")
	}
	if len(p.Refused) > 0 {
		b.WriteString("# refused (IPv6: not carried yet)\n")
		for _, a := range p.Refused {
			b.WriteString(a.String() + "\n")
		}
	}
	return b.String()
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	}
	return fmt.Sprint(p)
}

func tableName(t int) string {
	switch t {
	case tableMain:
		return "main"
	case tableLocal:
		return "local"
	case tableDefault:
		return "default"
	}
	return fmt.Sprint(t)
}
