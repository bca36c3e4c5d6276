package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/bpf"
	"github.com/ferrymesh/ferry/internal/netns"
	"github.com/ferrymesh/ferry/node/cni"
	"github.com/ferrymesh/ferry/node/cri"
	"github.com/ferrymesh/ferry/node/redirect"
)

// podCapture is in-pod capture (--capture pod, DESIGN §3b): the agent enters
// each enrolled pod's network namespace, which the CNI plugin hands it before
// the pod's containers start, and puts the pod's capture there: the pod
// program (package bpf), policy routing (redirect.NewPodPlan) and the agent's
// outbound, inbound and HBONE listeners. The pod's traffic then leaves and
// arrives as ordinary pod traffic, whatever the CNI does on the node.
//
// Everything it creates in a pod is removed when the pod is unenrolled or
// deleted, and by `ferry cleanup`. When the agent stops, the programs, rules
// and the record of captured pods (stateFile) stay, so the pods fail closed;
// the next agent adopts them from that record.
type podCapture struct {
	load      bpf.Config
	cfg       redirect.Config
	addrs     [3]string // where the outbound, inbound and HBONE listeners bind in each pod
	stateFile string
	probeCG   string // the kubelet's cgroup, with load.ProbeSource
	// probeCGIno is the inode (the cgroup's id) of probeCG when the probe
	// program was last attached to it; only start and followProbeCgroup
	// use it.
	probeCGIno uint64
	sysNS      string // the system namespace, for Enrolled
	log        *slog.Logger
	// outbound, inbound and hbone carry every pod's listeners to the
	// tunnel.
	outbound, inbound, hbone *fanIn

	objs  *bpf.PodCapture // set by start
	socks *nsSockets      // set by start
	// cri finds the namespaces of enrolled pods the plugin did not report;
	// nil without --cri-socket (criSocket). tried is when each such pod
	// (namespace/name) was last looked for; only apply uses it.
	criSocket string
	cri       *cri.Client
	tried     map[string]time.Time

	// ops serializes add and remove (the CNI plugin's requests, the
	// reconcile loop); mu guards the fields below it.
	ops      sync.Mutex
	mu       sync.Mutex
	captured map[netip.Addr]*capturedPod // by the pod's IPv4 address
	stopping bool                        // closeListeners ran: add refuses

	// takenOver reports whether another agent took the CNI socket over
	// (cni.Listen, during a rolling update); nil: never. handed is set
	// once this agent has seen it.
	takenOver func() bool
	handed    atomic.Bool
}

// capturedPod is one pod whose capture is in place.
type capturedPod struct {
	cni.Pod
	ip      netip.Addr   // its IPv4 address
	refused []netip.Addr // its IPv6 addresses: TCP refused
	ns      *netns.NetNS
	added   time.Time
	lns     [3]net.Listener // outbound, inbound, HBONE
}

// podGrace is how long a captured pod the inventory does not list yet (an
// informer behind the CNI plugin) keeps its capture before it is taken for
// deleted.
const podGrace = time.Minute

func newPodCapture(cfg Config, log *slog.Logger) *podCapture {
	addr := func(s string) net.Addr {
		ap, _ := netip.ParseAddrPort(s) // validated
		return net.TCPAddrFromAddrPort(ap)
	}
	return &podCapture{
		load:      bpf.Config{PinDir: cfg.BPFPinDir, HBONEPort: cfg.hbonePort(), ProbeSource: cfg.probeSource()},
		addrs:     [3]string{cfg.OutboundAddr, cfg.InboundAddr, cfg.HBONEAddr},
		stateFile: filepath.Join(cfg.StateDir, "pods.json"),
		probeCG:   cfg.ProbeCgroup,
		sysNS:     cfg.SystemNamespace,
		log:       log,
		outbound:  newFanIn("outbound", addr(cfg.OutboundAddr), log),
		inbound:   newFanIn("inbound", addr(cfg.InboundAddr), log),
		hbone:     newFanIn("hbone", addr(cfg.HBONEAddr), log),
		captured:  map[netip.Addr]*capturedPod{},
		tried:     map[string]time.Time{},
		criSocket: cfg.CRISocket,
	}
}

