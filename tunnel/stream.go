package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/tunnel/internal/bufpool"
)

// ErrWriteClosed is returned by Stream.Write after CloseWrite.
var ErrWriteClosed = errors.New("tunnel: write after CloseWrite")

// Stream is one HBONE CONNECT stream: a net.Conn whose bytes travel as
// HTTP/2 DATA frames. CloseWrite half-closes it (END_STREAM), as
// (*net.TCPConn).CloseWrite does a TCP connection. Read and Write may be
// called concurrently with each other; Close may be called at any time and
// fails pending operations. Close with unread data or an open write side
// resets the stream, like closing a TCP socket with unread data.
type Stream struct {
	c  *h2conn
	id uint32

	// Guarded by c.mu. The small fields come first, packed: an idle
	// connection holds two streams.
	status      int16 // client: the response's :status
	recvDone    bool  // END_STREAM received
	sentEnd     bool  // END_STREAM sent or queued
	closedLocal bool  // Close called
	responded   bool  // server: response headers sent
	gotResponse bool  // client: response headers received (or never will be)
	sendWnd     sendWindow
	recvWnd     recvWindow
	recv        recvBuf
	err         error               // reset, connection closed or Close called
	wreset      error               // peer reset the stream after its END_STREAM: writes fail
	reqFields   []hpack.HeaderField // server: the request, until its handler read it
	rdl, wdl    deadline
	cancel      context.CancelFunc // server: ends the handler's setup context (endSetup)
	writeEnd    func()             // see afterWriteEnd

	fwd forwarding // proxied into a socket: see deliver.go

	respReady    chan struct{} // client: closed when the response arrives
	rwake, wwake chan struct{} // made on first wait; see rwaitLocked
}

var _ net.Conn = (*Stream)(nil)

// The wake channels are made by the first waiter, under c.mu: most streams
// are never waited on (a proxied stream is forwarded, not read), and two
// channels per stream were a sixth of an idle connection's heap. Waiters
// check their condition under c.mu before they wait, and every wake is
// made under c.mu, so a wake with no channel yet has no waiter to miss.

// rwaitLocked returns the channel a reader waits on.
func (s *Stream) rwaitLocked() chan struct{} {
	if s.rwake == nil {
		s.rwake = make(chan struct{}, 1)
	}
	return s.rwake
}

// wwaitLocked returns the channel a writer waits on.
func (s *Stream) wwaitLocked() chan struct{} {
	if s.wwake == nil {
		s.wwake = make(chan struct{}, 1)
	}
	return s.wwake
}

func (s *Stream) wakeRead() {
	select {
	case s.rwake <- struct{}{}: // a nil channel: nobody waits
	default:
	}
}

func (s *Stream) wakeWrite() {
	select {
	case s.wwake <- struct{}{}:
	default:
	}
}

// afterWriteEnd arranges for f to run, once, as soon as writes to s can no
// longer succeed: the stream failed, or the peer reset it after its
// END_STREAM. f runs with the connection's lock held and must not take it.
// stop cancels f.
func (s *Stream) afterWriteEnd(f func()) (stop func()) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.err != nil || s.wreset != nil {
		f()
		return func() {}
	}
	s.writeEnd = f
	return func() {
		c.mu.Lock()
		s.writeEnd = nil
		c.mu.Unlock()
	}
}

// endSetup cancels, and lets go of, the context of a server stream's setup.
func (s *Stream) endSetup() {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
		s.cancel = nil
	}
}

// writeEndedLocked runs the afterWriteEnd function, if any.
func (s *Stream) writeEndedLocked() {
	if f := s.writeEnd; f != nil {
		s.writeEnd = nil
		f()
	}
}

// writeErr is why writes fail, or nil while they can succeed. finished
// reports that the peer reset the stream after its END_STREAM, which leaves
// what it sent readable.
func (s *Stream) writeErr() (finished bool, err error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.err != nil {
		return false, s.err
	}
	return s.wreset != nil, s.wreset
}

