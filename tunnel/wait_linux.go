package tunnel

import (
	"io"
	"net"
	"os"
	"syscall"
)

// readPooled reads from c into a pooled buffer of the class for size and
// returns it with the byte count; the caller returns buf with putBuf. For
// TCP it takes the buffer only once the socket has data: the read is tried
// directly on the socket and, when nothing is there, the buffer goes back
// to the pool while the runtime poller waits. An idle connection holds no
// buffer, and a busy one pays no extra system call.
func readPooled(c net.Conn, size int) (buf []byte, n int, err error) {
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
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			buf = getBuf(size)[:size]
			n, rerr = syscall.Read(int(fd), buf)
			switch rerr {
			case syscall.EINTR:
				putBuf(buf)
				continue
			case syscall.EAGAIN:
				putBuf(buf)
				buf = nil
				return false
			}
			return true
		}
	})
	if err != nil {
		return buf, 0, err
	}
	switch {
	case rerr != nil:
		return buf, 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return buf, 0, io.EOF
	}
	return buf, n, nil
}