// start loads the pod program's maps and adopts the pods an earlier agent
// captured: those whose namespace still exists are captured again (the
// pinned links are updated in place, new listeners replace the old ones),
// the others' leftovers are removed.
func (p *podCapture) start() error {
	objs, err := bpf.LoadPods(p.load)
	if err != nil {
		return fmt.Errorf("node: load BPF (needs root, CAP_BPF and a 5.17+ kernel): %w", err)
	}
	socks, err := startNSSockets()
	if err != nil {
		objs.Close()
		return err
	}
	if p.load.ProbeSource.IsValid() {
		err := redirect.AddProbeSource(p.load.ProbeSource)
		if err == nil {
			p.probeCGIno = inode(p.probeCG)
			err = objs.AttachProbes(p.probeCG)
			if errors.Is(err, bpf.ErrNotCgroup2) {
				err = fmt.Errorf("%w; set --probe-cgroup to the kubelet's cgroup: the cgroup v2 mount (/sys/fs/cgroup, or its unified/ directory on a cgroup v1 node) joined with the path on the 0:: line of /proc/<kubelet's pid>/cgroup", err)
			}
			if err != nil {
				err = errors.Join(err, redirect.RemoveProbeSource())
			}
		}
		if err != nil {
			socks.stop()
			objs.Close()
			return fmt.Errorf("node: kubelet probes (--probe-source, --probe-cgroup): %w", err)
		}
	}
	if p.criSocket != "" {
		c, err := cri.Dial(p.criSocket) // connects on first use
		if err != nil {
			socks.stop()
			objs.Close()
			return err
		}
		p.cri = c
	}
	p.objs, p.socks = objs, socks
	earlier, err := readPodState(p.stateFile)
	if err != nil {
		p.log.Warn("cannot read the pods an earlier agent captured; their capture is left in place", "file", p.stateFile, "err", err)
	}
	for _, pod := range earlier {
		if err := p.add(pod); err != nil {
			p.log.Warn("pod captured by an earlier agent not adopted", "pod", pod.String(), "err", err)
			p.removeLeftovers(pod)
		}
	}
	pinned, _ := objs.Pinned()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ip := range pinned {
		if p.captured[ip] == nil {
			if err := objs.Detach(ip); err != nil {
				p.log.Warn("stale pod capture", "pod", ip, "err", err)
			}
		}
	}
	return p.saveLocked()
}

// add captures pod; it is idempotent for the same sandbox. It returns once
// the capture is in place, or fails having undone what it did.
func (p *podCapture) add(pod cni.Pod) error {
	p.ops.Lock()
	defer p.ops.Unlock()
	return p.addLocked(pod)
}

