package node

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"unique"

	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/inventory"
)

// TestViewUpdateEqualsRebuild: after any sequence of snapshots listing their
// changes (pods added, changed, removed, renumbered into and out of IP
// conflicts, moved between nodes, captured addresses filled in and taken
// back) the view updated from the last one equals the view built whole
// from the same snapshot, and the views made before are unchanged.
func TestViewUpdateEqualsRebuild(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) { checkViewUpdates(t, seed, 150) })
	}
}

// FuzzViewUpdate explores more sequences than the test's seeds.
func FuzzViewUpdate(f *testing.F) {
	f.Add(uint64(0)) // the seeds of TestViewUpdateEqualsRebuild are enough to start
	f.Add(uint64(1 << 40))
	f.Fuzz(func(t *testing.T, seed uint64) { checkViewUpdates(t, seed, 60) })
}

// viewGen makes random clusters small enough for pods to meet: few names,
// addresses, labels and nodes.
type viewGen struct {
	rnd  *rand.Rand
	pods map[string]inventory.Pod
	// fills are the captured addresses of this node's pods.
	fills      map[string]capturedAddrs
	namespaces map[string]inventory.Namespace
	services   []inventory.Service
}

var genCfg = viewConfig{"n1", unique.Make("cluster.local"), "istio-system"}

func (g *viewGen) ip() netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(g.rnd.IntN(12))}) }

func (g *viewGen) pick(s ...string) string { return s[g.rnd.IntN(len(s))] }

func (g *viewGen) pod() inventory.Pod {
	p := inventory.Pod{
		Namespace: g.pick("a", "b", "istio-system"), Name: "p" + strconv.Itoa(g.rnd.IntN(10)),
		UID: "u" + strconv.Itoa(g.rnd.IntN(3)), ServiceAccount: g.pick("x", "y"), NodeName: g.pick("n1", "n1", "n2", "n3"),
		Labels: map[string]string{"app": g.pick("web", "db")},
	}
	switch g.rnd.IntN(8) {
	case 0: // no address yet
	case 1:
		p.IP, p.HostNetwork = g.ip(), true
	default:
		p.IP = g.ip()
		p.IPs = []netip.Addr{p.IP}
	}
	if g.rnd.IntN(3) == 0 {
		p.Labels[DataplaneModeLabel] = g.pick("ambient", "none")
	}
	if g.rnd.IntN(3) == 0 {
		p.Mesh = &inventory.MeshWorkload{HBONE: g.rnd.IntN(2) == 0, Healthy: true, Capacity: 1,
			Services: inventory.MakeNames(p.Namespace + "/" + g.pick("web", "db", "none") + ".svc")}
	}
	return p
}

func (g *viewGen) cluster() {
	g.namespaces = map[string]inventory.Namespace{}
	for _, ns := range []string{"a", "b", "istio-system"} {
		n := inventory.Namespace{Name: ns}
		if g.rnd.IntN(2) == 0 {
			n.Labels = map[string]string{DataplaneModeLabel: "ambient"}
		}
		g.namespaces[ns] = n
	}
	g.services = nil
	for i, ns := range []string{"a", "b", "a"} {
		app := g.pick("web", "db")
		s := inventory.Service{Name: "s" + strconv.Itoa(i), Namespace: ns, Selector: map[string]string{"app": app},
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 19, 0, byte(i)})}, Ports: []inventory.ServicePort{{Port: 80}}}
		if g.rnd.IntN(2) == 0 {
			s.Hostname = app + ".svc"
		}
		g.services = append(g.services, s)
	}
}

// snapshot returns the cluster as a snapshot, its pods in random order.
func (g *viewGen) snapshot() *inventory.Snapshot {
	s := &inventory.Snapshot{Namespaces: g.namespaces, Services: g.services, Revision: inventory.NewRevision()}
	for _, p := range g.pods {
		s.Pods = append(s.Pods, &p)
	}
	g.rnd.Shuffle(len(s.Pods), func(i, j int) { s.Pods[i], s.Pods[j] = s.Pods[j], s.Pods[i] })
	return s
}

