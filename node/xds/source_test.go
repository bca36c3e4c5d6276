package xds

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/node/xds/workloadapi"
	"github.com/ferrymesh/ferry/node/xds/workloadapi/security"
)

// adsServer is a scripted Delta ADS server: each stream a client opens
// arrives on streams, and the test reads its requests and sends responses.
type adsServer struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	streams chan *adsStream
}

type adsStream struct {
	md   metadata.MD
	reqs chan *discoveryv3.DeltaDiscoveryRequest
	send func(*discoveryv3.DeltaDiscoveryResponse) error
	end  chan struct{} // closed by the test to end the stream
}

func (s *adsServer) DeltaAggregatedResources(srv discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	md, _ := metadata.FromIncomingContext(srv.Context())
	st := &adsStream{md: md, reqs: make(chan *discoveryv3.DeltaDiscoveryRequest, 64), send: srv.Send, end: make(chan struct{})}
	s.streams <- st
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := srv.Recv()
			if err != nil {
				errc <- err
				return
			}
			st.reqs <- r
		}
	}()
	select {
	case <-st.end:
		return io.EOF
	case err := <-errc:
		return err
	}
}

// fixture runs a Source against an adsServer, with a local source that
// publishes what the test gives it.
type fixture struct {
	t     *testing.T
	srv   *adsServer
	snaps chan *inventory.Snapshot
	local chan *inventory.Snapshot
}

type chanSource chan *inventory.Snapshot

func (c chanSource) Run(ctx context.Context, publish func(*inventory.Snapshot)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-c:
			publish(s)
		}
	}
}

func newFixture(t *testing.T) *fixture {
	ca := certstest.NewCA(t)
	cert, err := ca.Issuer().ServingCertificate([]string{"istiod.istio-system.svc"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &adsServer{streams: make(chan *adsStream, 4)}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}})))
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)

	f := &fixture{t: t, srv: srv, snaps: make(chan *inventory.Snapshot, 64), local: make(chan *inventory.Snapshot, 4)}
	src := &Source{
		Config: Config{
			Address: ln.Addr().String(), Roots: ca.Roots(), ServerName: "istiod.istio-system.svc", ClusterID: "Kubernetes",
			Node: Node{PodName: "ferry-abc", PodNamespace: "istio-system", PodIP: "198.18.0.10", NodeName: "node1", ClusterDomain: "cluster.local"},
		},
		Local:      chanSource(f.local),
		Log:        slog.New(slog.DiscardHandler),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(s *inventory.Snapshot) { f.snaps <- s }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return f
}

func (f *fixture) stream() *adsStream {
	f.t.Helper()
	select {
	case s := <-f.srv.streams:
		return s
	case <-time.After(10 * time.Second):
		f.t.Fatal("no stream opened")
		return nil
	}
}

func (f *fixture) request(s *adsStream) *discoveryv3.DeltaDiscoveryRequest {
	f.t.Helper()
	select {
	case r := <-s.reqs:
		return r
	case <-time.After(10 * time.Second):
		f.t.Fatal("no request")
		return nil
	}
}

func (f *fixture) snapshot() *inventory.Snapshot {
	f.t.Helper()
	select {
	case s := <-f.snaps:
		return s
	case <-time.After(10 * time.Second):
		f.t.Fatal("no snapshot published")
		return nil
	}
}

// settled returns the last snapshot published before the source has been
// quiet for 200 ms (several may follow one another).
func (f *fixture) settled() *inventory.Snapshot {
	f.t.Helper()
	last := f.snapshot()
	for {
		select {
		case s := <-f.snaps:
			last = s
		case <-time.After(200 * time.Millisecond):
			return last
		}
	}
}

func (f *fixture) noSnapshot() {
	f.t.Helper()
	select {
	case s := <-f.snaps:
		f.t.Fatalf("snapshot published too early: %+v", s)
	case <-time.After(200 * time.Millisecond):
	}
}

// subscribe reads a stream's two initial requests.
func (f *fixture) subscribe(s *adsStream) []*discoveryv3.DeltaDiscoveryRequest {
	return []*discoveryv3.DeltaDiscoveryRequest{f.request(s), f.request(s)}
}

