package tunnel

import (
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// pooledReader reads a socket into pooled buffers. For TCP it takes a
// buffer only once the socket has data: the read is tried directly on the
// socket and, when nothing is there, the buffer goes back to the pool while
// the runtime poller waits. An idle connection holds no buffer, and a busy
// one pays no extra system call. It serves one goroutine at a time.
type pooledReader struct {
	c    net.Conn
	rc   syscall.RawConn // nil: c is no TCP socket
	busy busyReads
	size int
	op   rawOp // op.p is the buffer taken
}

func newPooledReader(c net.Conn) *pooledReader {
	r := &pooledReader{c: c}
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
		r.op.p = getBuf(r.size)[:r.size]
		if !r.op.read(fd, &r.busy) {
			putBuf(r.op.p)
			r.op.p = nil
			return false
		}
		return true
	}
	return r
}

// read reads into a pooled buffer of the class for size and returns it
// with the byte count; the caller returns buf with putBuf.
func (r *pooledReader) read(size int) (buf []byte, n int, err error) {
	if r.rc == nil {
		buf = getBuf(size)[:size]
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

// tryRead reads into p what c has already received, without waiting: 0 and
// nil when nothing is there yet, io.EOF once the peer has closed.
func tryRead(c net.Conn, p []byte) (int, error) {
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
		n, e = rawRead(fd, p)
		return true
	}); err != nil {
		return 0, err
	}
	if e == syscall.EAGAIN {
		return 0, nil
	}
	return readResult(n, e, nil)
}

// tryWriter writes as much of p to a socket as it takes without blocking.
// Its function for RawConn.Write is made once (see rawOp), so a write
// allocates nothing; it serves one goroutine at a time.
type tryWriter struct{ op rawOp }

func (w *tryWriter) write(rc syscall.RawConn, p []byte) (int, error) {
	if w.op.fn == nil {
		w.op.fn = func(fd uintptr) bool {
			w.op.n, w.op.e = rawWrite(fd, w.op.p)
			return true
		}
	}
	w.op.p = p
	err := rc.Write(w.op.fn)
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

// unacked returns how many bytes written to c its peer has not yet
// acknowledged (SIOCOUTQ), or 0 when that cannot be read.
func unacked(c *net.TCPConn) int {
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
