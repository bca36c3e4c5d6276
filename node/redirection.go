package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/bpf"
	"github.com/ferrymesh/ferry/node/redirect"
)

// redirection owns the node's capture: the sk_lookup program and its maps,
// and the policy-routing rules and routes. Apply converges both to a set of
// enrolled pod addresses.
type redirection struct {
	objs *bpf.Objects
	cfg  redirect.Config
	log  *slog.Logger

	mu       sync.Mutex
	captured map[netip.Addr]bool
	refused  map[netip.Addr]bool // enrolled pods' IPv6 addresses, TCP refused
}

// newRedirection loads and attaches the BPF program to this network
// namespace and hands it the agent's listeners. Capture stays attached
// (pinned) after the agent exits, so enrolled pods fail closed.
func newRedirection(cfg Config, lns *listeners, log *slog.Logger) (*redirection, error) {
	objs, err := bpf.Load(bpf.Config{PinDir: cfg.BPFPinDir, HBONEPort: cfg.hbonePort()})
	if err != nil {
		return nil, fmt.Errorf("node: load BPF (needs root, CAP_BPF and a 5.9+ kernel): %w", err)
	}
	if err := objs.AttachNetNS("/proc/self/ns/net"); err != nil {
		objs.Close()
		return nil, fmt.Errorf("node: attach sk_lookup: %w", err)
	}
	if err := objs.SetListeners(lns.outbound, lns.inbound, lns.hbone); err != nil {
		objs.Close()
		return nil, fmt.Errorf("node: register listeners: %w", err)
	}
	return &redirection{objs: objs, log: log, captured: map[netip.Addr]bool{}, refused: map[netip.Addr]bool{}}, nil
}

// Apply converges the routing rules and the enrolled-pods map to exactly pods.
// It is idempotent.
func (r *redirection) Apply(pods []netip.Addr) error {
	plan, err := redirect.NewPlan(pods, r.cfg)
	if err != nil {
		return err
	}
	if err := redirect.Converge(plan, r.objs); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	next := make(map[netip.Addr]bool, len(plan.Pods))
	for _, ip := range plan.Pods {
		next[ip] = true
		if !r.captured[ip] {
			r.log.Info("pod captured", "pod", ip)
		}
	}
	for ip := range r.captured {
		if !next[ip] {
			r.log.Info("pod released", "pod", ip)
		}
	}
	r.captured = next
	refused := make(map[netip.Addr]bool, len(plan.Refused))
	for _, ip := range plan.Refused {
		refused[ip] = true
		if !r.refused[ip] {
			r.log.Warn("pod IPv6 TCP refused: Ferry carries IPv4 only; connections to and from this address fail closed", "pod", ip)
		}
	}
	r.refused = refused
	return nil
}

// Refused reports whether TCP on ip is refused (an enrolled pod's IPv6 address).
func (r *redirection) Refused(ip netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refused[ip]
}

// Captured reports whether ip's capture is in place.
func (r *redirection) Captured(ip netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.captured[ip]
}

// dialFrom dials dst with src as the source address (IP_TRANSPARENT).
func (r *redirection) dialFrom(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	return redirect.DialTransparent(ctx, src, dst)
}

// pods lists the addresses in the BPF map, for the admin endpoint.
func (r *redirection) pods() []netip.Addr {
	ips, err := r.objs.Pods()
	if err != nil {
		return nil
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return ips
}

// Close releases the agent's handles. Pins, rules and routes stay: enrolled
// pods fail closed until an agent is back, and `ferry cleanup` removes them.
func (r *redirection) Close() error { return r.objs.Close() }

// Cleanup removes every kernel object Ferry owns in the calling network
// namespace: the pinned program, link and maps under pinDir, and the tagged
// rules and routes.
func Cleanup(pinDir string) error {
	return errors.Join(bpf.Remove(pinDir), redirect.Cleanup())
}

// listenTransparent opens an IP_TRANSPARENT data-plane listener.
func listenTransparent(ctx context.Context, addr string) (net.Listener, error) {
	return redirect.ListenTransparent(ctx, addr)
}

// isLocalAddr reports whether ip is an address of this network namespace (a
// route lookup that resolves to the local table).
func isLocalAddr(ip netip.Addr) bool {
	if ip.IsLoopback() {
		return true
	}
	routes, err := netlink.RouteGet(ip.AsSlice())
	if err != nil || len(routes) == 0 {
		return false
	}
	return routes[0].Type == unix.RTN_LOCAL
}
