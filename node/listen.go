package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/node/cni"
	"github.com/ferrymesh/ferry/node/redirect"
)

// listen opens the agent's sockets. Data-plane listeners are plain TCP (never
// MPTCP: a SOCKMAP refuses MPTCP sockets) and, with eBPF redirection,
// IP_TRANSPARENT so they accept connections addressed to pods.
func (a *Agent) listen(ctx context.Context) (l *listeners, err error) {
	l = &listeners{}
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	tcp := func(name, addr string) (net.Listener, error) {
		var ln net.Listener
		var err error
		if a.cfg.Redirect == RedirectEBPF {
			ln, err = listenTransparent(ctx, addr)
		} else {
			lc := net.ListenConfig{KeepAlive: -1, Control: func(_, _ string, c syscall.RawConn) error {
				return redirect.ListenKeepAlive(c)
			}}
			lc.SetMultipathTCP(false)
			ln, err = lc.Listen(ctx, "tcp4", addr)
		}
		if err != nil {
			return nil, fmt.Errorf("node: %s listener on %s: %w", name, addr, err)
		}
		return ln, nil
	}
	plain := func(name, addr string) (net.Listener, error) {
		// SO_REUSEPORT: during an upgrade the new agent binds while the old
		// one drains.
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
			return errors.Join(err, serr)
		}}
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("node: %s listener on %s: %w", name, addr, err)
		}
		return ln, nil
	}
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	var e error
	if a.pods != nil {
		// The data-plane listeners are the pods' own, opened in their
		// namespaces as they are captured.
		l.outbound, l.inbound, l.hbone = a.pods.outbound, a.pods.inbound, a.pods.hbone
		l.cni, e = cni.Listen(a.cfg.CNISocket)
		add(e)
	} else {
		l.outbound, e = tcp("outbound", a.cfg.OutboundAddr)
		add(e)
		l.inbound, e = tcp("inbound", a.cfg.InboundAddr)
		add(e)
		l.hbone, e = tcp("hbone", a.cfg.HBONEAddr)
		add(e)
	}
	l.admin, e = plain("admin", a.cfg.AdminAddr)
	add(e)
	l.metrics, e = plain("metrics", a.cfg.MetricsAddr)
	add(e)
	l.readiness, e = plain("readiness", a.cfg.ReadinessAddr)
	add(e)
	return l, errors.Join(errs...)
}

// drainListener lets the agent stop accepting on a listener at the start of a
// drain without its Serve loop seeing an error: after drain, Accept waits
// until the listener is closed (when the data plane stops) and then reports
// net.ErrClosed.
type drainListener struct {
	net.Listener
	draining, closed     chan struct{}
	drainOnce, closeOnce sync.Once
}

func newDrainListener(ln net.Listener) *drainListener {
	return &drainListener{Listener: ln, draining: make(chan struct{}), closed: make(chan struct{})}
}

// Accept implements net.Listener.
func (l *drainListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		select {
		case <-l.draining:
			<-l.closed
			return nil, net.ErrClosed
		default:
		}
	}
	return c, err
}

// drain stops accepting: the socket is closed (and leaves the SOCKMAP).
func (l *drainListener) drain() {
	l.drainOnce.Do(func() { close(l.draining) })
	l.Listener.Close()
}

// Close implements net.Listener.
func (l *drainListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}
