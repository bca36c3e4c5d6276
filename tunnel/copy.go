package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/ferrymesh/ferry/tunnel/internal/bufpool"
	"github.com/ferrymesh/ferry/tunnel/internal/sockio"
)

// longAgo is a deadline in the past: it makes a pending read return.
var longAgo = time.Unix(1, 0)

// Copy buffers start at copyStart and double, up to bufpool.MaxSize, while reads
// fill them; they shrink again when reads come back small. A buffer is held
// only while bytes move: an idle connection holds none.
const copyStart = 16 << 10

// halfCloser is a connection that can end its write side alone.
type halfCloser interface{ CloseWrite() error }

// pair joins two connections: src faces the connection's source (client),
// dst its destination. It aborts both at most once.
type pair struct {
	src, dst  net.Conn
	hooks     copyHooks
	stop      func() bool // ends abort's hold on the context
	abortOnce sync.Once
	left      atomic.Int32                    // directions still copying
	errs      [2]error                        // how src→dst and dst→src ended
	unread    *net.TCPConn                    // a side half stopped reading early, if any
	early     int                             // bytes of src's carried to dst before copying
	readers   [2]atomic.Pointer[socketReader] // abort wakes them
}

// abort resets both connections, so both copy directions end at once
// (parked ones are woken to see it).
func (p *pair) abort() {
	p.abortOnce.Do(func() {
		abortConn(p.src)
		abortConn(p.dst)
		for i := range p.readers {
			if r := p.readers[i].Load(); r != nil {
				sockio.Wake(&r.spot)
			}
		}
	})
}

// abortConn closes c so that its peer sees a reset, not an orderly end.
func abortConn(c net.Conn) {
	switch c := c.(type) {
	case *Stream:
		c.abort()
	case *net.TCPConn:
		c.SetLinger(0)
		c.Close()
	default:
		c.Close()
	}
}

// copyResult is how a proxied connection ended.
type copyResult struct {
	err error // first copy error; nil when both directions ended cleanly
}

// copyHooks is told about a pair's bytes and its end.
type copyHooks interface {
	// copied reports n bytes carried src→dst (dir 0) or dst→src (dir 1),
	// once per chunk.
	copied(dir, n int)
	// ended reports how the pair ended, once both connections are closed.
	ended(copyResult)
}

// start copies both ways in the background until both directions end,
// carrying half-closes across, then closes both connections and tells
// hooks. A failing direction, or ctx ending, aborts both. No direction
// holds a goroutine while its side is idle: a stream's direction into a
// TCP socket runs only while bytes move (see forward), and a TCP socket's
// is parked once idle (see socketReader). Any other direction runs on a
// goroutine of its own.
func (p *pair) start(ctx context.Context, hooks copyHooks) {
	p.hooks = hooks
	p.left.Store(2)
	// The readers exist before ctx can abort the pair, which wakes them.
	r0 := newSocketReader(p, 0, p.dst, p.src)
	r1 := newSocketReader(p, 1, p.src, p.dst)
	p.readers[0].Store(r0)
	p.readers[1].Store(r1)
	p.stop = context.AfterFunc(ctx, p.abort)
	p.launch(r0, 0, p.dst, p.src)
	p.launch(r1, 1, p.src, p.dst)
}

// copied implements forwardTarget.
func (p *pair) copied(dir, n int) { p.hooks.copied(dir, n) }

// finish records how direction dir ended; the second to end closes both
// connections and reports the pair's end.
func (p *pair) finish(dir int, err error) {
	p.errs[dir] = err
	if p.left.Add(-1) > 0 {
		return
	}
	if p.unread != nil {
		settle(p.unread, settleTime) // ctx ending still aborts it
	}
	p.stop()
	p.src.Close()
	p.dst.Close()
	p.hooks.ended(copyResult{err: errors.Join(p.errs[0], p.errs[1])})
}

