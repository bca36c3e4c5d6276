package tunnel

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/certs"
)

// Direction says which listener a proxied connection came through.
type Direction string

// Directions of proxied connections.
const (
	DirInbound          Direction = "inbound"           // HBONE, port 15008
	DirInboundPlaintext Direction = "inbound-plaintext" // captured plaintext, port 15006
	DirOutbound         Direction = "outbound"          // captured from a local pod, port 15001
)

// ConnInfo describes one proxied connection.
type ConnInfo struct {
	ID        uint64
	Direction Direction
	// Src and Dst are the connection's source and original destination.
	Src, Dst netip.AddrPort
	// DialledDst is what the source dialled when a NAT on the way rewrote
	// it to Dst (kube-proxy's DNAT of a Service's ClusterIP), or when the
	// agent picked Dst among the endpoints of the Service address it
	// dialled (Picked); zero otherwise.
	DialledDst netip.AddrPort
	// Picked says the agent chose Dst for DialledDst (Route.Target), not a
	// NAT before it.
	Picked bool
	// SrcIdentity and DstIdentity are the peers' SPIFFE identities; zero for
	// a plaintext peer or a passthrough destination.
	SrcIdentity, DstIdentity certs.Identity
	// Mode is "hbone", "passthrough" or "plaintext".
	Mode string
	// BytesReceived counts bytes from the source toward the destination;
	// BytesSent counts bytes from the destination back to the source (the
	// meaning of Istio's istio_tcp_received/sent_bytes_total).
	BytesReceived, BytesSent int64
	Start                    time.Time
}

// request is what an inbound connection is authorized against: derived,
// not stored beside the ConnInfo, so the two cannot disagree.
func (i *ConnInfo) request() Request {
	return Request{Peer: i.SrcIdentity, Src: i.Src, Dst: i.Dst, Plaintext: i.Direction == DirInboundPlaintext}
}

// Observer is told about every proxied connection, for metrics and access
// logs. Methods may be called concurrently from many connections.
type Observer interface {
	// Opened is called for each connection once its source and destination
	// are known and valid, before policy and the upstream dial; every
	// Opened is followed by exactly one Closed.
	Opened(ConnInfo) ConnObserver
}

// ConnObserver receives one connection's events. Sent and Received are
// called once per copied chunk (not per byte) from the two copy directions,
// concurrently; Closed is called once, last.
type ConnObserver interface {
	Received(n int)
	Sent(n int)
	// Closed reports how the connection ended: result is "ok", "denied"
	// (policy or route refused it) or "error"; reason is a short cause (""
	// when ok).
	Closed(result, reason string)
}

// Registry tracks proxied connections for the admin endpoint and for
// re-authorization after a policy change. The zero value is not usable;
// use NewRegistry. It is safe for concurrent use.
//
// No connection escapes a policy change while it is being set up. A
// connection subject to policy is registered, as pending, before it is
// authorized, and stays registered through its upstream dial until it
// ends. Reauthorize's caller publishes the new policy to the Authorizer
// before calling it, and registration and Reauthorize's scan take the same
// lock, so for any connection one of two orders holds:
//
//   - registered before the scan: the scan sees it, pending or open, and
//     checks it against the new policy; a pending connection it refuses has
//     its dial cancelled and is refused when the dial returns (see settle),
//     before a byte reaches the upstream;
//   - registered after the scan: its authorization comes later still, so it
//     already reads the new policy (or a newer one).
//
// Because the registry's lock orders the two, no policy generation counter
// is needed, and nothing on the data path pays for it: the checks happen
// once per connection, at registration and at settle.
type Registry struct {
	mu    sync.Mutex
	next  uint64
	conns map[uint64]*tracked
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{conns: make(map[uint64]*tracked)}
}

