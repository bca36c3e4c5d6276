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
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/bpf"
	"github.com/ferrymesh/ferry/node/redirect"
)

// capture is eBPF redirection as the agent uses it: in the node's network
// namespace (redirection) or in each pod's (podCapture).
type capture interface {
	// apply converges capture to the view's enrolled pods on this node.
	apply(v *view) error
	// Captured reports whether the pod with address ip is captured;
	// Refused whether ip is an enrolled pod's IPv6 address, whose TCP is
	// refused.
	Captured(ip netip.Addr) bool
	Refused(ip netip.Addr) bool
	// pods lists the captured addresses; counters reads the programs'
	// per-verdict counters.
	pods() []netip.Addr
	counters() (map[bpf.Verdict]uint64, error)
	// dialOut dials dst as the local pod src (HBONE to a peer, or
	// passthrough); dialIn delivers a connection from src to the local
	// pod dst.
	dialOut(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error)
	dialIn(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error)
	// Close releases the agent's handles; capture stays (fail closed).
	Close() error
}

// redirection owns the node's capture: the sk_lookup program and its maps,
// and the policy-routing rules and routes. Apply converges both to a set of
// enrolled pod addresses, once attach has put the program in place.
type redirection struct {
	load bpf.Config // what attach loads
	cfg  redirect.Config
	log  *slog.Logger
	// objs is set by attach, which the agent's Run calls before it starts
	// anything that uses capture.
	objs atomic.Pointer[bpf.Objects]

	mu       sync.Mutex
	captured map[netip.Addr]bool
	refused  map[netip.Addr]bool // enrolled pods' IPv6 addresses, TCP refused
}

var errNotAttached = errors.New("node: redirection: BPF not attached")

// newRedirection returns the node's capture, not yet attached.
func newRedirection(cfg Config, log *slog.Logger) *redirection {
	return &redirection{
		load:     bpf.Config{PinDir: cfg.BPFPinDir, HBONEPort: cfg.hbonePort()},
		log:      log,
		captured: map[netip.Addr]bool{},
		refused:  map[netip.Addr]bool{},
	}
}

// attach loads and attaches the BPF program to this network namespace and
// hands it the agent's listeners. Capture stays attached (pinned) after the
// agent exits, so enrolled pods fail closed.
func (r *redirection) attach(lns *listeners) error {
	out, in, hbone := lns.outbound.(*net.TCPListener), lns.inbound.(*net.TCPListener), lns.hbone.(*net.TCPListener)
	objs, err := bpf.Load(r.load)
	if err != nil {
		return fmt.Errorf("node: load BPF (needs root, CAP_BPF and a 5.9+ kernel): %w", err)
	}
	if err := objs.AttachNetNS("/proc/self/ns/net"); err != nil {
		objs.Close()
		return fmt.Errorf("node: attach sk_lookup: %w", err)
	}
	if err := objs.SetListeners(out, in, hbone); err != nil {
		objs.Close()
		return fmt.Errorf("node: register listeners: %w", err)
	}
	r.objs.Store(objs)
	return nil
}

func (r *redirection) apply(v *view) error { return r.Apply(v.localIPs()) }

// Apply converges the routing rules and the enrolled-pods map to exactly pods.
// It is idempotent.
func (r *redirection) Apply(pods []netip.Addr) error {
	objs := r.objs.Load()
	if objs == nil {
		return errNotAttached
	}
	plan, err := redirect.NewPlan(pods, r.cfg)
	if err != nil {
		return err
	}
	if err := redirect.Converge(plan, objs); err != nil {
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

// dialOut dials dst with src as the source address (IP_TRANSPARENT).
func (r *redirection) dialOut(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	return redirect.DialTransparent(ctx, src, dst)
}

// dialIn dials the pod dst from the client's address (IP_TRANSPARENT).
func (r *redirection) dialIn(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	return redirect.DialTransparent(ctx, src.Addr(), dst)
}

// pods lists the addresses in the BPF map, for the admin endpoint: none
// before attach.
func (r *redirection) pods() []netip.Addr {
	objs := r.objs.Load()
	if objs == nil {
		return nil
	}
	ips, err := objs.Pods()
	if err != nil {
		return nil
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return ips
}

// counters reads the program's per-verdict counters.
func (r *redirection) counters() (map[bpf.Verdict]uint64, error) {
	objs := r.objs.Load()
	if objs == nil {
		return nil, errNotAttached
	}
	return objs.Counters()
}

// Close releases the handles attach took. Pins, rules and routes stay:
// enrolled pods fail closed until an agent is back, and `ferry cleanup`
// removes them.
func (r *redirection) Close() error { return r.objs.Load().Close() }

// Cleanup removes every kernel object Ferry owns in the calling network
// namespace and in the pods an agent captured with --capture pod (recorded
// in stateDir): the pinned programs, links and maps under pinDir, and the
// tagged rules and routes.
func Cleanup(pinDir, stateDir string) error {
	return errors.Join(cleanupPods(stateDir), bpf.Remove(pinDir), redirect.Cleanup())
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