// launch starts direction dir, from → to: r when from is a TCP socket,
// else forward, else a goroutine copying until from ends.
func (p *pair) launch(r *socketReader, dir int, to, from net.Conn) {
	if r != nil {
		go r.run()
		return
	}
	if s, ok := from.(*Stream); ok && p.forward(dir, to, s) {
		return
	}
	go func() { p.finish(dir, p.end(to, copyOne(to, from, func(n int) { p.copied(dir, n) }))) }()
}

// parkAfter is how long a TCP socket being copied stays idle before its
// reader parks it: short enough that an idle connection soon costs no
// goroutine, long enough that a busy one never pays for parking (two epoll
// calls and a new goroutine per wake-up).
var parkAfter = time.Second

// socketReader copies a TCP socket into to, like copyOne, on a goroutine
// that lives only while the socket is active: after parkAfter without a
// byte, the read deadline it keeps ends the read and the socket is parked
// (sockio.Park); a new goroutine carries on when bytes, the socket's end,
// the pair's abort or the end of the stream's writes arrive. Copying into a
// stream ends as soon as the stream can take no more, without waiting for
// from to send: a client gone, or a tunnel lost, must not leave the other
// side's socket open until it next speaks. If the peer merely reset the
// stream after finishing its own side (RFC 9113 §8.1), the pair is not
// aborted: what it sent is still delivered the other way, and from is
// settled before it is closed.
type socketReader struct {
	p      *pair
	dir    int
	to     net.Conn
	from   *net.TCPConn
	s      *Stream // to, when it is a stream
	r      *sockio.Reader
	size   int       // buffer size class, kept across parking
	extend time.Time // when the idle deadline is next pushed back
	// stopWriteEnd cancels writesEnded; nil when to is no stream.
	stopWriteEnd func()
	writeEnded   atomic.Bool
	spot         sockio.Spot
}

// newSocketReader returns the reader copying from into to, or nil when from
// is no TCP socket.
func newSocketReader(p *pair, dir int, to, from net.Conn) *socketReader {
	tc, ok := from.(*net.TCPConn)
	if !ok {
		return nil
	}
	r := &socketReader{p: p, dir: dir, to: to, from: tc, r: sockio.NewReader(tc), size: copyStart}
	if s, ok := to.(*Stream); ok {
		r.s = s
		r.stopWriteEnd = s.afterWriteEnd(r.writesEnded)
	}
	return r
}

// writesEnded ends the read in progress, or the parking, once the stream
// can take no more. It runs with the stream's connection lock held.
func (r *socketReader) writesEnded() {
	r.writeEnded.Store(true)
	r.from.SetReadDeadline(longAgo)
	sockio.Wake(&r.spot)
}

// beforeRead pushes the idle deadline back, at most once per parkAfter/2.
func (r *socketReader) beforeRead() {
	now := time.Now()
	if now.Before(r.extend) {
		return
	}
	r.extend = now.Add(parkAfter / 2)
	r.from.SetReadDeadline(now.Add(parkAfter))
	if r.writeEnded.Load() {
		r.from.SetReadDeadline(longAgo) // writesEnded's, which the line above may have replaced
	}
}

func (r *socketReader) copied(n int) { r.p.hooks.copied(r.dir, n) }

func (r *socketReader) run() {
	var err error
	for {
		err = copyChunks(r.to, r.r, &r.size, r.copied, r.beforeRead)
		if !errors.Is(err, os.ErrDeadlineExceeded) || r.writeEnded.Load() {
			break
		}
		// Idle. Parking fails only once from is closed (or epoll does):
		// the next read reports it.
		if sockio.Park(&r.spot, r.from, r.run) == nil {
			if r.writeEnded.Load() {
				sockio.Wake(&r.spot) // writesEnded ran before it could
			}
			return
		}
	}
	if r.s == nil {
		r.p.finish(r.dir, r.p.end(r.to, err))
		return
	}
	r.stopWriteEnd()
	finished, werr := r.s.writeErr()
	if finished {
		var reset *StreamResetError
		if errors.As(werr, &reset) && reset.Code == http2.ErrCodeNo {
			r.p.unread = r.from
			r.p.finish(r.dir, nil)
			return
		}
		r.p.abort()
		r.p.finish(r.dir, werr)
		return
	}
	if err != nil && werr != nil {
		err = werr // the cause, not the read deadline it set
	}
	r.p.finish(r.dir, r.p.end(r.to, err))
}

