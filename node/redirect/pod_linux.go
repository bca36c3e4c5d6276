//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ApplyPod converges the calling thread's network namespace, an enrolled
// pod's, to p (from NewPodPlan): Apply, and accept_local on every interface
// but lo. With a capture rule in place the kernel validates an inbound
// packet's source by looking it up as TCP, finds it routed locally, and drops
// the packet as a martian unless the interface accepts local sources. It is
// set over netlink, per interface, in the pod's namespace only: /proc/sys is
// read-only in the agent's container, and the node's settings are untouched.
func ApplyPod(p Plan) error {
	if err := setAcceptLocal(1); err != nil {
		return fmt.Errorf("redirect: apply pod: %w", err)
	}
	return Apply(p)
}

// CleanupPod removes Ferry's rules and routes from the calling thread's
// network namespace, a pod's, and turns accept_local off again.
func CleanupPod() error {
	err := Cleanup()
	if serr := setAcceptLocal(0); serr != nil {
		err = errors.Join(err, fmt.Errorf("redirect: cleanup pod: %w", serr))
	}
	return err
}

// ipv4DevconfAcceptLocal is IPV4_DEVCONF_ACCEPT_LOCAL (include/uapi/linux/ip.h).
const ipv4DevconfAcceptLocal = 23

// setAcceptLocal sets accept_local to v on every interface of the calling
// thread's namespace but lo (RTM_SETLINK with IFLA_AF_SPEC/AF_INET/
// IFLA_INET_CONF, as the kernel's inet_set_link_af reads it).
func setAcceptLocal(v uint32) error {
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(l.Attrs().Index)
		req.AddData(msg)
		spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
		conf := spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil)
		conf.AddRtAttr(ipv4DevconfAcceptLocal, nl.Uint32Attr(v))
		req.AddData(spec)
		if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
			errs = append(errs, fmt.Errorf("accept_local on %s: %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
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

// RemoveProbeSource deletes the probe source address AddProbeSource gave
// the calling thread's network namespace.
func RemoveProbeSource() error {
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("redirect: probe source: %w", err)
	}
	defer h.Close()
	if err := removeProbeSource(h); err != nil {
		return fmt.Errorf("redirect: probe source: %w", err)
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
