//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
	ns, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("bpf: attach: %w", err)
	}
	defer ns.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		return fmt.Errorf("bpf: attach: stat %s: %w", nsPath, err)
	}
	pin := filepath.Join(o.pinDir, linkPinName)

	old, err := link.LoadPinnedLink(pin, nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
		old = nil
	case err != nil:
		return fmt.Errorf("bpf: attach: load pinned link: %w", err)
	default:
		if sameNetNS(old, st.Ino) {
			if err := old.Update(o.objs.FerrySkLookup); err == nil {
				o.setLink(old)
				return nil
			}
		}
	}

	l, err := link.AttachNetNs(int(ns.Fd()), o.objs.FerrySkLookup)
	if err != nil {
		if old != nil {
			old.Close()
		}
		return fmt.Errorf("bpf: attach sk_lookup to %s: %w", nsPath, err)
	}
	if old != nil {
		// The new link is in place before the stale one goes.
		_ = old.Detach()
		if err := old.Unpin(); err != nil {
			old.Close()
			l.Close()
			return fmt.Errorf("bpf: attach: unpin stale link: %w", err)
		}
		old.Close()
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return fmt.Errorf("bpf: attach: pin link: %w", err)
	}
	o.setLink(l)
	return nil
}

func (o *Objects) setLink(l link.Link) {
	if o.link != nil && o.link != l {
		o.link.Close()
	}
	o.link = l
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
