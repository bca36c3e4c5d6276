package tunnel

import (
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// readPooled reads from c into a pooled buffer of the class for size and
// returns it with the byte count; the caller returns buf with putBuf. For
// TCP it takes the buffer only once the socket has data: the read is tried
// directly on the socket and, when nothing is there, the buffer goes back
// to the pool while the runtime poller waits. An idle connection holds no
// buffer, and a busy one pays no extra system call. busy paces ordinary
// calls among raw ones (see sysmonEvery).
func readPooled(c net.Conn, size int, busy *busyReads) (buf []byte, n int, err error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		buf = getBuf(size)[:size]
		n, err = c.Read(buf)
		return buf, n, err
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	read := rawRead
	if busy.plain() {
		read = plainRead
	}
	var e syscall.Errno
	err = rc.Read(func(fd uintptr) bool {
		buf = getBuf(size)[:size]
		if n, e = read(fd, buf); e == syscall.EAGAIN {
			putBuf(buf)
			buf = nil
			busy.waited()
			return false
		}
		return true
	})
	if err != nil {
		return buf, 0, err
	}
	switch {
	case e != 0:
		return buf, 0, os.NewSyscallError("read", e)
	case n == 0:
		return buf, 0, io.EOF
	}
	return buf, n, nil
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
	switch {
	case e == syscall.EAGAIN:
		return 0, nil
	case e != 0:
		return 0, os.NewSyscallError("read", e)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// tryWrite writes as much of p to rc as the socket takes without blocking.
func tryWrite(rc syscall.RawConn, p []byte) (int, error) {
	var n int
	var e syscall.Errno
	err := rc.Write(func(fd uintptr) bool {
		n, e = rawWrite(fd, p)
		return true
	})
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
