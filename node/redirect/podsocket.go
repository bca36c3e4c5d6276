//go:build linux

package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ListenPod opens one of the agent's listeners inside an enrolled pod's
// namespace (--capture pod); the calling thread must be in it. It is
// ListenTransparent's socket with Mark, so what it sends (a handshake's
// SYN-ACK from the original destination's address) skips the pod's capture
// rule.
func ListenPod(ctx context.Context, addr string) (*net.TCPListener, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: func(_, _ string, c syscall.RawConn) error {
		return errors.Join(setsockopts(c, true), setMark(c), ListenKeepAlive(c))
	}}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("redirect: listen in pod: %w", err)
	}
	return ln.(*net.TCPListener), nil
}

func setMark(c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, Mark); serr != nil {
			serr = fmt.Errorf("SO_MARK: %w", serr)
		}
	})
	return errors.Join(err, serr)
}

// NewSocket creates a non-blocking IPv4 TCP socket in the calling thread's
// network namespace, for DialSocket: a socket stays in the namespace it was
// created in, whichever thread uses it later.
func NewSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, fmt.Errorf("redirect: socket: %w", err)
	}
	return fd, nil
}

// DialSocket connects fd, a socket from NewSocket made in a pod's namespace,
// to dst from src (IP_TRANSPARENT: src need not be local), with Mark, so the
// connection skips the pod's capture rule. It takes fd over: on error it is
// closed.
//
// listed, when not nil, is told the bound source address and port before
// the connection is made, and the func it returns is called once connect
// has returned: that is how the pod program learns that a connection into
// the pod is the agent's own (bpf.PodCapture.Delivering).
func DialSocket(ctx context.Context, fd int, src netip.Addr, dst netip.AddrPort, listed func(netip.AddrPort) (func(), error)) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "tcp")
	defer f.Close()
	c, err := dialSocket(ctx, f, fd, src, dst, listed)
	if err != nil {
		return nil, fmt.Errorf("redirect: dial %v from %v in pod: %w", dst, src, err)
	}
	return c, nil
}

func dialSocket(ctx context.Context, f *os.File, fd int, src netip.Addr, dst netip.AddrPort, listed func(netip.AddrPort) (func(), error)) (net.Conn, error) {
	for _, o := range [...]struct{ level, opt, v int }{
		{unix.SOL_IP, unix.IP_TRANSPARENT, 1},
		{unix.SOL_SOCKET, unix.SO_MARK, Mark},
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(KeepAlive.Idle / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(KeepAlive.Interval / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, KeepAlive.Count},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return nil, fmt.Errorf("setsockopt %d/%d: %w", o.level, o.opt, err)
		}
	}
	if src.IsValid() {
		if listed == nil {
			// The port is chosen at connect, per destination.
			if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
				return nil, err
			}
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.Unmap().As4()}); err != nil {
			return nil, fmt.Errorf("bind: %w", err)
		}
	}
	if listed != nil {
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return nil, err
		}
		s4, ok := sa.(*unix.SockaddrInet4)
		if !ok {
			return nil, errors.New("bound to a non-IPv4 address")
		}
		done, err := listed(netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), uint16(s4.Port)))
		if err != nil {
			return nil, err
		}
		defer done()
	}
	err := unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().Unmap().As4(), Port: int(dst.Port())})
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return nil, err
	}
	if errors.Is(err, unix.EINPROGRESS) {
		if err := waitConnected(ctx, f); err != nil {
			return nil, err
		}
	}
	return net.FileConn(f)
}

// waitConnected waits, through the runtime's poller, for a non-blocking
// connect on f to finish, and returns its outcome.
func waitConnected(ctx context.Context, f *os.File) error {
	if dl, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	// Write runs the check at once (the connection may be up already:
	// the poller only reports edges from here on) and again at each
	// writability edge.
	var soerr error
	werr := rc.Write(func(fd uintptr) bool {
		n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			soerr = err
		case n == int(unix.EINPROGRESS) || n == int(unix.EALREADY) || n == int(unix.EINTR):
			return false
		case n != 0:
			soerr = unix.Errno(n)
		default:
			// No error yet: connected, or still connecting.
			if _, err := unix.Getpeername(int(fd)); errors.Is(err, unix.ENOTCONN) {
				return false
			}
		}
		return true
	})
	if werr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return werr
	}
	return soerr
}
