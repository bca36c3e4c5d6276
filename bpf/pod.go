//go:build linux

package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// PodCapture is in-pod capture (--capture pod): one instance of the pod
// program per enrolled pod, attached to that pod's network namespace, and
// the maps they share: the listener SOCKHASH, keyed by pod address and
// Listener, and the per-verdict counters. Its methods are safe for
// concurrent use.
//
// Like Objects, it pins everything under the pin directory (the pods'
// links as ferry_pod_<IPv4>_link), so capture outlives the agent: a pod
// whose listeners are gone has its TCP refused until an agent registers new
// ones. Close drops the process's handles only; Detach undoes one pod and
// Remove everything.
type PodCapture struct {
	spec   *ebpf.CollectionSpec
	maps   podMaps
	pinDir string

	mu    sync.Mutex
	links map[netip.Addr]link.Link // attached by this process
}

// LoadPods loads the shared maps (reusing compatible pins, so the counters
// and the listeners of pods not yet adopted survive a restart) and prepares
// the program; Attach loads one instance per pod.
func LoadPods(cfg Config) (*PodCapture, error) {
	if cfg.PinDir == "" {
		cfg.PinDir = DefaultPinDir
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = DefaultHBONEPort
	}
	if cfg.ProbeSource.IsValid() && !cfg.ProbeSource.Is4() {
		return nil, fmt.Errorf("bpf: probe source %s is not IPv4", cfg.ProbeSource)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("bpf: remove memlock rlimit: %w", err)
	}
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	spec, err := loadPod()
	if err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	if err := spec.Variables[podVarFerryPodHbonePort].Set(uint32(cfg.HBONEPort)); err != nil {
		return nil, fmt.Errorf("bpf: set hbone port: %w", err)
	}
	var probe [4]byte
	if cfg.ProbeSource.IsValid() {
		probe = cfg.ProbeSource.As4()
	}
	if err := spec.Variables[podVarFerryProbeSrc].Set(probe); err != nil {
		return nil, fmt.Errorf("bpf: set probe source: %w", err)
	}
	p := &PodCapture{spec: spec, pinDir: cfg.PinDir, links: map[netip.Addr]link.Link{}}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}}
	err = spec.LoadAndAssign(&p.maps, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		for _, name := range []string{podMapFerryPodSocks, podMapFerryPodCounts, podMapFerryPodOwn, podMapFerryPodIps} {
			if rmErr := os.Remove(filepath.Join(cfg.PinDir, name)); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
				return nil, fmt.Errorf("bpf: replace incompatible pins: %w", rmErr)
			}
		}
		err = spec.LoadAndAssign(&p.maps, opts)
	}
	if err != nil {
		return nil, &loadError{op: "load pod maps", err: err}
	}
	return p, nil
}

// podLinkPrefix starts the pin name of a pod's link; the IPv4 address, with
// dashes for dots (bpffs refuses names with dots), and "_link" follow.
const podLinkPrefix = "ferry_pod_"

func podLinkPin(dir string, pod netip.Addr) string {
	return filepath.Join(dir, podLinkPrefix+strings.ReplaceAll(pod.String(), ".", "-")+"_link")
}

// Attach loads the program for pod, whose IPv4 address it is, and attaches
// it to the network namespace at nsPath, pinned. A link pinned for the same
// pod and namespace (an earlier agent's) is updated in place, atomically; one
// left by an earlier pod with the same address, in another namespace, is
// replaced. Register the pod's listeners with SetListeners: until then its
// TCP is refused.
func (p *PodCapture) Attach(pod netip.Addr, nsPath string) error {
	pod = pod.Unmap()
	if !pod.Is4() {
		return fmt.Errorf("bpf: attach pod %s: not an IPv4 address", pod)
	}
	spec := p.spec.Copy()
	if err := spec.Variables[podVarFerryPodIp].Set(pod.As4()); err != nil {
		return fmt.Errorf("bpf: attach pod %s: %w", pod, err)
	}
	var prog struct {
		Lookup *ebpf.Program `ebpf:"ferry_pod_lookup"`
	}
	err := spec.LoadAndAssign(&prog, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		podMapFerryPodSocks:  p.maps.FerryPodSocks,
		podMapFerryPodCounts: p.maps.FerryPodCounts,
		podMapFerryPodOwn:    p.maps.FerryPodOwn,
	}})
	if err != nil {
		return &loadError{op: "load pod program for " + pod.String(), err: err}
	}
	defer prog.Lookup.Close() // the link holds the program
	p.mu.Lock()
	defer p.mu.Unlock()
	l, err := attachPinned(nsPath, podLinkPin(p.pinDir, pod), prog.Lookup)
	if err != nil {
		return fmt.Errorf("bpf: pod %s: %w", pod, err)
	}
	if err := p.maps.FerryPodIps.Update(pod.As4(), uint8(1), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bpf: pod %s: %w", pod, err)
	}
	if old := p.links[pod]; old != nil && old != l {
		old.Close()
	}
	p.links[pod] = l
	return nil
}

// SetListeners registers pod's three listening sockets (opened in its
// network namespace; plain TCP, not MPTCP), replacing earlier ones. The map
// holds its own reference: a closed listener drops out by itself.
func (p *PodCapture) SetListeners(pod netip.Addr, outbound, inbound, hbone syscall.Conn) error {
	for _, s := range []struct {
		l Listener
		c syscall.Conn
	}{{ListenerOutbound, outbound}, {ListenerInbound, inbound}, {ListenerHBONE, hbone}} {
		if err := updateSocket(p.maps.FerryPodSocks, podKey(pod, s.l), s.l, s.c); err != nil {
			return fmt.Errorf("bpf: pod %s: %w", pod, err)
		}
	}
	return nil
}