// endRecvLocked records END_STREAM from the peer.
func (s *Stream) endRecvLocked() {
	s.recvDone = true
	if s.sentEnd && s.c.streams[s.id] == s {
		delete(s.c.streams, s.id)
	}
	s.wakeRead()
	s.kickLocked()
}

// Read reads data the peer sent; it returns io.EOF after the peer's
// END_STREAM (its CloseWrite) once the buffer is drained.
func (s *Stream) Read(p []byte) (int, error) {
	c := s.c
	c.mu.Lock()
	for {
		if s.recv.n > 0 {
			n := s.recv.read(p)
			c.creditLocked(s, int64(n))
			c.mu.Unlock()
			return n, nil
		}
		if s.err != nil {
			err := s.err
			c.mu.Unlock()
			return 0, err
		}
		if s.recvDone {
			c.mu.Unlock()
			return 0, io.EOF
		}
		if len(p) == 0 {
			c.mu.Unlock()
			return 0, nil
		}
		if s.rdl.expired() {
			c.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		w := s.rwaitLocked()
		c.mu.Unlock()
		<-w
		c.mu.Lock()
	}
}

// Write sends p as DATA frames, waiting for flow-control credit.
func (s *Stream) Write(p []byte) (int, error) {
	c := s.c
	written := 0
	for len(p) > 0 {
		c.mu.Lock()
		var n int64
		for {
			if s.err != nil {
				err := s.err
				c.mu.Unlock()
				return written, err
			}
			if s.wreset != nil {
				err := s.wreset
				c.mu.Unlock()
				return written, err
			}
			if s.sentEnd {
				c.mu.Unlock()
				return written, ErrWriteClosed
			}
			if s.wdl.expired() {
				c.mu.Unlock()
				return written, os.ErrDeadlineExceeded
			}
			n = min(int64(len(p)), s.sendWnd.available(), c.sendWnd.available(), int64(min(c.peerMaxFrame, maxWriteChunk)))
			if n > 0 {
				break
			}
			w := s.wwaitLocked()
			c.mu.Unlock()
			<-w
			c.mu.Lock()
		}
		s.sendWnd.take(n)
		c.sendWnd.take(n)
		c.mu.Unlock()
		if err := c.writeData(s.id, p[:n]); err != nil {
			return written, err
		}
		written += int(n)
		p = p[n:]
	}
	return written, nil
}

// CloseWrite half-closes the stream: the peer reads EOF, and this side can
// still read. The END_STREAM frame is written by the caller, like a DATA
// frame by Write, rather than handed to the control writer: that saves a
// goroutine wake-up per stream.
func (s *Stream) CloseWrite() error {
	c := s.c
	c.lockW()
	defer c.unlockW()
	c.mu.Lock()
	err := s.err
	if err == nil {
		err = s.wreset
	}
	if err != nil || s.sentEnd {
		c.mu.Unlock()
		return err
	}
	s.sentEnd = true
	if s.recvDone && c.streams[s.id] == s {
		delete(c.streams, s.id)
	}
	c.mu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	return c.fr.WriteData(s.id, true, nil)
}

// Close releases the stream. A stream both sides finished closes silently;
// one with nothing left to read sends END_STREAM first; otherwise the
// stream is reset.
func (s *Stream) Close() error { return s.close(false) }

// abort resets the stream (RST_STREAM CANCEL), like closing a TCP socket
// with SO_LINGER 0; used when the other half of a proxied pair failed.
func (s *Stream) abort() error { return s.close(true) }

func (s *Stream) close(abort bool) error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.closedLocal {
		return nil
	}
	s.closedLocal = true
	if s.err == nil && s.wreset == nil {
		switch {
		case abort:
			c.queueLocked(rstFrame(s.id, http2.ErrCodeCancel))
		case !s.sentEnd && s.recv.n == 0:
			s.sentEnd = true
			c.queueLocked(ctlFrame{typ: http2.FrameData, stream: s.id})
			if !s.recvDone {
				c.queueLocked(rstFrame(s.id, http2.ErrCodeCancel))
			}
		case !s.sentEnd:
			c.queueLocked(rstFrame(s.id, http2.ErrCodeCancel))
		case !s.recvDone:
			c.queueLocked(rstFrame(s.id, http2.ErrCodeNo))
		}
	}
	c.forgetLocked(s, net.ErrClosed)
	s.rdl.stop()
	s.wdl.stop()
	c.releaseLocked()
	return nil
}

