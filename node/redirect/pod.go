package redirect

import (
	"errors"
	"fmt"
	"net/netip"
)

// Mark is the socket mark (SO_MARK) of the agent's sockets inside an
// enrolled pod's network namespace (--capture pod), matched under MarkMask:
// their packets skip the pod's capture rule. 0x539/0xfff is the mark Istio's
// in-pod redirection uses, so rules and tooling written for it carry over.
const (
	Mark     = 0x539
	MarkMask = 0xfff
)

// NewPodPlan computes the plan for one enrolled pod's own network namespace
// (--capture pod), from the pod's addresses and the node's probe source
// (the zero Addr when probes are not exempted). It is pure:
//
//	pref P    fwmark 0x539/0xfff lookup main          the agent's own sockets in the pod
//	pref P    to <probe>/32 lookup main               replies to the kubelet's probes
//	pref P+1  ipproto tcp lookup T                    the pod's TCP is delivered locally
//	table T:  local 0.0.0.0/0 dev lo src <pod>        ... from the pod's own address
//
// The pod program then hands each connection to one of the agent's
// listeners in the pod. The local table's rule (priority 0) still comes
// first, so the pod's connections to its own addresses stay its own. The
// preferred source matters: a connection that has not bound an address
// takes its source from the route that carries it, and a local route would
// otherwise give the destination's. IPv6 TCP is refused as NewPlan refuses
// it. Pods lists the pod's one IPv4 address; a pod without one is an error.
func NewPodPlan(addrs []netip.Addr, probe netip.Addr, cfg Config) (Plan, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return Plan{}, err
	}
	p := planFor(addrs)
	if len(p.Pods) != 1 {
		return Plan{}, fmt.Errorf("redirect: pod plan: want one IPv4 address, have %v", p.Pods)
	}
	if probe.IsValid() && !probe.Unmap().Is4() {
		return Plan{}, errors.New("redirect: pod plan: the probe source must be IPv4")
	}
	p.refuse(cfg)
	p.Rules = append(p.Rules, Rule{Priority: cfg.Priority, Mark: Mark, Table: tableMain})
	if probe.IsValid() {
		p.Rules = append(p.Rules, Rule{Priority: cfg.Priority, Dst: netip.PrefixFrom(probe.Unmap(), 32), Table: tableMain})
	}
	p.Rules = append(p.Rules, Rule{Priority: cfg.Priority + 1, IPProto: tcp, Table: cfg.CaptureTable})
	p.Routes = append(p.Routes, Route{Table: cfg.CaptureTable, Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Src: p.Pods[0]})
	return p, nil
}
