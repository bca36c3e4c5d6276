//go:build linux

package testutil

import (
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// CheckKeepAlive fails t unless the TCP socket c probes with ztunnel's
// keepalive: on, 180 s idle, 180 s between probes, 9 probes. name says
// which socket in the failure.
func CheckKeepAlive(t testing.TB, name string, c syscall.Conn) {
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
