package tunnel

import (
	"net"
	"syscall"
)

// waitReadable blocks until c has data (or EOF, or an error) to read,
// without holding a buffer: a MSG_PEEK of one byte asks the socket, and the
// runtime poller parks the goroutine meanwhile. Connections that are not
// plain TCP return at once.
func waitReadable(c net.Conn) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, e := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return e != syscall.EAGAIN
	})
	if err != nil {
		return err
	}
	return nil
}