// change changes a few pods and returns the next snapshot with its changes
// since prev.
func (g *viewGen) change(prev *inventory.Snapshot) *inventory.Snapshot {
	changed := map[string]bool{}
	for range g.rnd.IntN(4) + 1 {
		p := g.pod()
		key := p.Key()
		switch old, ok := g.pods[key]; {
		case ok && g.rnd.IntN(3) == 0:
			delete(g.pods, key)
		case ok && g.rnd.IntN(3) == 0: // a new address, the rest as it was
			old.IP = g.ip()
			old.IPs = []netip.Addr{old.IP}
			g.pods[key] = old
		default:
			g.pods[key] = p
		}
		changed[key] = true
	}
	if g.rnd.IntN(4) == 0 { // listed unchanged
		for key := range g.pods {
			changed[key] = true
			break
		}
	}
	s := g.snapshot()
	s.Changes = &inventory.Changes{Since: prev.Revision, Pods: map[string]*inventory.Pod{}}
	for key := range changed {
		s.Changes.Pods[key] = nil
	}
	for i := range s.Pods {
		if changed[s.Pods[i].Key()] {
			s.Changes.Pods[s.Pods[i].Key()] = s.Pods[i]
		}
	}
	return s
}

// refill changes the captured addresses of a pod of this node or two.
func (g *viewGen) refill() {
	g.fills = maps.Clone(g.fills)
	for range g.rnd.IntN(3) {
		key := g.pick("a", "b") + "/p" + strconv.Itoa(g.rnd.IntN(10))
		if g.rnd.IntN(3) == 0 {
			delete(g.fills, key)
			continue
		}
		ip := g.ip()
		g.fills[key] = capturedAddrs{UID: "u" + strconv.Itoa(g.rnd.IntN(3)), IP: ip, IPs: []netip.Addr{ip}}
	}
}

func checkViewUpdates(t *testing.T, seed uint64, steps int) {
	g := &viewGen{rnd: rand.New(rand.NewPCG(seed, 23)), pods: map[string]inventory.Pod{}, fills: map[string]capturedAddrs{}}
	g.cluster()
	for range 10 {
		p := g.pod()
		g.pods[p.Key()] = p
	}
	snap := g.snapshot()
	v := buildView(snap, genCfg, g.fills)
	type made struct {
		v     *view
		dump  viewDump
		label string
	}
	var views []made
	for step := range steps {
		label := "change"
		switch r := g.rnd.IntN(20); {
		case r == 0: // no changes listed: built whole
			g.cluster()
			snap = g.snapshot()
			label = "whole"
		case r == 1: // changes since another snapshot: built whole
			snap = g.change(&inventory.Snapshot{Revision: inventory.NewRevision()})
			label = "changes since another"
		case r < 4: // the same snapshot again, with other captured addresses
			g.refill()
			label = "refill"
		default:
			if g.rnd.IntN(4) == 0 {
				g.refill()
			}
			snap = g.change(snap)
		}
		v = v.update(snap, g.fills)
		want := dumpView(buildView(snap, genCfg, g.fills))
		if got := dumpView(v); !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d (%s): updated view differs from the one built whole:\n%s", step, label, diffDumps(got, want))
		}
		views = append(views, made{v, want, label})
	}
	for i, m := range views {
		if got := dumpView(m.v); !reflect.DeepEqual(got, m.dump) {
			t.Fatalf("step %d (%s): the view changed after it was made:\n%s", i, m.label, diffDumps(got, m.dump))
		}
	}
}

// viewDump is what a view says, by value: what two views that say the same
// have equal.
type viewDump struct {
	Pods        map[string]workloadDump
	ByIP        map[netip.Addr]string
	Claims      map[netip.Addr][]string
	Conflicts   []string
	Local       []string
	LocalByName map[string]workloadDump
	Identities  []string
	Endpoints   map[string][]string
	ServiceAt   map[netip.AddrPort]string
	LocalIPs    []netip.Addr
}

type workloadDump struct {
	Pod             inventory.Pod
	Identity        string
	Enrolled, Local bool
	Source          inventory.Pod
	Services        []string
}

