package xds

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/node/inventory"
)

// Source is an inventory.Source fed by istiod's workload xDS, as ztunnel is:
// every pod, Service and AuthorizationPolicy (translated by istiod, with
// PeerAuthentication folded in) of the mesh comes over one Delta ADS stream.
// Only the node's own pods and the namespaces come from Local (the agent
// decides which of its pods to capture, as istio-cni does, and istiod learns
// the capture from the pod's annotation): no agent watches the whole cluster.
//
// Run publishes its first snapshot once Local has published and istiod has
// answered both subscriptions, then after every change. Resources istiod
// sends that Ferry refuses are NACKed with the reason; the last good version
// stays in force (an Authorization never good is published with its
// problems, for authz to read fail-closed) and each refusal is reported in
// Snapshot.Errors. On a broken stream Run keeps the state it has, reconnects
// with back-off and tells istiod the versions it holds; the first response
// of each type after a reconnect is istiod's whole state, so resources it no
// longer sends are dropped then.
type Source struct {
	Config Config
	// Local publishes the node's pods (with their labels) and the
	// namespaces; its policies and Services are ignored.
	Local inventory.Source
	Log   *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between connection attempts
	// (defaults 250ms and 15s).
	MinBackoff, MaxBackoff time.Duration
}

// state is what the stream has received, by type and resource name.
type state struct {
	res      map[string]*book             // last good (or never-good fail-closed) versions
	refused  map[string]map[string]string // resources whose latest version was refused: why
	received map[string]bool              // a response of the type arrived on some stream
	// advertised are the resources whose versions the current stream told
	// istiod it holds: istiod re-sends them only if they changed, and
	// names them in RemovedResources if they are gone. (It sends
	// Authorizations without versions, so those are never advertised: its
	// first answer holds them all.)
	advertised map[string]map[string]bool
	// policyRevision is the Snapshot.PolicyRevision of the Authorizations
	// held: a new one after every response of that type.
	policyRevision uint64
	// policies are the Authorizations held as of policiesRevision, for
	// snapshots to share until the next response of that type (10k
	// policies are 1.4 MB a copy); the resources point into it.
	policies         []authz.TranslatedPolicy
	policiesRevision uint64
	// published is what the last snapshot held, for the next to say which
	// pods it changed (with the resources the book merged since).
	published published
}

// put holds r as resource name of type t.
func (st *state) put(t, name string, r resource) {
	r.name = name
	st.res[t].put(&r)
}

// drop forgets resource name of type t.
func (st *state) drop(t, name string) { st.res[t].drop(name) }

// published is what a snapshot was made of besides istiod's pods: the
// node's pods by name, the names of istiod's pods of this node that a local
// pod's address hid, and istiod's Services as it sent them (by pointer: a
// resource istiod sends again is decoded anew), in resource-name order.
type published struct {
	revision   uint64
	namespaces map[string]inventory.Namespace
	local      []string
	hidden     map[string]bool
	services   []*inventory.Service
	// whole says the snapshot's pods cannot be told apart by name (pods
	// of other clusters): the next lists no changes.
	whole bool
}

func newState() *state {
	s := &state{res: map[string]*book{}, refused: map[string]map[string]string{}, received: map[string]bool{},
		advertised: map[string]map[string]bool{}}
	for _, t := range types {
		s.res[t] = &book{}
		s.refused[t] = map[string]string{}
	}
	return s
}

