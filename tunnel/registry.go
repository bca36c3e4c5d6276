package tunnel

import (
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

// Registry tracks open proxied connections for the admin endpoint and for
// re-authorization after a policy change. The zero value is not usable;
// use NewRegistry. It is safe for concurrent use.
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
	req    Request
	hasReq bool // authorized against req (inbound paths)
	recv   atomic.Int64
	sent   atomic.Int64
	kill   func() // aborts both halves
}

// add registers a connection; kill aborts it. hasReq marks connections
// subject to Reauthorize.
func (r *Registry) add(info ConnInfo, req Request, hasReq bool, kill func()) *tracked {
	t := &tracked{info: info, req: req, hasReq: hasReq, kill: kill}
	r.mu.Lock()
	r.next++
	t.info.ID = r.next
	r.conns[t.info.ID] = t
	r.mu.Unlock()
	return t
}

func (r *Registry) remove(t *tracked) {
	r.mu.Lock()
	delete(r.conns, t.info.ID)
	r.mu.Unlock()
}

// Connections returns a snapshot of the open connections, oldest first.
func (r *Registry) Connections() []ConnInfo {
	r.mu.Lock()
	out := make([]ConnInfo, 0, len(r.conns))
	for _, t := range r.conns {
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

// Reauthorize checks every open inbound connection against allow and aborts
// those it refuses. It returns the number of connections closed.
func (r *Registry) Reauthorize(allow func(Request) error) int {
	r.mu.Lock()
	var victims []*tracked
	for _, t := range r.conns {
		if t.hasReq && allow(t.req) != nil {
			victims = append(victims, t)
		}
	}
	r.mu.Unlock()
	for _, t := range victims {
		t.kill()
	}
	return len(victims)
}

// nopConnObserver is used when no Observer is configured.
type nopConnObserver struct{}

func (nopConnObserver) Received(int)          {}
func (nopConnObserver) Sent(int)              {}
func (nopConnObserver) Closed(string, string) {}