func podKey(pod netip.Addr, l Listener) podFerryPodKey {
	a := pod.Unmap().As4()
	// The C key holds the address in network byte order.
	return podFerryPodKey{Pod: binary.NativeEndian.Uint32(a[:]), Listener: uint32(l)}
}

// Delivering lets one connection through a pod's capture: the agent's own,
// about to be made from src (the client's address, IP_TRANSPARENT) to dst,
// the pod's address, from inside the pod's namespace. Bind the socket to
// src first (the port must be known) and call done once connect has
// returned: later packets find the established socket, not the program.
func (p *PodCapture) Delivering(src, dst netip.AddrPort) (done func(), err error) {
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	if !s.Is4() || !d.Is4() || src.Port() == 0 {
		return nil, fmt.Errorf("bpf: delivering %s to %s: want IPv4 addresses and a bound port", src, dst)
	}
	sa, da := s.As4(), d.As4()
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], src.Port())
	key := podFerryPodConn{
		RemoteIp:   binary.NativeEndian.Uint32(sa[:]),
		LocalIp:    binary.NativeEndian.Uint32(da[:]),
		RemotePort: binary.NativeEndian.Uint16(port[:]), // network byte order in the context
		LocalPort:  dst.Port(),
	}
	if err := p.maps.FerryPodOwn.Update(key, uint8(1), ebpf.UpdateAny); err != nil {
		return nil, fmt.Errorf("bpf: delivering %s to %s: %w", src, dst, err)
	}
	return func() { _ = p.maps.FerryPodOwn.Delete(key) }, nil
}

// Detach removes pod's capture: its link (detached even if another process
// holds it) and its listener entries. Nothing to remove is not an error.
func (p *PodCapture) Detach(pod netip.Addr) error {
	pod = pod.Unmap()
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.links[pod]; l != nil {
		l.Close()
		delete(p.links, pod)
	}
	errs := []error{detachPinned(podLinkPin(p.pinDir, pod))}
	if err := p.maps.FerryPodIps.Delete(pod.As4()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	for _, l := range []Listener{ListenerOutbound, ListenerInbound, ListenerHBONE} {
		if err := p.maps.FerryPodSocks.Delete(podKey(pod, l)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bpf: detach pod %s: %w", pod, err)
	}
	return nil
}

// probeLinkPin names the pinned link of the probe program.
const probeLinkPin = "ferry_probe_link"

// AttachProbes attaches the probe program to the cgroup (v2) at path, the
// kubelet's, pinned: the kubelet's TCP connections to captured pods then
// leave from Config.ProbeSource, which must be an address of the node. A
// link an earlier agent pinned on the same cgroup is updated in place; one
// on another cgroup (the path changed) is replaced. A path that is not a
// cgroup v2 directory is an ErrNotCgroup2 error.
func (p *PodCapture) AttachProbes(path string) error {
	var fs unix.Statfs_t
	var st unix.Stat_t
	if err := unix.Statfs(path, &fs); err != nil {
		return fmt.Errorf("bpf: cgroup %s: %w: %w", path, ErrNotCgroup2, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("bpf: %s: %w", path, ErrNotCgroup2)
	}
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("bpf: cgroup %s: %w", path, err)
	}
	var prog struct {
		Connect *ebpf.Program `ebpf:"ferry_probe_connect"`
	}
	err := p.spec.Copy().LoadAndAssign(&prog, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		podMapFerryPodIps: p.maps.FerryPodIps,
	}})
	if err != nil {
		return &loadError{op: "load probe program", err: err}
	}
	defer prog.Connect.Close()
	pin := filepath.Join(p.pinDir, probeLinkPin)
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		// A cgroup's id is its directory's inode number.
		err = errors.New("attached to another cgroup")
		if info, ierr := old.Info(); ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == st.Ino {
			err = old.Update(prog.Connect)
		}
		old.Close()
		if err == nil {
			return nil
		}
		if err := detachPinned(pin); err != nil {
			return fmt.Errorf("bpf: probes: %w", err)
		}
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: ebpf.AttachCGroupInet4Connect, Program: prog.Connect})
	if err != nil {
		return fmt.Errorf("bpf: attach the probe program to cgroup %s: %w", path, err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("bpf: probes: pin link: %w", err)
	}
	return nil
}

// Pinned lists the pods whose link is pinned under the pin directory: those
// this or an earlier agent attached and nobody detached.
func (p *PodCapture) Pinned() ([]netip.Addr, error) {
	pins, err := filepath.Glob(filepath.Join(p.pinDir, podLinkPrefix+"*_link"))
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, pin := range pins {
		s := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(pin), podLinkPrefix), "_link")
		if ip, err := netip.ParseAddr(strings.ReplaceAll(s, "-", ".")); err == nil {
			out = append(out, ip)
		}
	}
	return out, nil
}

// Counters returns the pod programs' per-verdict counts, summed over CPUs
// and pods.
func (p *PodCapture) Counters() (map[Verdict]uint64, error) {
	return readCounters(p.maps.FerryPodCounts)
}

// Close releases the process's handles; pins stay.
func (p *PodCapture) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pod, l := range p.links {
		l.Close()
		delete(p.links, pod)
	}
	return p.maps.Close()
}
