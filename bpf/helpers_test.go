//go:build linux

package bpf

import (
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// pinDir mounts a private bpffs in a temporary directory for the test and
// returns a pin directory inside it. The mount is undone when the test ends,
// which also drops anything the test left pinned.
func pinDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs: %v", err)
		}
	})
	return filepath.Join(dir, "ferry")
}

// load loads the objects for a test, skipping on kernels without sk_lookup,
// and removes every pin when the test ends.
func load(t *testing.T, cfg Config) *Objects {
	t.Helper()
	o, err := Load(cfg)
	if err := testutil.KernelFeature(t, err); err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() {
		if err := o.Close(); err != nil {
			t.Error(err)
		}
		if err := Remove(cfg.PinDir); err != nil {
			t.Error(err)
		}
	})
	return o
}

// listen opens a plain (non-MPTCP) TCP listener inside ns.
func listen(t *testing.T, ns *testutil.NetNS, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(t.Context(), "tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// ip runs the ip(8) command inside ns.
func ip(t *testing.T, ns *testutil.NetNS, args ...string) {
	t.Helper()
	err := ns.Do(func() error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return errors.New(strings.TrimSpace(string(out)) + ": " + err.Error())
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ip %s: %v", strings.Join(args, " "), err)
	}
}

// cookie returns the kernel's socket cookie of c.
func cookie(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		v    uint64
		gerr error
	)
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}