type res struct {
	name, version string
	msg           proto.Message
}

func respond(t *testing.T, s *adsStream, typeURL, nonce string, resources []res, removed ...string) {
	t.Helper()
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typeURL, Nonce: nonce, RemovedResources: removed}
	for _, r := range resources {
		a, err := anypb.New(r.msg)
		if err != nil {
			t.Fatal(err)
		}
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: r.name, Version: r.version, Resource: a})
	}
	if err := s.send(resp); err != nil {
		t.Fatal(err)
	}
}

func workload(ns, name, node, ip string, policies ...string) *workloadapi.Address {
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: "Kubernetes//Pod/" + ns + "/" + name, Name: name, Namespace: ns, Addresses: [][]byte{net.ParseIP(ip).To4()},
		TunnelProtocol: workloadapi.TunnelProtocol_HBONE, ServiceAccount: name, Node: node, WorkloadType: workloadapi.WorkloadType_POD,
		AuthorizationPolicies: policies,
		Services:              map[string]*workloadapi.PortList{ns + "/web." + ns + ".svc.cluster.local": {}},
	}}}
}

func denyPolicy(ns, name string, port uint32) *security.Authorization {
	return &security.Authorization{Name: name, Namespace: ns, Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{DestinationPorts: []uint32{port}}}}}}}}
}

func localSnapshot(pods ...*inventory.Pod) *inventory.Snapshot {
	return &inventory.Snapshot{Namespaces: map[string]inventory.Namespace{"foo": {Name: "foo"}}, Pods: pods}
}

func TestSourceSubscribesAsZtunnelAndMergesLocalPods(t *testing.T) {
	f := newFixture(t)
	s := f.stream()
	if got := s.md.Get("clusterid"); len(got) != 1 || got[0] != "Kubernetes" {
		t.Errorf("clusterid header %q", got)
	}
	reqs := f.subscribe(s)
	if id := reqs[0].GetNode().GetId(); id != "ztunnel~198.18.0.10~ferry-abc.istio-system~istio-system.svc.cluster.local" {
		t.Errorf("node id %q", id)
	}
	if ns := reqs[0].GetNode().GetMetadata().GetFields()["NAMESPACE"].GetStringValue(); ns != "istio-system" {
		t.Errorf("node metadata NAMESPACE %q", ns)
	}
	for i, want := range types {
		if reqs[i].GetTypeUrl() != want || len(reqs[i].GetResourceNamesSubscribe()) != 1 || reqs[i].GetResourceNamesSubscribe()[0] != "*" {
			t.Errorf("request %d: %v", i, reqs[i])
		}
	}

	// The node's own pod comes from the local source, with its labels;
	// istiod's view of it is attached. Another node's pod comes from istiod.
	f.local <- localSnapshot(&inventory.Pod{Name: "a", Namespace: "foo", NodeName: "node1", Labels: map[string]string{"app": "a"}})
	respond(t, s, TypeAddress, "n1", []res{
		{"Kubernetes//Pod/foo/a", "1", workload("foo", "a", "node1", "198.18.0.11", "foo/allow")},
		{"Kubernetes//Pod/foo/b", "1", workload("foo", "b", "node2", "198.18.1.11")},
		{"Kubernetes//Pod/foo/gone", "1", workload("foo", "gone", "node1", "198.18.0.12")},
		{"foo/web.foo.svc.cluster.local", "1", &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
			Name: "web", Namespace: "foo", Hostname: "web.foo.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: net.ParseIP("198.19.0.10").To4()}},
			Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}},
		}}}},
	})
	if ack := f.request(s); ack.GetResponseNonce() != "n1" || ack.GetErrorDetail() != nil {
		t.Fatalf("want ACK of n1, got %v", ack)
	}
	f.noSnapshot() // not ready: no Authorization response yet
	respond(t, s, TypeAuthorization, "n2", []res{{"foo/deny", "1", denyPolicy("foo", "deny", 9000)}})
	if ack := f.request(s); ack.GetResponseNonce() != "n2" || ack.GetErrorDetail() != nil {
		t.Fatalf("want ACK of n2, got %v", ack)
	}
	snap := f.snapshot()
	if len(snap.Pods) != 3 || snap.Pods[2].Name != "gone" {
		t.Fatalf("pods %+v, want foo/a (local), foo/b (node2) and foo/gone (on node1 for istiod, not in the local source)", snap.Pods)
	}
	a, b := snap.Pods[0], snap.Pods[1]
	if a.Name != "a" || a.Labels["app"] != "a" || a.Mesh == nil || !slices.Equal(a.Mesh.AuthorizationPolicies.Slice(), []string{"foo/allow"}) {
		t.Errorf("local pod %+v (mesh %+v)", a, a.Mesh)
	}
	if b.Name != "b" || b.IP.String() != "198.18.1.11" || b.ServiceAccount != "b" || !b.Mesh.HBONE || b.NodeName != "node2" {
		t.Errorf("remote pod %+v (mesh %+v)", b, b.Mesh)
	}
	if len(snap.Services) != 1 || snap.Services[0].ClusterIPs[0].String() != "198.19.0.10" || snap.Services[0].Ports[0].TargetPort != 8080 ||
		!snap.Services[0].Selects(b) {
		t.Errorf("services %+v", snap.Services)
	}
	if len(snap.TranslatedPolicies) != 1 || snap.TranslatedPolicies[0].Action != "DENY" || snap.TranslatedPolicies[0].Groups[0].Rules[0].Matches[0].DestinationPorts[0] != 9000 {
		t.Errorf("policies %+v", snap.TranslatedPolicies)
	}
}

