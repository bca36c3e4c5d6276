package redirect

import (
	"fmt"
	"net/netip"
	"slices"
)

// PodMap is the BPF map of enrolled pods, as *bpf.Objects provides it.
type PodMap interface {
	Pods() ([]netip.Addr, error)
	SetPods([]netip.Addr) error
}

// Converge brings both halves of capture to p in the one order that never
// lets a pod's connection through to a socket that is not the agent's: the
// map learns newly enrolled pods before their traffic is routed to the node's
// sockets, and forgets unenrolled pods only after their routes are gone. (In
// the other order, a pod routed locally but absent from the map would reach
// whatever node process listens on the destination port.)
//
// Like Apply, it works on the calling thread's network namespace.
func Converge(p Plan, m PodMap) error {
	have, err := m.Pods()
	if err != nil {
		return fmt.Errorf("redirect: converge: %w", err)
	}
	union := slices.Concat(have, p.Pods)
	slices.SortFunc(union, netip.Addr.Compare)
	union = slices.Compact(union)
	if len(union) != len(have) {
		if err := m.SetPods(union); err != nil {
			return fmt.Errorf("redirect: converge: add pods to map: %w", err)
		}
	}
	if err := Apply(p); err != nil {
		return err
	}
	if err := m.SetPods(p.Pods); err != nil {
		return fmt.Errorf("redirect: converge: remove pods from map: %w", err)
	}
	return nil
}
