//go:build linux

package testutil

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// NetNS is a network namespace created for one test. It is not bound to a
// name under /var/run/netns: the namespace lives as long as NetNS holds its
// file descriptor (and as long as any socket or process still uses it), so a
// crashed test leaves nothing behind in the host's namespace list.
//
// A NetNS is safe for concurrent use: each Do runs on its own thread.
type NetNS struct {
	f *os.File
}

// NewNetNS creates a fresh network namespace with its loopback interface up
// and registers its release with t.Cleanup. It never changes the network
// namespace of the calling goroutine's thread.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	ns, err := newNetNS()
	if err != nil {
		t.Fatalf("testutil: new netns: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// Close releases the test's reference to the namespace before the test ends;
// the kernel destroys it once nothing else (a socket, a process) uses it.
// Do fails after Close. Close is idempotent.
func (ns *NetNS) Close() error {
	if err := ns.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("testutil: close netns: %w", err)
	}
	return nil
}

func newNetNS() (*NetNS, error) {
	var ns *NetNS
	err := onFreshThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		f, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			return err
		}
		if err := setLinkUp("lo"); err != nil {
			f.Close()
			return fmt.Errorf("set lo up: %w", err)
		}
		ns = &NetNS{f: f}
		return nil
	})
	return ns, err
}

// Path returns a path that names the namespace while ns is open, for APIs
// that open a namespace by path (such as setns through nsenter or a BPF netns
// attachment).
func (ns *NetNS) Path() string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.f.Fd())
}

// FD returns the namespace's file descriptor, valid until the test ends.
func (ns *NetNS) FD() int {
	return int(ns.f.Fd())
}

// Do runs fn on a fresh OS thread that has joined ns, and returns fn's error.
// The thread is discarded afterwards (it is never returned to the Go
// scheduler), so no other goroutine ever runs in ns by accident. Sockets
// created inside fn stay in ns and may be used from any goroutine after Do
// returns. fn must not call t.Fatal or t.FailNow: return an error instead.
func (ns *NetNS) Do(fn func() error) error {
	return onFreshThread(func() error {
		if err := unix.Setns(int(ns.f.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("testutil: setns: %w", err)
		}
		return fn()
	})
}

// onFreshThread runs fn on a new goroutine locked to its OS thread and never
// unlocks it, so the runtime terminates the thread when the goroutine exits
// (whatever namespace fn left it in). The process's main thread is never
// used: the runtime cannot terminate it, and /proc/self/ns/net follows it.
func onFreshThread(fn func() error) error {
	errc := make(chan error, 1)
	go runLocked(fn, errc)
	return <-errc
}

func runLocked(fn func() error, errc chan<- error) {
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		// On the main thread: keep it busy (locked to this goroutine) while
		// another goroutine, which therefore runs elsewhere, does the work.
		inner := make(chan error, 1)
		go runLocked(fn, inner)
		errc <- <-inner
		runtime.UnlockOSThread()
		return
	}
	defer func() {
		if r := recover(); r != nil {
			errc <- fmt.Errorf("testutil: panic in netns: %v", r)
		}
	}()
	errc <- fn()
}

// setLinkUp sets IFF_UP on the named interface of the calling thread's
// network namespace.
func setLinkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return err
	}
	return nil
}