// LocalAddr returns the local address of the carrying connection.
func (s *Stream) LocalAddr() net.Addr { return s.c.nc.LocalAddr() }

// RemoteAddr returns the remote address of the carrying connection.
func (s *Stream) RemoteAddr() net.Addr { return s.c.nc.RemoteAddr() }

// SetDeadline sets the read and write deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline makes Read fail with os.ErrDeadlineExceeded after t.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.rdl.set(t, s.c, s.wakeRead)
	return nil
}

// SetWriteDeadline makes Write fail with os.ErrDeadlineExceeded after t.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.wdl.set(t, s.c, s.wakeWrite)
	return nil
}

// deadline is a settable point in time that wakes a waiter when it passes.
type deadline struct {
	t     time.Time
	timer *time.Timer
}

// set moves the deadline to t; wake, called with c.mu held, wakes the
// waiter. The caller holds c.mu.
func (d *deadline) set(t time.Time, c *h2conn, wake func()) {
	d.stop()
	d.t = t
	if t.IsZero() {
		wake()
		return
	}
	if dur := time.Until(t); dur > 0 {
		d.timer = time.AfterFunc(dur, func() {
			c.mu.Lock()
			wake()
			c.mu.Unlock()
		})
	} else {
		wake()
	}
}

func (d *deadline) stop() {
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

func (d *deadline) expired() bool { return !d.t.IsZero() && !time.Now().Before(d.t) }

// recvBuf queues received bytes in pooled chunks that are returned as soon
// as they are read, so an idle stream holds no buffer.
type recvBuf struct {
	chunks []rchunk
	n      int
}

type rchunk struct {
	buf []byte // pooled; buf[r:] is unread
	r   int
}

// push appends p. With own, p is a pooled buffer handed over; otherwise p is
// copied.
func (b *recvBuf) push(p []byte, own bool) {
	b.n += len(p)
	if own {
		b.chunks = append(b.chunks, rchunk{buf: p})
		return
	}
	if k := len(b.chunks); k > 0 {
		last := &b.chunks[k-1]
		if len(last.buf)+len(p) <= cap(last.buf) {
			last.buf = append(last.buf, p...)
			return
		}
	}
	size := bufpool.MinSize
	if len(b.chunks) > 0 {
		size = 16 << 10
	}
	nb := append(bufpool.Get(max(len(p), size))[:0], p...)
	b.chunks = append(b.chunks, rchunk{buf: nb})
}

// read copies into p and releases drained chunks.
func (b *recvBuf) read(p []byte) int {
	n := 0
	for n < len(p) && len(b.chunks) > 0 {
		h := &b.chunks[0]
		k := copy(p[n:], h.buf[h.r:])
		h.r += k
		n += k
		if h.r == len(h.buf) {
			bufpool.Put(h.buf)
			b.chunks[0] = rchunk{}
			b.chunks = b.chunks[1:]
		}
	}
	b.n -= n
	if len(b.chunks) == 0 {
		b.chunks = nil
	}
	return n
}

// pop takes the oldest chunk out: its unread bytes and its pooled base.
func (b *recvBuf) pop() (data, base []byte) {
	h := b.chunks[0]
	b.chunks[0] = rchunk{}
	b.chunks = b.chunks[1:]
	if len(b.chunks) == 0 {
		b.chunks = nil
	}
	data = h.buf[h.r:]
	b.n -= len(data)
	return data, h.buf
}

// release drops every chunk and reports how many unread bytes it held.
func (b *recvBuf) release() int {
	n := b.n
	for _, h := range b.chunks {
		bufpool.Put(h.buf)
	}
	b.chunks, b.n = nil, 0
	return n
}
