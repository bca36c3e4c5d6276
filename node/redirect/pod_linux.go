//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// acceptLocal is the pod namespace's sysctl ApplyPod sets and CleanupPod
// resets. With a capture rule in place the kernel validates an inbound
// packet's source by looking it up as TCP, finds it routed locally, and
// drops the packet as a martian unless the namespace accepts local sources.
// It is the pod's own namespace: the node's setting is untouched.
const acceptLocal = "/proc/sys/net/ipv4/conf/all/accept_local"

// ApplyPod converges the calling thread's network namespace, an enrolled
// pod's, to p (from NewPodPlan): Apply, and accept_local on.
func ApplyPod(p Plan) error {
	if err := os.WriteFile(acceptLocal, []byte("1"), 0); err != nil {
		return fmt.Errorf("redirect: apply pod: %w", err)
	}
	return Apply(p)
}

// CleanupPod removes Ferry's rules and routes from the calling thread's
// network namespace, a pod's, and turns accept_local off again.
func CleanupPod() error {
	err := Cleanup()
	if werr := os.WriteFile(acceptLocal, []byte("0"), 0); werr != nil {
		err = errors.Join(err, fmt.Errorf("redirect: cleanup pod: %w", werr))
	}
	return err
}

// probeLabel labels the probe source address on lo: how Ferry recognises
// it as its own (addresses carry no protocol tag).
const probeLabel = "lo:ferry"

// AddProbeSource gives the calling thread's network namespace, the node's,
// the probe source address (--probe-source) on lo, labelled lo:ferry, so
// the kubelet's probes can leave from it and the pods' answers come back to
// it. An address already there is left as it is.
func AddProbeSource(a netip.Addr) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("redirect: probe source: %w", err)
	}
	addr := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(a, 32)), Label: probeLabel, Scope: unix.RT_SCOPE_LINK}
	if err := netlink.AddrAdd(lo, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("redirect: probe source %s on lo: %w", a, err)
	}
	return nil
}

// removeProbeSource deletes the addresses labelled lo:ferry.
func removeProbeSource(h *netlink.Handle) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	addrs, err := h.AddrList(lo, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	var errs []error
	for i := range addrs {
		if addrs[i].Label == probeLabel {
			if err := h.AddrDel(lo, &addrs[i]); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