func TestSourceNacksAndKeepsLastGood(t *testing.T) {
	f := newFixture(t)
	s := f.stream()
	f.subscribe(s)
	f.local <- localSnapshot()
	respond(t, s, TypeAddress, "a1", nil)
	f.request(s)
	respond(t, s, TypeAuthorization, "p1", []res{{"foo/deny", "", denyPolicy("foo", "deny", 9000)}})
	f.request(s)
	rev1 := f.snapshot().PolicyRevision

	// Version 2 has an address of 3 bytes: refused, version 1 stays. A new
	// policy that was never good is published with its problems, for
	// authz to read fail-closed.
	bad := denyPolicy("foo", "deny", 9001)
	bad.Groups[0].Rules[0].Matches[0].SourceIps = []*security.Address{{Address: []byte{1, 2, 3}, Length: 24}}
	newBad := proto.Clone(bad).(*security.Authorization)
	newBad.Name = "new"
	respond(t, s, TypeAuthorization, "p2", []res{{"foo/deny", "", bad}, {"foo/new", "", newBad}})
	nack := f.request(s)
	if nack.GetResponseNonce() != "p2" || nack.GetErrorDetail() == nil || !strings.Contains(nack.GetErrorDetail().GetMessage(), "foo/deny") ||
		!strings.Contains(nack.GetErrorDetail().GetMessage(), "sourceIps[0]") {
		t.Fatalf("want NACK of p2 naming foo/deny and the field, got %v", nack)
	}
	snap := f.snapshot()
	if len(snap.TranslatedPolicies) != 2 {
		t.Fatalf("policies %+v", snap.TranslatedPolicies)
	}
	if p := snap.TranslatedPolicies[0]; p.Name != "deny" || p.Groups[0].Rules[0].Matches[0].DestinationPorts[0] != 9000 || len(p.Problems) != 0 {
		t.Errorf("want the last good foo/deny, got %+v", p)
	}
	if p := snap.TranslatedPolicies[1]; p.Name != "new" || len(p.Problems) == 0 {
		t.Errorf("want foo/new with its problems, got %+v", p)
	}
	if len(snap.Errors) != 2 || !strings.Contains(snap.Errors[0].Error(), "the last good version applies") ||
		!strings.Contains(snap.Errors[1].Error(), "fail-closed") {
		t.Errorf("errors %v", snap.Errors)
	}

	// A good version clears the refusal.
	respond(t, s, TypeAuthorization, "p3", []res{{"foo/deny", "", denyPolicy("foo", "deny", 9002)}}, "foo/new")
	if ack := f.request(s); ack.GetErrorDetail() != nil {
		t.Fatalf("want ACK, got %v", ack)
	}
	rev2 := snap.PolicyRevision
	snap = f.snapshot()
	if len(snap.Errors) != 0 || len(snap.TranslatedPolicies) != 1 || snap.TranslatedPolicies[0].Groups[0].Rules[0].Matches[0].DestinationPorts[0] != 9002 {
		t.Errorf("after the fix: policies %+v, errors %v", snap.TranslatedPolicies, snap.Errors)
	}
	// Each policy response makes a new revision; an address one does not.
	rev3 := snap.PolicyRevision
	respond(t, s, TypeAddress, "a2", nil)
	f.request(s)
	if rev4 := f.snapshot().PolicyRevision; rev1 == 0 || rev2 == rev1 || rev3 == rev2 || rev4 != rev3 {
		t.Errorf("policy revisions %d, %d, %d, then %d after an address response", rev1, rev2, rev3, rev4)
	}
}

