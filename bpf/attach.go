//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// AttachNetNS attaches the sk_lookup program to the network namespace at
// nsPath (such as /proc/self/ns/net) and pins the link, so capture outlives
// the process: if the agent dies, connections from and to enrolled pods are
// refused (fail closed) rather than reaching whatever else listens.
//
// A link pinned by an earlier run for the same namespace is updated in place
// to this program, atomically, with no window without capture. A pinned link
// that is defunct (its namespace is gone) or belongs to another namespace is
// replaced. One pin directory serves one namespace.
func (o *Objects) AttachNetNS(nsPath string) error {
	l, err := attachPinned(nsPath, filepath.Join(o.pinDir, linkPinName), o.objs.FerrySkLookup)
	if err != nil {
		return err
	}
	if o.link != nil && o.link != l {
		o.link.Close()
	}
	o.link = l
	return nil
}

// attachPinned attaches prog to the network namespace at nsPath through the
// netns link pinned at pin: a live link there for the same namespace is
// updated in place (atomically: no window without capture); a defunct or
// foreign one is replaced once the new link is in place.
func attachPinned(nsPath, pin string, prog *ebpf.Program) (link.Link, error) {
	ns, err := os.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("bpf: attach: %w", err)
	}
	defer ns.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		return nil, fmt.Errorf("bpf: attach: stat %s: %w", nsPath, err)
	}

	old, err := link.LoadPinnedLink(pin, nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
		old = nil
	case err != nil:
		return nil, fmt.Errorf("bpf: attach: load pinned link: %w", err)
	default:
		if sameNetNS(old, st.Ino) {
			if err := old.Update(prog); err == nil {
				return old, nil
			}
		}
	}

	l, err := link.AttachNetNs(int(ns.Fd()), prog)
	if err != nil {
		if old != nil {
			old.Close()
		}
		return nil, fmt.Errorf("bpf: attach sk_lookup to %s: %w", nsPath, err)
	}
	if old != nil {
		// The new link is in place before the stale one goes.
		_ = old.Detach()
		if err := old.Unpin(); err != nil {
			old.Close()
			l.Close()
			return nil, fmt.Errorf("bpf: attach: unpin stale link: %w", err)
		}
		old.Close()
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("bpf: attach: pin link: %w", err)
	}
	return l, nil
}

// detachPinned detaches and unpins the link pinned at pin, even while
// another process holds it open. Nothing pinned there is not an error.
func detachPinned(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned link %s: %w", pin, err)
	}
	defer l.Close()
	var errs []error
	if err := l.Detach(); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("detach %s: %w", pin, err))
	}
	if err := l.Unpin(); err != nil {
		errs = append(errs, fmt.Errorf("unpin %s: %w", pin, err))
	}
	return errors.Join(errs...)
}

// sameNetNS reports whether l is a live netns link attached to the namespace
// with inode ino.
func sameNetNS(l link.Link, ino uint64) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	ns := info.NetNs()
	return ns != nil && ns.NetnsInode != 0 && uint64(ns.NetnsInode) == ino
}
