package node

import (
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDataPlaneKeepAlive: without capture too, the agent's data-plane
// sockets, accepted and dialled, probe with ztunnel's keepalive (180 s
// idle, 180 s apart, 9 probes), not Go's 15 s.
func TestDataPlaneKeepAlive(t *testing.T) {
	a := &Agent{cfg: Config{
		Redirect:     RedirectNone,
		OutboundAddr: "127.0.0.1:0", InboundAddr: "127.0.0.1:0", HBONEAddr: "127.0.0.1:0",
		AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0",
	}}
	l, err := a.listen(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	for name, ln := range map[string]*net.TCPListener{"outbound": l.outbound, "inbound": l.inbound, "hbone": l.hbone} {
		dialled, err := dialPlain(t.Context(), ln.Addr().(*net.TCPAddr).AddrPort())
		if err != nil {
			t.Fatal(err)
		}
		accepted, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		checkKeepAlive(t, name+" dialled", dialled.(*net.TCPConn))
		checkKeepAlive(t, name+" accepted", accepted)
		dialled.Close()
		accepted.Close()
	}
}

func checkKeepAlive(t *testing.T, name string, c syscall.Conn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []struct {
		level, opt, want int
		name             string
	}{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 180, "TCP_KEEPIDLE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 180, "TCP_KEEPINTVL"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9, "TCP_KEEPCNT"},
	} {
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), o.level, o.opt) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		if v != o.want {
			t.Errorf("%s socket: %s = %d, want %d", name, o.name, v, o.want)
		}
	}
}