func TestSourceResumesWithVersionsAndResyncs(t *testing.T) {
	f := newFixture(t)
	s := f.stream()
	f.subscribe(s)
	f.local <- localSnapshot()
	respond(t, s, TypeAddress, "a1", []res{
		{"Kubernetes//Pod/foo/b", "7", workload("foo", "b", "node2", "198.18.1.11")},
		{"Kubernetes//Pod/foo/c", "8", workload("foo", "c", "node2", "198.18.1.12")},
	})
	f.request(s)
	// As istiod does, Authorizations come without versions.
	respond(t, s, TypeAuthorization, "p1", []res{{"foo/one", "", denyPolicy("foo", "one", 1)}, {"foo/two", "", denyPolicy("foo", "two", 2)}})
	f.request(s)
	f.snapshot()

	// istiod goes away: the state is kept, and the next stream resumes
	// with the versions held.
	close(s.end)
	s = f.stream()
	reqs := f.subscribe(s)
	if reqs[0].GetNode() == nil {
		t.Error("no node on the resumed stream's first request")
	}
	if v := reqs[0].GetInitialResourceVersions(); v["Kubernetes//Pod/foo/b"] != "7" || v["Kubernetes//Pod/foo/c"] != "8" ||
		reqs[0].GetResourceNamesSubscribe()[0] != "*" {
		t.Errorf("address request %v", reqs[0])
	}
	if v := reqs[1].GetInitialResourceVersions(); len(v) != 0 || reqs[1].GetResourceNamesSubscribe()[0] != "*" {
		t.Errorf("authorization request %v", reqs[1])
	}
	// istiod's first answers, as it gives them: Addresses it holds at the
	// advertised versions are not re-sent, a deleted one is removed; the
	// Authorizations are all sent, so foo/two is gone without a removal.
	respond(t, s, TypeAddress, "q0", nil, "Kubernetes//Pod/foo/c")
	f.request(s)
	respond(t, s, TypeAuthorization, "q1", []res{{"foo/one", "", denyPolicy("foo", "one", 1)}})
	f.request(s)
	snap := f.settled()
	if len(snap.TranslatedPolicies) != 1 || snap.TranslatedPolicies[0].Name != "one" || len(snap.Pods) != 1 || snap.Pods[0].Name != "b" {
		t.Errorf("after resync: policies %+v, pods %+v", snap.TranslatedPolicies, snap.Pods)
	}
	// Later responses are deltas again.
	respond(t, s, TypeAuthorization, "q2", []res{{"foo/three", "", denyPolicy("foo", "three", 3)}})
	f.request(s)
	if snap := f.settled(); len(snap.TranslatedPolicies) != 2 {
		t.Errorf("after a delta: %+v", snap.TranslatedPolicies)
	}
}