func (p *podCapture) addLocked(pod cni.Pod) (err error) {
	var ip netip.Addr
	var refused []netip.Addr
	for _, a := range pod.IPs {
		switch a = a.Unmap(); {
		case a.Is4() && !ip.IsValid():
			ip = a
		case a.Is6():
			refused = append(refused, a)
		}
	}
	if !ip.IsValid() {
		return fmt.Errorf("pod %s has no IPv4 address (Ferry carries IPv4)", pod)
	}
	p.mu.Lock()
	old := p.captured[ip]
	p.mu.Unlock()
	if old != nil {
		if old.ContainerID == pod.ContainerID && old.Netns == pod.Netns {
			return nil
		}
		// The address now belongs to another sandbox.
		p.removeLocked(old)
	}
	ns, err := netns.Open(pod.Netns)
	if err != nil {
		return fmt.Errorf("pod %s: open its network namespace: %w", pod, err)
	}
	cp := &capturedPod{Pod: pod, ip: ip, refused: refused, ns: ns, added: time.Now()}
	defer func() {
		if err != nil {
			p.undo(cp)
		}
	}()
	plan, err := redirect.NewPodPlan(pod.IPs, p.load.ProbeSource, p.cfg)
	if err != nil {
		return fmt.Errorf("pod %s: %w", pod, err)
	}
	// Listeners first and the program next, so that nothing is captured
	// before there is somewhere to deliver it; routing last.
	err = ns.Do(func() error {
		for i, a := range p.addrs {
			ln, err := redirect.ListenPod(context.Background(), a)
			if err != nil {
				return err
			}
			cp.lns[i] = ln
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pod %s: listen in its namespace: %w", pod, err)
	}
	if err := p.objs.Attach(ip, ns.Path()); err != nil {
		return fmt.Errorf("pod %s: %w", pod, err)
	}
	l := cp.lns
	if err := p.objs.SetListeners(ip, l[0].(*net.TCPListener), l[1].(*net.TCPListener), l[2].(*net.TCPListener)); err != nil {
		return fmt.Errorf("pod %s: %w", pod, err)
	}
	if err := ns.Do(func() error { return redirect.ApplyPod(plan) }); err != nil {
		return fmt.Errorf("pod %s: routing in its namespace: %w", pod, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return fmt.Errorf("pod %s: the agent is stopping: retry", pod) // undone by the deferred undo
	}
	p.outbound.add(l[0])
	p.inbound.add(l[1])
	p.hbone.add(l[2])
	p.captured[ip] = cp
	if err := p.saveLocked(); err != nil {
		p.log.Warn("cannot record the captured pods; a restarted agent will not adopt this one", "file", p.stateFile, "err", err)
	}
	p.log.Info("pod captured", "pod", pod.String(), "ip", ip, "netns", pod.Netns)
	return nil
}

// remove undoes pod's capture and forgets it.
func (p *podCapture) remove(cp *capturedPod) {
	p.ops.Lock()
	defer p.ops.Unlock()
	p.removeLocked(cp)
}

func (p *podCapture) removeLocked(cp *capturedPod) {
	p.mu.Lock()
	if p.captured[cp.ip] != cp {
		p.mu.Unlock()
		return // removed meanwhile
	}
	delete(p.captured, cp.ip)
	if err := p.saveLocked(); err != nil {
		p.log.Warn("cannot record the captured pods", "file", p.stateFile, "err", err)
	}
	p.mu.Unlock()
	p.undo(cp)
	p.log.Info("pod released", "pod", cp.String(), "ip", cp.ip)
}

// undo removes what add created for cp, in the reverse order: routing, the
// program, the listeners.
func (p *podCapture) undo(cp *capturedPod) {
	if err := cp.ns.Do(redirect.CleanupPod); err != nil {
		p.log.Warn("pod routing not removed", "pod", cp.String(), "err", err)
	}
	if err := p.objs.Detach(cp.ip); err != nil {
		p.log.Warn("pod program not removed", "pod", cp.String(), "err", err)
	}
	for _, ln := range cp.lns {
		if ln != nil {
			ln.Close()
		}
	}
	cp.ns.Close()
}

// removeLeftovers removes what an earlier agent left for a pod it cannot
// adopt: the program's link, and the routing if the namespace still exists.
func (p *podCapture) removeLeftovers(pod cni.Pod) {
	for _, a := range pod.IPs {
		if a.Unmap().Is4() {
			p.objs.Detach(a.Unmap())
		}
	}
	if ns, err := netns.Open(pod.Netns); err == nil {
		ns.Do(redirect.CleanupPod)
		ns.Close()
	}
}

// delete handles the CNI plugin's DEL: the sandbox is going.
func (p *podCapture) delete(pod cni.Pod) {
	p.mu.Lock()
	var found *capturedPod
	for _, cp := range p.captured {
		if cp.ContainerID == pod.ContainerID {
			found = cp
		}
	}
	p.mu.Unlock()
	if found != nil {
		p.remove(found)
	}
}

// apply releases the captured pods the view no longer enrols: unenrolled,
// replaced by another pod of the same name, or gone from the inventory for
// longer than podGrace. Capturing is the CNI plugin's to start (add).
func (p *podCapture) apply(v *view) error {
	if p.handedOver() {
		return nil
	}
	p.mu.Lock()
	var stale []*capturedPod
	for _, cp := range p.captured {
		if !p.stillEnrolled(v, cp) {
			stale = append(stale, cp)
		}
	}
	p.mu.Unlock()
	for _, cp := range stale {
		p.remove(cp)
	}
	p.adopt(v)
	return nil
}

// handedOver reports whether another agent has taken the pods over: a
// rolling update starts the new agent beside this one, and it takes the CNI
// socket as it starts. From then on the new agent captures, releases and
// records pods; this one only serves the connections it has until it stops
// (two agents releasing and recording the same pods would undo each other).
func (p *podCapture) handedOver() bool {
	if p.handed.Load() {
		return true
	}
	if p.takenOver == nil || !p.takenOver() {
		return false
	}
	if !p.handed.Swap(true) {
		p.log.Info("another agent took over the CNI socket: it now captures and records the pods; this one serves its open connections until it stops")
	}
	return true
}

// followProbeCgroup moves the probe program to the kubelet's cgroup again
// when its directory is a new one: systemd removes a service's cgroup when
// it stops and makes a new one when it starts, so a restarted kubelet is in
// a cgroup the program is not attached to, and its probes would be captured
// (and refused by STRICT pods). While the directory is missing (the kubelet
// stopped) there is nothing to attach to. It reports whether it moved the
// program.
func (p *podCapture) followProbeCgroup() (bool, error) {
	ino := inode(p.probeCG)
	if ino == 0 || ino == p.probeCGIno || p.handedOver() {
		return false, nil
	}
	if err := p.objs.AttachProbes(p.probeCG); err != nil {
		return false, err
	}
	p.probeCGIno = ino
	return true, nil
}

// inode is path's inode number, 0 when it cannot be read.
func inode(path string) uint64 {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0
	}
	return st.Ino
}

// criRetry is how long apply waits before asking the runtime again about an
// enrolled pod it could not capture.
const criRetry = 10 * time.Second

// adopt captures the view's enrolled local pods that are not captured yet,
// with their namespaces from the container runtime: pods that ran before
// the CNI plugin was installed, or became enrolled after they started.
func (p *podCapture) adopt(v *view) {
	missing := map[string]bool{}
	for _, w := range v.local {
		if p.Captured(w.IP) {
			continue
		}
		key := w.Namespace + "/" + w.Name
		missing[key] = true
		if p.cri == nil {
			if p.tried[key].IsZero() {
				p.log.Warn("enrolled pod not captured: the CNI plugin has not reported it and no --cri-socket is set; restart the pod", "pod", key)
				p.tried[key] = time.Now()
			}
			continue
		}
		if time.Since(p.tried[key]) < criRetry {
			continue
		}
		p.tried[key] = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pod, ok, err := p.cri.Find(ctx, w.Namespace, w.Name, w.UID)
		cancel()
		if err == nil && !ok {
			err = errors.New("the runtime has no ready sandbox with a network namespace for it")
		}
		if err == nil {
			err = p.add(pod)
		}
		if err != nil {
			p.log.Warn("enrolled pod not captured; retrying", "pod", key, "err", err)
			continue
		}
		delete(p.tried, key)
	}
	for key := range p.tried {
		if !missing[key] {
			delete(p.tried, key) // captured, or gone
		}
	}
}

func (p *podCapture) stillEnrolled(v *view, cp *capturedPod) bool {
	pod, ok := v.localPod(cp.Namespace, cp.Name)
	if !ok {
		return time.Since(cp.added) < podGrace
	}
	if pod.UID != "" && cp.UID != "" && pod.UID != cp.UID {
		return false
	}
	return Enrolled(pod, v.snap.Namespaces[pod.Namespace], p.sysNS)
}

// Captured reports whether ip is a captured pod's.
func (p *podCapture) Captured(ip netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.captured[ip.Unmap()] != nil
}

// addresses returns the addresses the CNI plugin reported for the captured
// pods, by "namespace/name", for the view to fill in where the API lists
// none yet (capturedAddrs).
func (p *podCapture) addresses() map[string]capturedAddrs {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]capturedAddrs, len(p.captured))
	for _, cp := range p.captured {
		out[cp.Namespace+"/"+cp.Name] = capturedAddrs{UID: cp.UID, IP: cp.ip, IPs: cp.IPs}
	}
	return out
}

