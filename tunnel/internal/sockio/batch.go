package sockio

import (
	"net"
	"sync"
)

// batchSize bounds the bytes gathered into one write: the TLS records of
// the tunnel's largest DATA frame (256 KiB in 16 KiB records) with their
// headers and tags. A larger batch leaves in more than one write.
const batchSize = 256<<10 + 16*64

var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, batchSize); return &b }}

// Batcher sits between crypto/tls and the socket. crypto/tls hands every
// record of at most 16 KiB to the socket with a write of its own; between
// Begin and End the records are gathered and leave in one write instead, so
// a 256 KiB frame costs one system call, not sixteen, and the kernel cuts
// full-size segments from it. Outside a batch (handshake, alerts, small
// frames) writes pass straight through.
type Batcher struct {
	net.Conn
	mu  sync.Mutex
	on  bool
	buf *[]byte // gathered while on
	err error   // first write error inside the batch
}

// NewBatcher returns a Batcher writing to NewConn(c).
func NewBatcher(c net.Conn) *Batcher { return &Batcher{Conn: NewConn(c)} }

// Begin starts gathering writes.
func (b *Batcher) Begin() {
	b.mu.Lock()
	b.on = true
	b.mu.Unlock()
}

// End writes out what was gathered and stops gathering. It reports the
// first error of the batch.
func (b *Batcher) End() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.on = false
	b.flushLocked()
	if b.buf != nil {
		*b.buf = (*b.buf)[:0]
		batchPool.Put(b.buf)
		b.buf = nil
	}
	err := b.err
	b.err = nil
	return err
}

func (b *Batcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.on {
		return b.Conn.Write(p)
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.buf == nil {
		b.buf = batchPool.Get().(*[]byte)
	}
	if len(*b.buf)+len(p) > cap(*b.buf) {
		if b.flushLocked(); b.err != nil {
			return 0, b.err
		}
	}
	if len(p) > cap(*b.buf) {
		return b.Conn.Write(p)
	}
	*b.buf = append(*b.buf, p...)
	return len(p), nil
}

func (b *Batcher) flushLocked() {
	if b.buf == nil || len(*b.buf) == 0 || b.err != nil {
		return
	}
	_, b.err = b.Conn.Write(*b.buf)
	*b.buf = (*b.buf)[:0]
}