// Run implements inventory.Source.
func (s *Source) Run(ctx context.Context, publish func(*inventory.Snapshot)) error {
	if err := s.Config.check(); err != nil {
		return err
	}
	if s.Local == nil {
		return errors.New("xds: no local source for the node's pods")
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	conn, err := s.Config.dial()
	if err != nil {
		return fmt.Errorf("xds: %w", err)
	}
	defer conn.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	local := make(chan *inventory.Snapshot, 1)
	localErr := make(chan error, 1)
	go func() {
		localErr <- s.Local.Run(ctx, func(snap *inventory.Snapshot) {
			select { // keep only the latest
			case <-local:
			default:
			}
			local <- snap
		})
	}()

	st := newState()
	var lastLocal *inventory.Snapshot
	dirty := false
	// ready: Local has published and istiod has answered both types.
	ready := func() bool { return lastLocal != nil && st.received[TypeAddress] && st.received[TypeAuthorization] }
	publishState := func() { publish(st.snapshot(lastLocal, s.Config.Node.NodeName, s.Config.ClusterID)) }
	minB, maxB := cmp.Or(s.MinBackoff, 250*time.Millisecond), cmp.Or(s.MaxBackoff, 15*time.Second)
	backoff := minB
	for ctx.Err() == nil {
		// Each stream has its own context: leaving it ends the stream and
		// its receiving goroutine.
		sctx, endStream := context.WithCancel(ctx)
		str, err := s.connect(sctx, conn, st)
		if err != nil {
			s.Log.Warn("istiod: cannot open the xDS stream, retrying", "addr", s.Config.Address, "err", err, "in", backoff)
		} else {
			s.Log.Info("istiod: xDS stream open", "addr", s.Config.Address)
			resync := map[string]bool{TypeAddress: true, TypeAuthorization: true}
		stream:
			for {
				if dirty && ready() && len(str.recv) == 0 && len(local) == 0 {
					publishState()
					dirty = false
				}
				select {
				case <-ctx.Done():
					break stream
				case snap := <-local:
					lastLocal, dirty = snap, true
				case err := <-localErr:
					endStream()
					return err
				case resp := <-str.recv:
					backoff = minB
					if err := s.handle(str, st, resp, resync[resp.GetTypeUrl()]); err != nil {
						s.Log.Warn("istiod: xDS stream failed, reconnecting", "err", err)
						break stream
					}
					resync[resp.GetTypeUrl()] = false
					dirty = true
				case err := <-str.err:
					if ctx.Err() == nil {
						s.Log.Warn("istiod: xDS stream ended, reconnecting with the state held", "err", err, "in", backoff)
					}
					break stream
				}
			}
		}
		endStream()
		// Local snapshots keep arriving while disconnected; istiod's part
		// stays as last received.
		t := time.NewTimer(backoff + rand.N(backoff/2+1))
	wait:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				break wait
			case err := <-localErr:
				t.Stop()
				return err
			case snap := <-local:
				lastLocal = snap
				if ready() {
					publishState()
				}
			case <-t.C:
				break wait
			}
		}
		backoff = min(backoff*2, maxB)
	}
	cancel()
	<-localErr
	return nil
}

// connect opens a stream and subscribes to every type (wildcard, "*"
// explicitly: with resource versions alone istiod would watch only those),
// telling istiod the versions already held.
func (s *Source) connect(ctx context.Context, conn *grpc.ClientConn, st *state) (*stream, error) {
	sctx, err := s.Config.streamContext(ctx)
	if err != nil {
		return nil, err
	}
	str, err := openStream(sctx, conn)
	if err != nil {
		return nil, err
	}
	for i, t := range types {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: []string{"*"}}
		if i == 0 {
			req.Node = s.Config.node()
		}
		st.advertised[t] = map[string]bool{}
		for r := range st.res[t].all {
			if r.version != "" && !r.failClosed {
				if req.InitialResourceVersions == nil {
					req.InitialResourceVersions = map[string]string{}
				}
				req.InitialResourceVersions[r.name] = r.version
				st.advertised[t][r.name] = true
			}
		}
		if err := str.ads.Send(req); err != nil {
			return nil, err
		}
	}
	return str, nil
}

