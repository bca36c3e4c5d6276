package sockio

import (
	"net"
	"os"
	"syscall"

	"github.com/ferrymesh/ferry/tunnel/internal/bufpool"
	"golang.org/x/sys/unix"
)

// Reader reads a connection into pooled buffers. For TCP it takes a buffer
// only once the socket has data: the read is tried on the socket and, when
// nothing is there, the buffer goes back to the pool while the runtime
// poller waits. An idle connection holds no buffer, and a busy one pays no
// extra system call. It serves one goroutine at a time.
type Reader struct {
	c    net.Conn
	rc   syscall.RawConn // nil: c is no TCP socket
	busy busyReads
	size int
	op   op // op.p is the buffer taken
}

// NewReader returns a Reader of c.
func NewReader(c net.Conn) *Reader {
	r := &Reader{c: c}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return r
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return r
	}
	r.rc = rc
	r.op.fn = func(fd uintptr) bool {
		r.op.p = bufpool.Get(r.size)[:r.size]
		if !r.op.read(fd, &r.busy) {
			bufpool.Put(r.op.p)
			r.op.p = nil
			return false
		}
		return true
	}
	return r
}

// Read reads into a pooled buffer of size's class and returns it with the
// byte count; the caller returns buf with bufpool.Put. buf may be nil when
// n is 0.
func (r *Reader) Read(size int) (buf []byte, n int, err error) {
	if r.rc == nil {
		buf = bufpool.Get(size)[:size]
		n, err = r.c.Read(buf)
		return buf, n, err
	}
	r.size, r.op.plain, r.op.n, r.op.e = size, r.busy.plain(), 0, 0
	err = r.rc.Read(r.op.fn)
	buf = r.op.p
	r.op.p = nil
	n, err = readResult(r.op.n, r.op.e, err)
	return buf, n, err
}

// TryRead reads into p what c has already received, without waiting: 0 and
// nil when nothing is there yet, io.EOF once the peer has closed.
func TryRead(c net.Conn, p []byte) (int, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0, nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var e syscall.Errno
	if err := rc.Read(func(fd uintptr) bool {
		n, e = read(fd, p)
		return true
	}); err != nil {
		return 0, err
	}
	if e == syscall.EAGAIN {
		return 0, nil
	}
	return readResult(n, e, nil)
}

// Sink is a TCP socket a TryWriter writes to.
type Sink struct{ rc syscall.RawConn }

// SinkOf returns c's socket; false when c is no TCP connection.
func SinkOf(c net.Conn) (Sink, bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return Sink{}, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return Sink{}, false
	}
	return Sink{rc}, true
}

// Valid reports whether s is a socket (the zero Sink is not).
func (s Sink) Valid() bool { return s.rc != nil }

// TryWriter writes to sinks as much as they take without blocking. Its
// function for RawConn.Write is made once (see op), so a write allocates
// nothing; it serves one goroutine at a time, for any number of sinks.
type TryWriter struct{ op op }

// Write writes what s takes of p now: 0 and nil when the socket is full.
func (w *TryWriter) Write(s Sink, p []byte) (int, error) {
	if w.op.fn == nil {
		w.op.fn = func(fd uintptr) bool {
			w.op.n, w.op.e = write(fd, w.op.p)
			return true
		}
	}
	w.op.p = p
	err := s.rc.Write(w.op.fn)
	n, e := w.op.n, w.op.e
	w.op.p = nil
	if err != nil {
		return 0, err
	}
	if e == syscall.EAGAIN {
		return 0, nil
	}
	if e != 0 {
		return 0, os.NewSyscallError("write", e)
	}
	return n, nil
}

// Unacked returns how many bytes written to c its peer has not yet
// acknowledged (SIOCOUTQ), or 0 when that cannot be read.
func Unacked(c *net.TCPConn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil || ierr != nil {
		return 0
	}
	return n
}
