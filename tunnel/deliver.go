package tunnel

import (
	"errors"
	"io"
	"os"

	"github.com/ferrymesh/ferry/tunnel/internal/bufpool"
	"github.com/ferrymesh/ferry/tunnel/internal/sockio"
)

// Delivery: how received DATA reaches a stream's reader. A stream read with
// Read or copyFromStream has its chunks queued (recvBuf) and its reader
// woken. A stream proxied into a TCP socket (pair.forward) needs no
// goroutine while idle: the read loop writes what arrives to the socket
// itself, and a drain goroutine runs only while bytes wait. Its rules, all
// under c.mu:
//
//  1. The read loop writes a chunk inline only when it is at most
//     maxInline, no drain goroutine runs, nothing is queued and no earlier
//     write to the socket failed; otherwise the chunk is queued. Bulk
//     chunks go to the drain goroutine so that the read loop decrypts the
//     next frame while they are written, and streams sharing the
//     connection are written out in parallel.
//  2. While writing inline the read loop has dropped c.mu; busy says so,
//     and unforward waits for it (waiter) before the socket may close.
//  3. What the socket did not take is queued behind, already counted
//     (precounted): the drain goroutine does not count it again.
//  4. At most one drain goroutine runs (draining). It starts when bytes
//     are queued, the stream ended or failed, or an inline write failed
//     (needsDrainLocked), and ends when it finds nothing queued
//     (errDrained), clearing draining.
//  5. A stream that failed or was closed takes nothing: its chunks are
//     dropped and their bytes credited back to the connection.
//
// deliveryLocked decides rules 1 and 5; TestDeliveryRules is its table.

// forwarding is a stream's state while it is proxied into a socket.
type forwarding struct {
	sink       sockio.Sink
	to         forwardTarget // counts the bytes carried, drains (dir says which way)
	dir        int
	draining   bool  // the drain goroutine runs
	busy       bool  // the read loop is writing to sink
	waiter     bool  // unforward waits for that write to finish
	err        error // an inline write failed
	precounted int   // queued bytes already reported to to.copied
}

// delivery is what becomes of a received chunk.
type delivery int

const (
	deliverDrop   delivery = iota // the stream takes nothing: credit it back
	deliverInline                 // the read loop writes it to the socket
	deliverQueue                  // queued for Read or the drain goroutine
)

// deliveryLocked decides what becomes of an n-byte chunk for s.
func (s *Stream) deliveryLocked(n int) delivery {
	f := &s.fwd
	switch {
	case s.err != nil || s.closedLocal:
		return deliverDrop
	case n <= maxInline && f.sink.Valid() && !f.draining && s.recv.n == 0 && f.err == nil:
		return deliverInline
	}
	return deliverQueue
}

func (d delivery) String() string {
	return [...]string{"dropped", "written inline", "queued"}[d]
}

// needsDrainLocked reports whether a drain goroutine is to start.
func (s *Stream) needsDrainLocked() bool {
	f := &s.fwd
	return f.to != nil && !f.draining && (s.recv.n > 0 || s.recvDone || s.err != nil || f.err != nil)
}

// deliverLocked hands p to s. With own, p is a pooled buffer handed over.
// An inline write drops c.mu while it runs (rule 2).
func (r *readLoop) deliverLocked(s *Stream, p []byte, own bool) {
	c := r.c
	if len(p) == 0 {
		if own {
			bufpool.Put(p)
		}
		return
	}
	switch s.deliveryLocked(len(p)) {
	case deliverDrop:
		c.creditLocked(nil, int64(len(p)))
	case deliverInline:
		f := &s.fwd
		f.busy = true
		sink, to, dir := f.sink, f.to, f.dir
		c.mu.Unlock()
		to.copied(dir, len(p)) // counted when read, before the peer can answer
		k, err := r.inline.Write(sink, p)
		c.mu.Lock()
		f.busy = false
		if f.waiter {
			f.waiter = false
			s.wakeRead()
		}
		if err != nil {
			f.err = err
		}
		if k > 0 {
			c.creditLocked(s, int64(k))
		}
		if k < len(p) {
			if err != nil || s.err != nil || s.closedLocal {
				c.creditLocked(nil, int64(len(p)-k))
			} else {
				s.recv.push(p[k:], false)
				f.precounted += len(p) - k
			}
		}
		s.kickLocked()
	case deliverQueue:
		s.recv.push(p, own)
		s.wakeRead()
		s.kickLocked()
		return // the queue owns p now
	}
	if own {
		bufpool.Put(p)
	}
}

// forwardTarget is what a forwarded stream reports to: the bytes carried
// in direction dir, and the need for a drain goroutine, whose body
// drain(dir) reads with nextChunk(false) until errDrained. Methods, not
// closures: a forwarded stream keeps them for its whole life.
type forwardTarget interface {
	copied(dir, n int)
	drain(dir int)
}

// forwardTo lets the read loop write received bytes straight to sink,
// telling to about them; to.drain(dir) runs on a goroutine of its own
// whenever bytes, the stream's end or its failure wait.
func (s *Stream) forwardTo(sink sockio.Sink, to forwardTarget, dir int) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.fwd.sink, s.fwd.to, s.fwd.dir = sink, to, dir
	s.kickLocked()
}

// unforward ends forwardTo, waiting out an inline write in flight.
func (s *Stream) unforward() {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	f := &s.fwd
	f.sink, f.to = sockio.Sink{}, nil
	for f.busy {
		f.waiter = true
		w := s.rwaitLocked()
		s.c.mu.Unlock()
		<-w
		s.c.mu.Lock()
	}
}

// kickLocked starts the drain goroutine when something waits for it.
func (s *Stream) kickLocked() {
	if s.needsDrainLocked() {
		s.fwd.draining = true
		go s.fwd.to.drain(s.fwd.dir)
	}
}

// errDrained reports, to a drain goroutine, that nothing waits for it.
var errDrained = errors.New("tunnel: stream drained")

// nextChunk takes the oldest buffered chunk out of the stream, so it can be
// written on without another copy, waiting for one with wait. The caller
// returns base to the pool with bufpool.Put and reports the bytes with
// consumed; fresh is how many of them have not been counted yet. Without
// wait, a drain goroutine that finds nothing to do gets errDrained and
// ends.
func (s *Stream) nextChunk(wait bool) (data, base []byte, fresh int, err error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		// A failed stream holds no data (forgetLocked released it), so its
		// error comes first: an inline write may still be in flight then.
		switch {
		case s.err != nil:
			return nil, nil, 0, s.err
		case s.fwd.err != nil:
			return nil, nil, 0, s.fwd.err
		case s.recv.n > 0:
			data, base = s.recv.pop()
			counted := min(s.fwd.precounted, len(data))
			s.fwd.precounted -= counted
			return data, base, len(data) - counted, nil
		case s.recvDone:
			return nil, nil, 0, io.EOF
		case !wait:
			s.fwd.draining = false
			return nil, nil, 0, errDrained
		case s.rdl.expired():
			return nil, nil, 0, os.ErrDeadlineExceeded
		}
		w := s.rwaitLocked()
		c.mu.Unlock()
		<-w
		c.mu.Lock()
	}
}

// consumed returns n bytes taken with nextChunk to the flow-control windows.
func (s *Stream) consumed(n int) {
	s.c.mu.Lock()
	if s.err == nil {
		s.c.creditLocked(s, int64(n))
	} else {
		s.c.creditLocked(nil, int64(n))
	}
	s.c.mu.Unlock()
}
