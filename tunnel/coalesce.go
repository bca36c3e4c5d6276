package tunnel

import (
	"net"
	"sync"
)

// coalesceSize bounds the TLS records gathered into one write: a full
// maxWriteChunk frame plus the records' headers and tags.
const coalesceSize = maxWriteChunk + maxWriteChunk/tlsRecord*64

var coalescePool = sync.Pool{New: func() any { b := make([]byte, 0, coalesceSize); return &b }}

// recordCoalescer sits between crypto/tls and the socket. crypto/tls hands
// every record of at most 16 KiB to the socket with a write of its own;
// between begin and end the records are gathered and leave in one write
// instead, so a 256 KiB frame costs one system call, not sixteen, and the
// kernel cuts full-size segments from it. Outside a batch (handshake,
// alerts, small frames) writes pass straight through.
type recordCoalescer struct {
	net.Conn
	mu  sync.Mutex
	on  bool
	buf *[]byte // gathered records while on
	err error   // first write error inside the batch
}

func newRecordCoalescer(c net.Conn) *recordCoalescer { return &recordCoalescer{Conn: newRawSocket(c)} }

// begin starts gathering records.
func (r *recordCoalescer) begin() {
	r.mu.Lock()
	r.on = true
	r.mu.Unlock()
}

// end writes out what was gathered and stops gathering. It reports the
// first error of the batch.
func (r *recordCoalescer) end() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on = false
	r.flushLocked()
	if r.buf != nil {
		*r.buf = (*r.buf)[:0]
		coalescePool.Put(r.buf)
		r.buf = nil
	}
	err := r.err
	r.err = nil
	return err
}

func (r *recordCoalescer) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.on {
		return r.Conn.Write(p)
	}
	if r.err != nil {
		return 0, r.err
	}
	if r.buf == nil {
		r.buf = coalescePool.Get().(*[]byte)
	}
	if len(*r.buf)+len(p) > cap(*r.buf) {
		if r.flushLocked(); r.err != nil {
			return 0, r.err
		}
	}
	if len(p) > cap(*r.buf) {
		return r.Conn.Write(p)
	}
	*r.buf = append(*r.buf, p...)
	return len(p), nil
}

func (r *recordCoalescer) flushLocked() {
	if r.buf == nil || len(*r.buf) == 0 || r.err != nil {
		return
	}
	_, r.err = r.Conn.Write(*r.buf)
	*r.buf = (*r.buf)[:0]
}