func dumpView(v *view) viewDump {
	wd := func(w *Workload) workloadDump {
		d := workloadDump{Pod: *w.Pod, Identity: w.Identity().String(), Enrolled: w.Enrolled, Local: w.Local, Source: *w.source()}
		for _, s := range v.servicesSelecting(w) {
			d.Services = append(d.Services, s.Namespace+"/"+s.Name)
		}
		return d
	}
	d := viewDump{Pods: map[string]workloadDump{}, ByIP: map[netip.Addr]string{}, Claims: map[netip.Addr][]string{},
		LocalByName: map[string]workloadDump{}, Endpoints: map[string][]string{}, ServiceAt: map[netip.AddrPort]string{}, LocalIPs: v.localIPs()}
	for k, w := range v.pods.All() {
		d.Pods[k] = wd(w)
	}
	if v.pods.Len() != len(d.Pods) {
		panic("pods: Len and All disagree")
	}
	for ip, w := range v.byIP.All() {
		d.ByIP[ip] = w.Key()
		if p, ok := v.pods.Get(w.Key()); !ok || p != w {
			d.ByIP[ip] += " (not the pod of its name)"
		}
	}
	for ip, ws := range v.claims {
		for _, w := range ws {
			d.Claims[ip] = append(d.Claims[ip], w.Key())
		}
		slices.Sort(d.Claims[ip])
	}
	for _, e := range v.conflicts {
		d.Conflicts = append(d.Conflicts, e.Error())
	}
	for _, w := range v.local {
		d.Local = append(d.Local, w.Key())
	}
	for k, w := range v.localByName {
		d.LocalByName[k] = wd(w)
	}
	for _, id := range v.identities {
		d.Identities = append(d.Identities, id.String())
	}
	for i := range v.snap.Services {
		s := &v.snap.Services[i]
		for _, w := range v.endpointsOf(s) {
			d.Endpoints[s.Name] = append(d.Endpoints[s.Name], w.Key()+"@"+w.IP.String())
		}
	}
	if v.endpoints.Len() != len(d.Endpoints) {
		panic(fmt.Sprintf("endpoints of %d Services, %d with any", v.endpoints.Len(), len(d.Endpoints)))
	}
	for ap, s := range v.services {
		d.ServiceAt[ap] = s.Name
	}
	return d
}

func diffDumps(got, want viewDump) string {
	var out string
	gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range gv.NumField() {
		if g, w := gv.Field(i).Interface(), wv.Field(i).Interface(); !reflect.DeepEqual(g, w) {
			out += fmt.Sprintf("%s:\n  got  %+v\n  want %+v\n", gv.Type().Field(i).Name, g, w)
		}
	}
	return cmp.Or(out, "(no field differs)")
}

// TestViewUpdateRemovedPodIsGone: a pod removed by a snapshot's changes is
// neither reachable nor identified in the updated view, and the pod whose
// address it shared takes it back.
func TestViewUpdateRemovedPodIsGone(t *testing.T) {
	ip := netip.MustParseAddr("198.18.0.1")
	ns := map[string]inventory.Namespace{"a": {Name: "a", Labels: map[string]string{DataplaneModeLabel: "ambient"}}}
	s1 := &inventory.Snapshot{Namespaces: ns, Revision: inventory.NewRevision(), Pods: []*inventory.Pod{
		{Namespace: "a", Name: "web", NodeName: "n1", IP: ip, ServiceAccount: "web"},
	}}
	v1 := buildView(s1, genCfg, nil)
	if _, ok := v1.localEnrolled(ip); !ok || len(v1.identities) != 1 {
		t.Fatalf("web not enrolled before its removal")
	}
	s2 := &inventory.Snapshot{Namespaces: ns, Revision: inventory.NewRevision(),
		Changes: &inventory.Changes{Since: s1.Revision, Pods: map[string]*inventory.Pod{"a/web": nil}}}
	v2 := v1.update(s2, nil)
	if w, ok := v2.workload(ip); ok {
		t.Errorf("removed pod still at %s: %s", ip, w.Key())
	}
	if len(v2.local) != 0 || len(v2.identities) != 0 || v2.pods.Len() != 0 {
		t.Errorf("removed pod still local (%d) or identified (%v)", len(v2.local), v2.identities)
	}
	if _, ok := v1.localEnrolled(ip); !ok {
		t.Errorf("the earlier view lost the pod")
	}

	// Two pods on one address: neither is known until one goes.
	other := &inventory.Pod{Namespace: "a", Name: "other", NodeName: "n2", IP: ip, ServiceAccount: "other"}
	s3 := &inventory.Snapshot{Namespaces: ns, Revision: inventory.NewRevision(), Pods: []*inventory.Pod{s1.Pods[0], other},
		Changes: &inventory.Changes{Since: s2.Revision, Pods: map[string]*inventory.Pod{"a/web": s1.Pods[0], "a/other": other}}}
	v3 := v2.update(s3, nil)
	if w, ok := v3.workload(ip); ok || len(v3.conflicts) != 1 || len(v3.identities) != 0 {
		t.Errorf("conflicting address: workload %v, conflicts %v, identities %v; want none, one, none", w, v3.conflicts, v3.identities)
	}
	s4 := &inventory.Snapshot{Namespaces: ns, Revision: inventory.NewRevision(), Pods: []*inventory.Pod{other},
		Changes: &inventory.Changes{Since: s3.Revision, Pods: map[string]*inventory.Pod{"a/web": nil}}}
	v4 := v3.update(s4, nil)
	if w, ok := v4.workload(ip); !ok || w.Name != "other" || len(v4.conflicts) != 0 {
		t.Errorf("after the conflict: %v, conflicts %v; want other, none", w, v4.conflicts)
	}
}

