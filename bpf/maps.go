//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// SetListeners puts the three listening sockets in the SOCKMAP, replacing
// what was there, so new captured connections go to them. Each must be a
// listening TCP socket that is not MPTCP (Go listeners are MPTCP by default
// since Go 1.24: use net.ListenConfig.SetMultipathTCP(false)); a
// *net.TCPListener satisfies syscall.Conn. The map holds its own reference: a
// closed listener drops out of the map by itself.
func (o *Objects) SetListeners(outbound, inbound, hbone syscall.Conn) error {
	for _, s := range []struct {
		l Listener
		c syscall.Conn
	}{{ListenerOutbound, outbound}, {ListenerInbound, inbound}, {ListenerHBONE, hbone}} {
		if err := o.SetListener(s.l, s.c); err != nil {
			return err
		}
	}
	return nil
}

// SetListener puts one listening socket in slot l of the SOCKMAP.
func (o *Objects) SetListener(l Listener, c syscall.Conn) error {
	if l > ListenerHBONE {
		return fmt.Errorf("bpf: set listener: invalid slot %d", l)
	}
	return updateSocket(o.objs.FerryListeners, uint32(l), l, c)
}

// updateSocket puts the listening socket c at key in a SOCKMAP or SOCKHASH.
func updateSocket(m *ebpf.Map, key any, l Listener, c syscall.Conn) error {
	if c == nil {
		return fmt.Errorf("bpf: set %s listener: nil socket", l)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("bpf: set %s listener: %w", l, err)
	}
	var uerr error
	err = rc.Control(func(fd uintptr) {
		uerr = m.Update(key, uint64(fd), ebpf.UpdateAny)
	})
	if err == nil {
		err = uerr
	}
	if errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("bpf: set %s listener: socket not supported by SOCKMAP (MPTCP, or not TCP?): %w", l, err)
	}
	if err != nil {
		return fmt.Errorf("bpf: set %s listener: %w", l, err)
	}
	return nil
}

// SetPods converges the enrolled-pods map to exactly ips: it adds the missing
// addresses and deletes the others. Only IPv4 addresses (or IPv4-mapped IPv6)
// are supported; anything else is an error and changes nothing.
func (o *Objects) SetPods(ips []netip.Addr) error {
	want := make(map[[4]byte]bool, len(ips))
	for _, ip := range ips {
		ip = ip.Unmap()
		if !ip.Is4() {
			return fmt.Errorf("bpf: set pods: %v is not an IPv4 address", ip)
		}
		want[ip.As4()] = true
	}
	have, err := o.pods()
	if err != nil {
		return err
	}
	for k := range have {
		if want[k] {
			continue
		}
		if err := o.objs.FerryPods.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("bpf: set pods: delete %v: %w", netip.AddrFrom4(k), err)
		}
	}
	for k := range want {
		if have[k] {
			continue
		}
		if err := o.objs.FerryPods.Update(k, uint32(0), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("bpf: set pods: add %v: %w", netip.AddrFrom4(k), err)
		}
	}
	return nil
}

// Pods returns the enrolled-pods map's addresses, in no particular order.
func (o *Objects) Pods() ([]netip.Addr, error) {
	have, err := o.pods()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(have))
	for k := range have {
		out = append(out, netip.AddrFrom4(k))
	}
	return out, nil
}

func (o *Objects) pods() (map[[4]byte]bool, error) {
	have := map[[4]byte]bool{}
	var (
		k [4]byte
		v uint32
	)
	it := o.objs.FerryPods.Iterate()
	for it.Next(&k, &v) {
		have[k] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bpf: read pods: %w", err)
	}
	return have, nil
}

// Counters returns the program's per-verdict counts, summed over CPUs, since
// the counters map was created (the map is pinned: counts survive agent
// restarts).
func (o *Objects) Counters() (map[Verdict]uint64, error) {
	return readCounters(o.objs.FerryCounters)
}

// readCounters sums a per-CPU array of per-verdict counts.
func readCounters(m *ebpf.Map) (map[Verdict]uint64, error) {
	out := make(map[Verdict]uint64, numVerdicts)
	var perCPU []uint64
	for _, v := range Verdicts() {
		if err := m.Lookup(uint32(v), &perCPU); err != nil {
			return nil, fmt.Errorf("bpf: read counter %s: %w", v, err)
		}
		var sum uint64
		for _, n := range perCPU {
			sum += n
		}
		out[v] = sum
	}
	return out, nil
}