// handle applies one response and ACKs or NACKs it. On the first response of
// a type after (re)connecting, istiod sends every resource the agent did not
// advertise: held ones it neither sends nor advertised are gone. Resources
// are read one at a time (see response), so a malformed one found halfway
// leaves those before it applied.
func (s *Source) handle(str *stream, st *state, resp *response, resync bool) error {
	defer resp.release()
	t := resp.GetTypeUrl()
	held, ok := st.res[t]
	if !ok {
		return str.ads.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce(),
			ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: "type not subscribed"}})
	}
	if t == TypeAuthorization {
		st.policyRevision = inventory.NewPolicyRevision()
	}
	// Names sent, to find what is gone; on the first answer nothing is
	// held, and 100k names need not be gathered to learn it.
	resync = resync && held.len() > 0
	var sent map[string]bool
	if resync {
		sent = map[string]bool{}
	}
	var rejects []string
	for r, err := range resp.resources() {
		if err != nil {
			// The message is malformed, as when gRPC cannot decode it:
			// the stream ends, and the next one's first answer says what
			// is gone (nothing is dropped from this one).
			return fmt.Errorf("%s response: %w", shortType(t), err)
		}
		name := r.GetName()
		if sent != nil {
			sent[name] = true
		}
		res, err := decode(t, name, r.GetResource())
		if err != nil {
			msg := fmt.Sprintf("%s %s (version %s): %v", shortType(t), name, r.GetVersion(), err)
			rejects = append(rejects, msg)
			st.refused[t][name] = err.Error()
			if old, ok := held.get(name); (!ok || old.failClosed) && res.policy != nil {
				// Never good: its fail-closed reading applies, never
				// nothing (leaving out an ALLOW policy widens access).
				res.failClosed = true
				st.put(t, name, res)
			}
			continue
		}
		delete(st.refused[t], name)
		if res.pod == nil && res.service == nil && res.policy == nil {
			st.drop(t, name) // a workload Ferry does not model (not a pod)
			continue
		}
		res.version = r.GetVersion()
		st.put(t, name, res)
	}
	if resync {
		var gone []string
		for r := range held.all {
			if !sent[r.name] && !st.advertised[t][r.name] {
				gone = append(gone, r.name)
			}
		}
		for _, name := range gone {
			st.drop(t, name)
			delete(st.refused[t], name)
		}
	}
	for _, name := range resp.GetRemovedResources() {
		st.drop(t, name)
		delete(st.refused[t], name)
	}
	st.received[t] = true
	ack := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}
	if len(rejects) > 0 {
		s.Log.Warn("istiod: refused resources (NACK); the last good versions stay in force", "type", shortType(t), "refused", rejects)
		ack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: strings.Join(rejects, "; ")}
	}
	return str.ads.Send(ack)
}

func shortType(t string) string { return t[strings.LastIndexByte(t, '.')+1:] }

// snapshot merges the stream's state with the local snapshot: the node's
// pods as Local sees them (labels decide their capture) with istiod's view
// of each attached (matched by istiod's UID for a pod of this cluster, so a
// WorkloadEntry of the same name never lends it its policies), every other
// workload, the Services and the policies from istiod. A workload istiod
// places on this node that Local does not list is kept (known, not
// captured here, so never sent plaintext when istiod says it is captured),
// unless a local pod holds its address now.
func (st *state) snapshot(local *inventory.Snapshot, nodeName, clusterID string) *inventory.Snapshot {
	snap := &inventory.Snapshot{
		Namespaces:         local.Namespaces,
		Errors:             slices.Clone(local.Errors),
		TranslatedPolicies: st.translatedPolicies(),
		PolicyRevision:     st.policyRevision,
	}
	next := published{revision: inventory.NewRevision(), namespaces: local.Namespaces, hidden: map[string]bool{}}
	snap.Revision = next.revision
	byUID := map[string]int{} // istiod's UID of a local pod → index in snap.Pods
	localIPs := map[netip.Addr]bool{}
	for _, p := range local.Pods {
		byUID[clusterID+"//Pod/"+p.Namespace+"/"+p.Name] = len(snap.Pods)
		for _, ip := range append([]netip.Addr{p.IP}, p.IPs...) {
			localIPs[ip] = true
		}
		snap.Pods = append(snap.Pods, p)
		next.local = append(next.local, p.Key())
	}
	podPrefix := clusterID + "//Pod/"
	addrs := st.res[TypeAddress]
	touched := addrs.merge()
	snap.Pods = slices.Grow(snap.Pods, addrs.len())
	for _, r := range addrs.sorted {
		switch {
		case r.pod != nil:
			if i, ok := byUID[r.pod.Mesh.UID]; ok {
				c := *snap.Pods[i] // Local's pod is shared: istiod's view goes on a copy
				c.Mesh = r.pod.Mesh
				snap.Pods[i] = &c
				continue
			}
			// A pod of this cluster is named by its resource (its UID),
			// and no node's pod has its name (byUID would have matched
			// it); another cluster's may.
			key, ok := strings.CutPrefix(r.name, podPrefix)
			if r.pod.NodeName == nodeName && localIPs[r.pod.IP] {
				next.hidden[key] = true
				continue
			}
			snap.Pods = append(snap.Pods, r.pod)
			next.whole = next.whole || !ok || r.pod.Mesh.UID != r.name || !isKey(key, r.pod)
		case r.service != nil:
			snap.Services = append(snap.Services, *r.service)
			next.services = append(next.services, r.service)
		}
	}
	// Resources of other names are Services, or pods of other clusters,
	// which make the snapshot whole.
	var touchedPods []string
	for name := range touched {
		if key, ok := strings.CutPrefix(name, podPrefix); ok {
			touchedPods = append(touchedPods, key)
		}
	}
	snap.Changes = st.published.changes(&next, snap, touchedPods, func(key string) *inventory.Pod {
		if r, ok := addrs.get(podPrefix + key); ok && r.pod != nil && !next.hidden[key] {
			return r.pod
		}
		return nil
	})
	st.published = next
	for _, t := range types {
		for _, name := range slices.Sorted(maps.Keys(st.refused[t])) {
			effect := "the last good version applies"
			if r, ok := st.res[t].get(name); !ok {
				effect = "left out"
			} else if r.failClosed {
				effect = "read fail-closed (no good version was ever received)"
			}
			snap.Errors = append(snap.Errors, fmt.Errorf("istiod sent %s %s that Ferry refused (NACKed): %s; %s", shortType(t), name, st.refused[t][name], effect))
		}
	}
	return snap
}