// TestSourceEndsStreamOnUndecodableResource: resources are read one at a
// time, so one that does not decode is found halfway through its response.
// The stream ends (as when gRPC cannot decode a message) with the
// resources before it applied and nothing held dropped, and the next
// stream resumes from there.
func TestSourceEndsStreamOnUndecodableResource(t *testing.T) {
	f := newFixture(t)
	s := f.stream()
	f.subscribe(s)
	f.local <- localSnapshot()
	respond(t, s, TypeAddress, "a1", []res{{"Kubernetes//Pod/foo/b", "1", workload("foo", "b", "node2", "198.18.1.11")}})
	f.request(s)
	respond(t, s, TypeAuthorization, "p1", nil)
	f.request(s)
	f.snapshot()

	resource := func(name, ip string) *discoveryv3.Resource {
		a, err := anypb.New(workload("foo", name, "node2", ip))
		if err != nil {
			t.Fatal(err)
		}
		return &discoveryv3.Resource{Name: "Kubernetes//Pod/foo/" + name, Version: "2", Resource: a}
	}
	broken := resource("d", "198.18.1.13")
	broken.ProtoReflect().SetUnknown([]byte{0xff}) // a varint that never ends
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeAddress, Nonce: "a2",
		Resources: []*discoveryv3.Resource{resource("c", "198.18.1.12"), broken, resource("e", "198.18.1.14")}}
	if err := s.send(resp); err != nil {
		t.Fatal(err)
	}
	s = f.stream()
	reqs := f.subscribe(s)
	v := reqs[0].GetInitialResourceVersions()
	if len(v) != 2 || v["Kubernetes//Pod/foo/b"] != "1" || v["Kubernetes//Pod/foo/c"] != "2" {
		t.Errorf("resumed with versions %v, want b (held) and c (read before the undecodable one)", v)
	}
}

// TestSourceTakesIstiodsWholeState: istiod sends every address in one
// response when a stream starts (9 MB at 100k pods), past gRPC's default
// limit of 4 MiB.
func TestSourceTakesIstiodsWholeState(t *testing.T) {
	f := newFixture(t)
	s := f.stream()
	f.subscribe(s)
	f.local <- localSnapshot()
	var rs []res
	for i := range 60000 {
		ip := fmt.Sprintf("198.18.%d.%d", i>>8, i&255)
		name := fmt.Sprintf("p%d", i)
		rs = append(rs, res{"Kubernetes//Pod/foo/" + name, "1", workload("foo", name, "node2", ip)})
	}
	respond(t, s, TypeAddress, "big", rs)
	if ack := f.request(s); ack.GetResponseNonce() != "big" || ack.GetErrorDetail() != nil {
		t.Fatalf("want ACK of the big response, got %v", ack)
	}
	respond(t, s, TypeAuthorization, "p", nil)
	f.request(s)
	if snap := f.snapshot(); len(snap.Pods) != 60000 {
		t.Fatalf("%d pods, want 60000", len(snap.Pods))
	}
}

// TestSourceMatchesLocalPodsByUID: istiod sends WorkloadEntries as pods
// too; one named like a local pod must not lend it its policies.
func TestSourceMatchesLocalPodsByUID(t *testing.T) {
	f := newFixture(t)
	s := f.stream()
	f.subscribe(s)
	f.local <- localSnapshot(&inventory.Pod{Name: "db", Namespace: "foo", NodeName: "node1", IP: netip.MustParseAddr("198.18.0.20")})
	entry := workload("foo", "db", "node1", "198.18.9.9", "foo/open-door")
	entry.GetWorkload().Uid = "Kubernetes/networking.istio.io/WorkloadEntry/foo/db"
	respond(t, s, TypeAddress, "a", []res{{entry.GetWorkload().Uid, "1", entry},
		{"Kubernetes//Pod/foo/db", "1", workload("foo", "db", "node1", "198.18.0.20", "foo/own")}})
	f.request(s)
	respond(t, s, TypeAuthorization, "p", nil)
	f.request(s)
	snap := f.settled()
	if p := snap.Pods[0]; p.Name != "db" || p.Mesh == nil || !slices.Equal(p.Mesh.AuthorizationPolicies.Slice(), []string{"foo/own"}) {
		t.Errorf("local pod %+v with %+v, want its own workload's policies", p, p.Mesh)
	}
}
