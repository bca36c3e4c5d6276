//go:build linux

package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// NamedDir is where `ip netns add` binds named namespaces.
const NamedDir = "/var/run/netns"

// NetNS is an open handle on a network namespace. The namespace lives at
// least as long as the handle is open; an unnamed one (from New) goes away
// once the handle is closed and nothing else (a socket, a process) uses it,
// so a crashed test leaves nothing behind.
//
// A NetNS is safe for concurrent use: each Do runs on its own thread.
type NetNS struct {
	f *os.File
}

// New creates a fresh, unnamed network namespace with its loopback interface
// up. It never changes the namespace of the calling goroutine's thread.
func New() (*NetNS, error) {
	var ns *NetNS
	err := onFreshThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: unshare: %w", err)
		}
		f, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			return fmt.Errorf("netns: %w", err)
		}
		if err := setLinkUp("lo"); err != nil {
			f.Close()
			return fmt.Errorf("netns: set lo up: %w", err)
		}
		ns = &NetNS{f: f}
		return nil
	})
	return ns, err
}

// Open opens the namespace at path, such as /proc/PID/ns/net.
func Open(path string) (*NetNS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	return &NetNS{f: f}, nil
}

// OpenNamed opens the namespace that `ip netns add name` made.
func OpenNamed(name string) (*NetNS, error) {
	return Open(filepath.Join(NamedDir, name))
}

// DoNamed runs fn inside the named namespace, as Do does.
func DoNamed(name string, fn func() error) error {
	ns, err := OpenNamed(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	return ns.Do(fn)
}

// Close releases the handle; Do fails after Close. Close is idempotent.
func (ns *NetNS) Close() error {
	if err := ns.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("netns: close: %w", err)
	}
	return nil
}

// Path returns a path that names the namespace while ns is open, for APIs
// that open a namespace by path (such as nsenter or a BPF netns attachment).
func (ns *NetNS) Path() string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.f.Fd())
}

// FD returns the namespace's file descriptor, valid until Close.
func (ns *NetNS) FD() int {
	return int(ns.f.Fd())
}

// Do runs fn on a fresh OS thread that has joined ns, and returns fn's error.
// The thread is discarded afterwards (it is never returned to the Go
// scheduler), so no other goroutine ever runs in ns by accident. Sockets
// created inside fn stay in ns and may be used from any goroutine after Do
// returns. In tests, fn must not call t.Fatal or t.FailNow: return an error.
func (ns *NetNS) Do(fn func() error) error {
	return onFreshThread(func() error {
		if err := unix.Setns(int(ns.f.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: setns: %w", err)
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
			errc <- fmt.Errorf("netns: panic in namespace: %v", r)
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
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
