package sockio

import (
	"io"
	"net"
	"os"
	"syscall"
)

// sysmonEvery: of the socket reads a loop makes in a row without waiting
// for data, every sysmonEvery-th is an ordinary system call. Raw calls let
// sysmon sleep through a busy spell, and with it its preemption of
// goroutines that never block (a copy between two fast sockets may not) and
// its network polling while every processor is busy; an ordinary call wakes
// it, and it stays awake while the process is busy. A loop that waits for
// data yields its processor anyway and leaves sysmon asleep (counting every
// read instead cost more on request/response loads: bench/README.md).
const sysmonEvery = 64

// busyReads counts a loop's reads since it last waited for data.
type busyReads int

// plain counts a read and reports whether it is to be an ordinary call.
func (b *busyReads) plain() bool { *b++; return *b%sysmonEvery == 0 }

// waited records that a read had to wait for data.
func (b *busyReads) waited() { *b = 0 }

// conn is a TCP connection whose Read and Write are raw system calls;
// everything else is the TCPConn's. It serves one reader and one writer at
// a time, as crypto/tls uses the connection under it.
type conn struct {
	*net.TCPConn
	rc   syscall.RawConn
	busy busyReads
	r, w op
}

// op is a socket read or write in progress. The function handed to
// RawConn.Read or Write is made once per socket and finds its arguments and
// leaves its results here: a closure made per call would allocate the
// variables it shares with its caller on every call.
type op struct {
	p     []byte
	n     int
	e     syscall.Errno
	plain bool // read: an ordinary call (see sysmonEvery)
	stuck bool // write: the socket took zero bytes
	fn    func(fd uintptr) bool
}

// NewConn returns c reading and writing with raw system calls when it is a
// TCP connection, and c as it is otherwise.
func NewConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	s := &conn{TCPConn: tc, rc: rc}
	s.r.fn = func(fd uintptr) bool { return s.r.read(fd, &s.busy) }
	s.w.fn = func(fd uintptr) bool {
		for s.w.n < len(s.w.p) {
			n, e := write(fd, s.w.p[s.w.n:])
			if e == syscall.EAGAIN {
				return false // wait until the socket takes more
			}
			if e != 0 {
				s.w.e = e
				return true
			}
			if n == 0 {
				s.w.stuck = true // as internal/poll: never loop on a zero write
				return true
			}
			s.w.n += n
		}
		return true
	}
	return s
}

func (s *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.r.p, s.r.n, s.r.e, s.r.plain = p, 0, 0, s.busy.plain()
	err := s.rc.Read(s.r.fn)
	s.r.p = nil
	return readResult(s.r.n, s.r.e, err)
}

func (s *conn) Write(p []byte) (int, error) {
	s.w.p, s.w.n, s.w.e, s.w.stuck = p, 0, 0, false
	err := s.rc.Write(s.w.fn)
	done, e, stuck := s.w.n, s.w.e, s.w.stuck
	s.w.p = nil
	switch {
	case err != nil:
		return done, err
	case stuck:
		return done, io.ErrUnexpectedEOF
	case e != 0:
		return done, os.NewSyscallError("write", e)
	}
	return done, nil
}

// read makes one read of o.p from the socket fd, raw or ordinary as o.plain
// says, for a RawConn.Read: false, to wait, when nothing is there.
func (o *op) read(fd uintptr, busy *busyReads) bool {
	rd := read
	if o.plain {
		rd = plainRead
	}
	if o.n, o.e = rd(fd, o.p); o.e == syscall.EAGAIN {
		busy.waited()
		return false
	}
	return true
}

// readResult turns a socket read's count, errno and RawConn error into
// what io.Reader returns.
func readResult(n int, e syscall.Errno, err error) (int, error) {
	switch {
	case err != nil:
		return 0, err
	case e != 0:
		return 0, os.NewSyscallError("read", e)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