// TestApplySameRevisionWithoutPods: once the agent's view is made from a
// snapshot, applying that snapshot again without its Pods (how reconcile
// keeps it for a retry or a pod captured since) leaves every pod in place.
func TestApplySameRevisionWithoutPods(t *testing.T) {
	a := applyAgent(t, "node-3")
	snap := scaleSnapshot(1000, 10, 0)
	snap.Revision = inventory.NewRevision()
	if err := a.apply(snap); err != nil {
		t.Fatal(err)
	}
	want := dumpView(a.current().view)
	if err := a.apply(withoutPods(snap)); err != nil {
		t.Fatal(err)
	}
	if got := dumpView(a.current().view); !reflect.DeepEqual(got, want) {
		t.Errorf("the view changed:\n%s", diffDumps(got, want))
	}
}

// TestViewUpdateMisnamedChange: a change listing a pod under another name
// (a source's mistake) builds the view whole rather than trust it.
func TestViewUpdateMisnamedChange(t *testing.T) {
	ns := map[string]inventory.Namespace{"a": {Name: "a"}}
	web := &inventory.Pod{Namespace: "a", Name: "web", NodeName: "n2", IP: netip.MustParseAddr("198.18.0.1")}
	s1 := &inventory.Snapshot{Namespaces: ns, Revision: inventory.NewRevision(), Pods: []*inventory.Pod{web}}
	db := &inventory.Pod{Namespace: "a", Name: "db", NodeName: "n2", IP: netip.MustParseAddr("198.18.0.2")}
	s2 := &inventory.Snapshot{Namespaces: ns, Revision: inventory.NewRevision(), Pods: []*inventory.Pod{web, db},
		Changes: &inventory.Changes{Since: s1.Revision, Pods: map[string]*inventory.Pod{"a/web": db}}}
	got, want := dumpView(buildView(s1, genCfg, nil).update(s2, nil)), dumpView(buildView(s2, genCfg, nil))
	if !reflect.DeepEqual(got, want) {
		t.Errorf("misnamed change trusted:\n%s", diffDumps(got, want))
	}
}

// TestViewMemory bounds what the view adds per pod of a 100k-pod cluster as
// istiod sends it (the pods themselves are the snapshot's): its Workload
// and its two index entries. It logs the figure.
func TestViewMemory(t *testing.T) {
	const n = 100_000
	snap := &inventory.Snapshot{Namespaces: map[string]inventory.Namespace{}}
	for i := range n {
		ns, name := "scale-"+strconv.Itoa(i/100), "pod-"+strconv.Itoa(i)
		snap.Pods = append(snap.Pods, &inventory.Pod{Namespace: ns, Name: name, ServiceAccount: "app",
			NodeName: "node-" + strconv.Itoa(i/100), IP: netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)}),
			Mesh: &inventory.MeshWorkload{UID: "Kubernetes//Pod/" + ns + "/" + name, HBONE: true}})
	}
	v, bytes := testutil.Retained(func() *view { return newView(snap, "node-7", "cluster.local", "istio-system") })
	per := int(bytes) / n
	runtime.KeepAlive(snap)
	if w, ok := v.byIP.Get(snap.Pods[n-1].IP); !ok || w.Pod != snap.Pods[n-1] || v.pods.Len() != n {
		t.Fatalf("last pod's workload %+v, %d pods", w, v.pods.Len())
	}
	t.Logf("%d bytes per pod held by the view (%d MB for %d pods)", per, per*n>>20, n)
	if per > 160 {
		t.Errorf("%d bytes per pod, want under 160", per)
	}
}