// Refused reports whether ip is a captured pod's IPv6 address.
func (p *podCapture) Refused(ip netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, cp := range p.captured {
		if slices.Contains(cp.refused, ip) {
			return true
		}
	}
	return false
}

// pods lists the captured pods' addresses.
func (p *podCapture) pods() []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	ips := make([]netip.Addr, 0, len(p.captured))
	for ip := range p.captured {
		ips = append(ips, ip)
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return ips
}

func (p *podCapture) counters() (map[bpf.Verdict]uint64, error) {
	if p.objs == nil {
		return nil, errNotAttached
	}
	return p.objs.Counters()
}

// pod returns the captured pod with address ip.
func (p *podCapture) pod(ip netip.Addr) (*capturedPod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cp := p.captured[ip.Unmap()]
	if cp == nil {
		return nil, fmt.Errorf("node: %s is not a captured pod", ip)
	}
	return cp, nil
}

// dialOut dials dst for the pod at src, from inside its namespace: the
// connection leaves as the pod's own.
func (p *podCapture) dialOut(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	cp, err := p.pod(src)
	if err != nil {
		return nil, err
	}
	fd, err := p.socks.socket(cp.ns)
	if err != nil {
		return nil, err
	}
	return redirect.DialSocket(ctx, fd, src, dst, nil)
}