// tracked is one registered connection.
type tracked struct {
	info   ConnInfo
	hasReq bool // authorized against info.request() (inbound paths)
	recv   atomic.Int64
	sent   atomic.Int64
	// Guarded by Registry.mu.
	// cancel ends the dial's context while the connection is pending; nil
	// once settled (the context is not kept for the connection's life) and
	// for a connection added open.
	cancel  context.CancelFunc
	open    bool   // set up: listed by Connections, aborted by kill
	refused error  // why Reauthorize refused it, once it has
	kill    func() // aborts both halves
}

// add registers an open connection that is not subject to Reauthorize (an
// outbound one); kill aborts it. A connection subject to policy is
// registered with pending instead, before it is authorized.
func (r *Registry) add(info ConnInfo, kill func()) *tracked {
	t := &tracked{info: info, open: true, kill: kill}
	r.insert(t)
	return t
}

// pending registers a connection about to be authorized against
// info.request() and dialled, before either happens. cancel cancels the context its dial
// uses: Reauthorize calls it if it refuses the connection meanwhile. The
// caller ends the setup with settle, or with remove if authorization
// refuses it.
func (r *Registry) pending(info ConnInfo, cancel context.CancelFunc) *tracked {
	t := &tracked{info: info, hasReq: true, cancel: cancel}
	r.insert(t)
	return t
}

func (r *Registry) insert(t *tracked) {
	r.mu.Lock()
	r.next++
	t.info.ID = r.next
	r.conns[t.info.ID] = t
	r.mu.Unlock()
}

// settle ends a pending connection's setup. If Reauthorize refused it
// meanwhile, it is removed and the refusal returned: the caller must then
// close the upstream without writing to it and refuse the connection as a
// denial. Otherwise, with kill non-nil it is open from then on, aborted by
// kill if a later Reauthorize refuses it; with kill nil (the setup failed)
// it is removed.
func (r *Registry) settle(t *tracked, kill func()) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	t.cancel() // the dial is over; this releases its context
	t.cancel = nil
	if t.refused != nil || kill == nil {
		delete(r.conns, t.info.ID)
		return t.refused
	}
	t.open, t.kill = true, kill
	return nil
}

// remove unregisters t, pending or open.
func (r *Registry) remove(t *tracked) {
	r.mu.Lock()
	delete(r.conns, t.info.ID)
	cancel := t.cancel
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// Connections returns a snapshot of the open connections, oldest first.
// Connections still being set up are not listed.
func (r *Registry) Connections() []ConnInfo {
	r.mu.Lock()
	out := make([]ConnInfo, 0, len(r.conns))
	for _, t := range r.conns {
		if !t.open {
			continue
		}
		ci := t.info
		ci.BytesReceived = t.recv.Load()
		ci.BytesSent = t.sent.Load()
		out = append(out, ci)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b ConnInfo) int {
		return int(a.ID) - int(b.ID)
	})
	return out
}

// Reauthorize checks every inbound connection, open or still being set up,
// against allow and ends those it refuses: an open one is aborted, a
// pending one has its dial cancelled and is refused as a denial. It
// returns the number of connections it refused.
//
// Call it after the policy allow applies has been published to the
// Authorizer the proxies use (see Registry): a connection registered after
// the call's scan is authorized by that Authorizer alone.
func (r *Registry) Reauthorize(allow func(Request) error) int {
	r.mu.Lock()
	var victims []func()
	for _, t := range r.conns {
		if !t.hasReq || t.refused != nil {
			continue
		}
		if err := allow(t.info.request()); err != nil {
			t.refused = err
			if t.open {
				victims = append(victims, t.kill)
			} else {
				victims = append(victims, t.cancel)
			}
		}
	}
	r.mu.Unlock()
	for _, kill := range victims {
		kill()
	}
	return len(victims)
}

// nopConnObserver is used when no Observer is configured.
type nopConnObserver struct{}

func (nopConnObserver) Received(int)          {}
func (nopConnObserver) Sent(int)              {}
func (nopConnObserver) Closed(string, string) {}