// translatedPolicies returns the Authorizations held, in name order: a
// list of its own after each response of that type, shared by the
// snapshots made until the next.
func (st *state) translatedPolicies() []authz.TranslatedPolicy {
	b := st.res[TypeAuthorization]
	if st.policies == nil || st.policiesRevision != st.policyRevision || len(b.pending) > 0 {
		b.merge()
		st.policies = make([]authz.TranslatedPolicy, len(b.sorted))
		for i, r := range b.sorted {
			// The resource now points into the list (never changed):
			// a policy is held once, not beside its copy.
			st.policies[i] = *r.policy
			r.policy = &st.policies[i]
		}
		st.policiesRevision = st.policyRevision
	}
	return st.policies
}

// changes lists the pods of snap (made of next) that differ from those of
// the snapshot p was made of, or nil when it cannot: the first snapshot, or
// namespaces or Services changed, or pods not told apart by name. Those
// are the istiod pods of the resources touched since (touched, by key),
// the ones a local pod's address hid or stopped hiding, and the node's
// pods, listed every time (they come from the local source, a few); listed
// returns the istiod pod snap lists under a key, if any.
func (p *published) changes(next *published, snap *inventory.Snapshot, touched []string, listed func(key string) *inventory.Pod) *inventory.Changes {
	if p.revision == 0 || p.whole || next.whole || !slices.Equal(p.services, next.services) ||
		!maps.EqualFunc(p.namespaces, next.namespaces, func(a, b inventory.Namespace) bool { return maps.Equal(a.Labels, b.Labels) }) {
		return nil
	}
	c := &inventory.Changes{Since: p.revision, Pods: map[string]*inventory.Pod{}}
	for _, key := range touched {
		c.Pods[key] = nil
	}
	for key := range p.hidden {
		c.Pods[key] = nil
	}
	for key := range next.hidden {
		c.Pods[key] = nil
	}
	for _, key := range p.local {
		c.Pods[key] = nil
	}
	for key := range c.Pods {
		c.Pods[key] = listed(key)
	}
	// The node's pods come first in snap.Pods, with istiod's view of each
	// attached.
	for k := range next.local {
		c.Pods[snap.Pods[k].Key()] = snap.Pods[k]
	}
	return c
}

// isKey reports whether key is "namespace/name" of p.
func isKey(key string, p *inventory.Pod) bool {
	ns, name, ok := strings.Cut(key, "/")
	return ok && ns == p.Namespace && name == p.Name
}
