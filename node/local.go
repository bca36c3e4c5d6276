package node

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// localHBONE carries HBONE between two pods of this node inside the agent.
//
// With capture on, a transparent dial from pod A's address to pod B's :15008
// would leave through B's veth and reach B itself, never the agent (the
// node's own traffic is not captured). So same-node tunnels are handed to the
// agent's HBONE server through a socket pair whose ends carry the addresses
// the connection would have had: the full HBONE path (mTLS, identity, policy,
// metrics) still runs, without a trip through the network.
type localHBONE struct {
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	port      atomic.Uint32 // synthetic source ports, as the kernel would pick
}

func newLocalHBONE() *localHBONE {
	l := &localHBONE{conns: make(chan net.Conn), done: make(chan struct{})}
	l.port.Store(32768)
	return l
}

// dial returns the client end of a new connection from src to dst and queues
// the server end for Accept.
func (l *localHBONE) dial(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("node: local HBONE socketpair: %w", err)
	}
	client, err := fileConn(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, err
	}
	server, err := fileConn(fds[1])
	if err != nil {
		client.Close()
		return nil, err
	}
	port := uint16(32768 + l.port.Add(1)%28000)
	srcAP := netip.AddrPortFrom(src, port)
	select {
	case l.conns <- &addrConn{UnixConn: server, local: dst, remote: srcAP}:
		return &addrConn{UnixConn: client, local: srcAP, remote: dst}, nil
	case <-ctx.Done():
	case <-l.done:
	}
	client.Close()
	server.Close()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, net.ErrClosed
}

func fileConn(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "local-hbone")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("node: local HBONE conn: %w", err)
	}
	return c.(*net.UnixConn), nil
}

// Accept implements net.Listener.
func (l *localHBONE) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *localHBONE) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

// Addr implements net.Listener.
func (l *localHBONE) Addr() net.Addr { return &net.UnixAddr{Name: "local-hbone", Net: "unix"} }

// addrConn is a socket-pair end that reports TCP addresses.
type addrConn struct {
	*net.UnixConn
	local, remote netip.AddrPort
}

func (c *addrConn) LocalAddr() net.Addr  { return net.TCPAddrFromAddrPort(c.local) }
func (c *addrConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }
