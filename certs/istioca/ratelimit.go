package istioca

import (
	"container/list"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// peerLimiter is a token bucket per source address, for at most size
// addresses: the least recently seen is forgotten first, which only resets
// its bucket to full. It is safe for concurrent use.
//
// Addresses are keyed whole (an IPv6 pod has one address, and pods on a
// node can share a /64). The zero netip.Addr, for a peer of unknown
// address, has a bucket like any other.
type peerLimiter struct {
	limit rate.Limit
	burst int
	size  int

	mu    sync.Mutex
	lru   list.List // of *peerBucket, most recently seen first
	peers map[netip.Addr]*list.Element
}

type peerBucket struct {
	addr netip.Addr
	lim  *rate.Limiter
}

func newPeerLimiter(limit rate.Limit, burst, size int) *peerLimiter {
	return &peerLimiter{limit: limit, burst: burst, size: size, peers: map[netip.Addr]*list.Element{}}
}

// allow reports whether addr may make a request at now, and takes a token
// if so.
func (p *peerLimiter) allow(addr netip.Addr, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	el, ok := p.peers[addr]
	if ok {
		p.lru.MoveToFront(el)
	} else {
		el = p.lru.PushFront(&peerBucket{addr: addr, lim: rate.NewLimiter(p.limit, p.burst)})
		p.peers[addr] = el
		for p.lru.Len() > p.size {
			old := p.lru.Back()
			p.lru.Remove(old)
			delete(p.peers, old.Value.(*peerBucket).addr)
		}
	}
	return el.Value.(*peerBucket).lim.AllowN(now, 1)
}
