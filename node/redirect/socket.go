//go:build linux

package redirect

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ListenTransparent opens a TCP (IPv4) listener for captured connections:
// IP_TRANSPARENT, so it may accept connections addressed to any IP (the
// original destination is the accepted conn's LocalAddr) and answer from it;
// SO_REUSEPORT, so an upgraded agent can bind the same address while the old
// one drains; KeepAlive (see ListenKeepAlive); and never MPTCP (Go listeners are MPTCP by default since Go 1.24,
// and a SOCKMAP refuses MPTCP sockets). Needs CAP_NET_ADMIN (or NET_RAW).
func ListenTransparent(ctx context.Context, addr string) (*net.TCPListener, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: func(_, _ string, c syscall.RawConn) error {
		return errors.Join(setsockopts(c, true), ListenKeepAlive(c))
	}}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("redirect: listen transparent: %w", err)
	}
	return ln.(*net.TCPListener), nil
}

// DialTransparent dials dst from the address src, which need not be local
// (IP_TRANSPARENT, bound to src:0): the agent dials a pod as the original
// client, or a peer's HBONE port as the source pod. Replies come back to the
// socket through the inbound and capture routes Apply installs, so src must
// be an enrolled pod (for the capture rule) or dst one (for the inbound
// route). The zero src dials from the namespace's own address as usual.
func DialTransparent(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{KeepAliveConfig: KeepAlive, Control: func(_, _ string, c syscall.RawConn) error {
		return setsockopts(c, false)
	}}
	d.SetMultipathTCP(false)
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src.Unmap(), 0))
	}
	c, err := d.DialContext(ctx, "tcp4", dst.String())
	if err != nil {
		return nil, fmt.Errorf("redirect: dial %v from %v: %w", dst, src, err)
	}
	return c, nil
}

// DialledDst returns the destination the peer of an accepted connection
// dialled, as conntrack recorded it (SO_ORIGINAL_DST): a Service's
// ClusterIP when kube-proxy's DNAT rewrote it to a pod, the connection's
// local address when nothing did, and the zero AddrPort when conntrack has
// no entry or c is not a TCP socket.
// Capture itself sees only the rewritten destination: sk_lookup runs after
// the DNAT, at local delivery.
func DialledDst(c net.Conn) netip.AddrPort {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}
	}
	var ap netip.AddrPort
	_ = rc.Control(func(fd uintptr) {
		// The kernel writes a struct sockaddr_in (16 bytes); x/sys has
		// no getter of that shape, and an ipv6_mreq is 16 bytes too.
		m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if err != nil || binary.NativeEndian.Uint16(m.Multiaddr[0:2]) != unix.AF_INET {
			return
		}
		port := binary.BigEndian.Uint16(m.Multiaddr[2:4])
		ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Multiaddr[4:8])), port)
	})
	return ap
}

func setsockopts(c syscall.RawConn, reuseport bool) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		if serr != nil {
			serr = fmt.Errorf("IP_TRANSPARENT: %w", serr)
			return
		}
		if reuseport {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
				serr = fmt.Errorf("SO_REUSEPORT: %w", serr)
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// ListenKeepAlive sets KeepAlive on a listening socket, for use in a
// net.ListenConfig's Control with KeepAlive -1. Accepted sockets inherit the
// listener's keepalive options, so that costs four system calls once rather
// than per accepted connection, as Go's own KeepAliveConfig does.
func ListenKeepAlive(c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		for _, o := range [...]struct{ level, opt, v int }{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(KeepAlive.Idle / time.Second)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(KeepAlive.Interval / time.Second)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, KeepAlive.Count},
		} {
			if serr = unix.SetsockoptInt(int(fd), o.level, o.opt, o.v); serr != nil {
				serr = fmt.Errorf("keepalive: %w", serr)
				return
			}
		}
	})
	return errors.Join(err, serr)
}