// settleTime bounds how long a socket left with bytes unread is settled
// before it is closed.
const settleTime = 5 * time.Second

// settle reads and drops what c sends until its peer has acknowledged
// everything written to c, c reaches EOF, or d passes. Closing a socket
// with bytes unread resets it, and a reset throws away what is still
// queued for it; settling first lets the last bytes written to it arrive
// (a peer that is still sending, as a client uploading whose answer came
// early, reads them once it stops).
func settle(c *net.TCPConn, d time.Duration) {
	deadline := time.Now().Add(d)
	for sockio.Unacked(c) > 0 {
		next := time.Now().Add(20 * time.Millisecond)
		if next.After(deadline) {
			return
		}
		c.SetReadDeadline(next)
		if _, err := io.Copy(io.Discard, c); !errors.Is(err, os.ErrDeadlineExceeded) {
			return // EOF: nothing is left unread; or the socket failed
		}
	}
}

// end finishes a direction that copied into to and ended with err.
func (p *pair) end(to net.Conn, err error) error {
	if err != nil {
		p.abort()
		return err
	}
	if hc, ok := to.(halfCloser); ok {
		if err := hc.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			p.abort()
			return err
		}
	} else {
		to.Close()
	}
	return nil
}

// forward copies s into the TCP connection to like half, but with no
// goroutine waiting on an idle stream: the read loop writes what arrives
// straight to the socket, and a drain goroutine starts only while bytes
// wait for a full socket, or to carry the stream's end or failure over.
// finish gets the direction's result. It reports false, doing nothing,
// when to is not a TCP connection.
func (p *pair) forward(dir int, to net.Conn, s *Stream) bool {
	sink, ok := sockio.SinkOf(to)
	if !ok {
		return false
	}
	s.forwardTo(sink, p, dir)
	return true
}

// drain implements forwardTarget: it writes what direction dir's stream
// queued for its full socket, and carries the stream's end or failure
// over.
func (p *pair) drain(dir int) {
	to, from := p.dst, p.src
	if dir == 1 {
		to, from = p.src, p.dst
	}
	s := from.(*Stream)
	err := copyFromStream(to, s, func(n int) { p.copied(dir, n) }, false)
	if err == errDrained {
		return
	}
	s.unforward()
	p.finish(dir, p.end(to, err))
}

// copyOne moves bytes until from reports EOF (nil) or an error.
func copyOne(to, from net.Conn, count func(int)) error {
	if s, ok := from.(*Stream); ok {
		return copyFromStream(to, s, count, true)
	}
	size := copyStart
	return copyChunks(to, sockio.NewReader(from), &size, count, func() {})
}

// copyChunks moves bytes read by r into to until a read reports EOF (nil)
// or an error, calling before ahead of each read. *size is the buffer size
// class, doubled while reads fill it and halved when they come back small.
func copyChunks(to net.Conn, r *sockio.Reader, size *int, count func(int), before func()) error {
	for {
		before()
		buf, n, err := r.Read(*size)
		if n > 0 {
			count(n)
			if _, werr := to.Write(buf[:n]); werr != nil {
				bufpool.Put(buf)
				return werr
			}
		}
		if buf != nil {
			bufpool.Put(buf)
		}
		switch {
		case n == *size && *size < bufpool.MaxSize:
			*size *= 2
		case n < *size/4 && *size > copyStart:
			*size /= 2
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// copyFromStream writes a stream's received chunks straight to to until
// the stream ends (nil) or fails; without wait it returns errDrained as
// soon as nothing is queued (see Stream.nextChunk).
func copyFromStream(to net.Conn, s *Stream, count func(int), wait bool) error {
	for {
		data, base, fresh, err := s.nextChunk(wait)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if fresh > 0 {
			count(fresh)
		}
		_, werr := to.Write(data)
		bufpool.Put(base)
		s.consumed(len(data))
		if werr != nil {
			return werr
		}
	}
}
