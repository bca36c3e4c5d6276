//go:build linux

package netns_test

import (
	"fmt"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestPrivilegedNetNS(t *testing.T) {
	testutil.Privileged(t)
	var host unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &host); err != nil {
		t.Fatal(err)
	}
	ns := testutil.NewNetNS(t)
	var inside unix.Stat_t
	if err := unix.Stat(ns.Path(), &inside); err != nil {
		t.Fatal(err)
	}
	if inside.Ino == host.Ino {
		t.Fatal("NewNetNS returned the host namespace")
	}
	var ln net.Listener
	err := ns.Do(func() error {
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), &st); err != nil {
			return err
		}
		if st.Ino != inside.Ino {
			return fmt.Errorf("Do runs in netns %d, want %d", st.Ino, inside.Ino)
		}
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0") // needs lo up
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The listener lives in ns: it is not reachable from the test's namespace
	// unless that happens to have the same port open, so dial from inside.
	err = ns.Do(func() error {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	// The calling thread never moved.
	var after unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &after); err != nil {
		t.Fatal(err)
	}
	if after.Ino != host.Ino {
		t.Fatal("the test's namespace changed")
	}
	if errDo := ns.Do(func() error { return os.ErrClosed }); errDo != os.ErrClosed {
		t.Fatalf("Do returned %v, want fn's error", errDo)
	}
}