// dialIn delivers a connection from src to the pod at dst, from inside the
// pod's namespace, listed so the pod's program lets it through.
func (p *podCapture) dialIn(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	cp, err := p.pod(dst.Addr())
	if err != nil {
		return nil, err
	}
	fd, err := p.socks.socket(cp.ns)
	if err != nil {
		return nil, err
	}
	return redirect.DialSocket(ctx, fd, src.Addr(), dst, func(bound netip.AddrPort) (func(), error) {
		return p.objs.Delivering(bound, dst)
	})
}

// closeListeners closes every pod's listeners (the agent is stopping: new
// connections are refused until an agent registers new ones) and waits for
// the fan-ins' goroutines.
func (p *podCapture) closeListeners() {
	p.mu.Lock()
	p.stopping = true
	for _, cp := range p.captured {
		for _, ln := range cp.lns {
			ln.Close()
		}
	}
	p.mu.Unlock()
	for _, f := range []*fanIn{p.outbound, p.inbound, p.hbone} {
		f.Close()
		f.wait()
	}
}

// Close releases the agent's handles; capture stays in the pods.
func (p *podCapture) Close() error {
	p.closeListeners()
	if p.socks != nil {
		p.socks.stop()
	}
	if p.cri != nil {
		p.cri.Close()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, cp := range p.captured {
		cp.ns.Close()
	}
	if p.objs == nil {
		return nil
	}
	return p.objs.Close()
}

// removeAll removes every captured pod's capture (uninstall).
func (p *podCapture) removeAll() {
	p.mu.Lock()
	all := make([]*capturedPod, 0, len(p.captured))
	for _, cp := range p.captured {
		all = append(all, cp)
	}
	p.mu.Unlock()
	for _, cp := range all {
		p.remove(cp)
	}
}

// saveLocked records the captured pods for the next agent.
func (p *podCapture) saveLocked() error {
	if p.handedOver() {
		return nil // the record is the new agent's
	}
	pods := make([]cni.Pod, 0, len(p.captured))
	for _, cp := range p.captured {
		pods = append(pods, cp.Pod)
	}
	slices.SortFunc(pods, func(a, b cni.Pod) int { return strings.Compare(a.ContainerID, b.ContainerID) })
	b, err := json.MarshalIndent(pods, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p.stateFile), 0o700); err != nil {
		return err
	}
	tmp := p.stateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p.stateFile)
}

// readPodState reads the pods an earlier agent recorded; no file is none.
func readPodState(path string) ([]cni.Pod, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var pods []cni.Pod
	if err := json.Unmarshal(b, &pods); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pods, nil
}

// cleanupPods removes the capture an agent left in the pods recorded in
// stateDir (`ferry cleanup`): routing in each namespace that still exists,
// then the record. The programs' links go with bpf.Remove. "" means no
// record (--capture node).
func cleanupPods(stateDir string) error {
	if stateDir == "" {
		return nil
	}
	file := filepath.Join(stateDir, "pods.json")
	pods, err := readPodState(file)
	if err != nil {
		return err
	}
	var errs []error
	for _, pod := range pods {
		ns, err := netns.Open(pod.Netns)
		if err != nil {
			continue // the pod is gone, and its routing with it
		}
		errs = append(errs, ns.Do(redirect.CleanupPod))
		ns.Close()
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
