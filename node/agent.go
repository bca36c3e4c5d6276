package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/istioca"
	"github.com/ferrymesh/ferry/node/cni"
	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/node/redirect"
	"github.com/ferrymesh/ferry/tunnel"
)

// Deps are the agent's injected collaborators. Zero values get defaults.
type Deps struct {
	Log     *slog.Logger
	Level   *slog.LevelVar // the level behind Log, changed through /logging
	Version string
	// Source overrides the inventory source built from Config (tests).
	Source inventory.Source
	// Annotator, when set, records captured pods on the Kubernetes API.
	Annotator Annotator
	// Uninstalling, when set, is asked once the agent has stopped and
	// drained: true means Ferry is being uninstalled (the agent's
	// DaemonSet was deleted), and the agent removes every kernel object it
	// owns, as `ferry cleanup` does. Otherwise they stay for the next
	// agent and enrolled pods fail closed meanwhile.
	Uninstalling func() bool
}

// Annotator records whether a pod's traffic is captured, as Istio's
// ambient.istio.io/redirection annotation.
type Annotator interface {
	SetRedirection(ctx context.Context, pod inventory.Pod, enabled bool) error
}

// Agent is the node agent. New wires it; Run runs it, once.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	level   *slog.LevelVar
	version string
	source  inventory.Source
	annot   Annotator
	uninst  func() bool
	metrics *Metrics
	ready   *readiness

	state atomic.Pointer[state]
	// annotated is what this agent last wrote on each pod (by UID); only
	// the reconcile loop touches it.
	annotated map[string]bool
	// reported is what was last logged about each policy object with
	// problems; only the reconcile loop touches it.
	reported map[policyObject]string
	// picks counts, per Service, who chose the endpoint of connections made
	// to its address.
	picks pickCounts

	// Built by New and never reassigned, so they are set before anything
	// can call the methods that read them.
	ca        *istioCA // nil with a local CA
	store     *certs.Store
	conns     *tunnel.Registry
	redirect  capture     // nil with --redirect none
	pods      *podCapture // with --capture pod, the same as redirect
	local     *localHBONE // same-node HBONE, in process
	server    *tunnel.Server
	client    *tunnel.Client
	outbound  *tunnel.Outbound
	plaintext *tunnel.Plaintext
	// compiled is the policy last compiled (compile), for apply alone.
	compiled struct {
		revision uint64
		engine   *authz.Engine
		diags    []authz.Diagnostic
	}
	// reapply asks reconcile to apply the last snapshot again, closing the
	// channel sent when done: a pod captured since has an address the
	// snapshot may lack (podCapture.addresses).
	reapply chan chan struct{}

	ran atomic.Bool // Run was called
}

// state is what one inventory snapshot compiles to. It is replaced whole.
type state struct {
	view   *view
	engine *authz.Engine
	// bindings are the local pods' bound policies (xDS mode) resolved by
	// engine, once per snapshot rather than per connection.
	bindings map[*Workload]*authz.Binding
	diags    []authz.Diagnostic
	at       time.Time
}

// New validates cfg, loads the CA's certificates and builds the agent's
// parts. It starts no goroutine, opens no socket and touches no kernel
// state: Run does.
func New(cfg Config, deps Deps) (*Agent, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: deps.Log, level: deps.Level, version: deps.Version, source: deps.Source, annot: deps.Annotator, uninst: deps.Uninstalling}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.level == nil {
		a.level = new(slog.LevelVar) // nothing reads it: /logging reports info
	}
	if a.version == "" {
		a.version = "dev"
	}
	if a.source == nil {
		if cfg.Kube {
			return nil, errors.New("node: --kube needs a Kubernetes source (built by cmd/ferry)")
		}
		a.source = &inventory.File{Path: cfg.Manifests, Log: a.log}
	}
	a.metrics = NewMetrics(a.version)
	a.annotated = map[string]bool{}
	tasks := []string{TaskInventory, TaskCertificates, TaskListeners}
	if cfg.Redirect == RedirectEBPF {
		tasks = append(tasks, TaskRedirection)
	}
	if cfg.Redirect == RedirectEBPF && cfg.Capture == CapturePod && cfg.CNIConfDir != "" {
		tasks = append(tasks, TaskCNI)
	}
	a.ready = newReadiness(tasks...)
	if err := a.wire(); err != nil {
		return nil, err
	}
	return a, nil
}

// wire builds the certificate store, the connection registry, capture and
// the tunnel's server, client and proxies, which the agent's methods and
// Run use.
func (a *Agent) wire() error {
	var err error
	if a.store, err = a.newStore(); err != nil {
		return err
	}
	a.conns = tunnel.NewRegistry()
	a.local = newLocalHBONE()
	var dialled func(net.Conn) netip.AddrPort
	switch {
	case a.cfg.Redirect != RedirectEBPF:
	case a.cfg.Capture == CapturePod:
		// Captured inside the pod, before any DNAT on the node: the
		// destination is what the pod dialled.
		a.pods = newPodCapture(a.cfg, a.log.With("component", "redirect"))
		a.redirect = a.pods
		a.reapply = make(chan chan struct{})
	default:
		a.redirect = newRedirection(a.cfg, a.log.With("component", "redirect"))
		dialled = redirect.DialledDst
	}
	obs := &observer{a: a}
	a.server, err = tunnel.NewServer(tunnel.ServerConfig{
		TLS:            a.store.ServerConfig(a.identityForLocal),
		TrustDomain:    a.cfg.TrustDomain,
		Authorizer:     a,
		Destinations:   a,
		Dial:           a.dialPod,
		CheckAuthority: true,
		Registry:       a.conns,
		Observer:       obs,
		Rejected: func(_ int, reason string) {
			a.metrics.TunnelRejects.WithLabelValues(reason).Inc()
		},
	}, a.log.With("component", "hbone"))
	if err != nil {
		return err
	}
	a.client, err = tunnel.NewClient(tunnel.ClientConfig{
		TLS: func(src, want certs.Identity) (*tls.Config, error) {
			return a.store.ClientConfig(src, want), nil
		},
		DialTCP: a.dialHBONE,
	}, a.log.With("component", "pool"))
	if err != nil {
		return err
	}
	a.metrics.Registry.MustRegister(newStateCollector(a, a.client))
	a.outbound, err = tunnel.NewOutbound(tunnel.OutboundConfig{
		Routes:     a,
		Client:     a.client,
		DialledDst: dialled,
		Dial:       a.dialPassthrough,
		Registry:   a.conns,
		Observer:   obs,
	}, a.log.With("component", "outbound"))
	if err != nil {
		return err
	}
	a.plaintext, err = tunnel.NewPlaintext(tunnel.PlaintextConfig{
		Authorizer:   a,
		Destinations: a,
		DialledDst:   dialled,
		Dial:         a.dialPod,
		Registry:     a.conns,
		Observer:     obs,
	}, a.log.With("component", "inbound"))
	return err
}

// Run opens the agent's listeners, attaches capture (eBPF mode), connects
// to the Istio CA (with --ca-addr) and serves until ctx is done, then
// drains open connections for at most Config.DrainTimeout. It returns nil
// after a clean shutdown. All goroutines it starts have exited when it
// returns. Run closes what New built, so it may be called only once.
func (a *Agent) Run(ctx context.Context) (err error) {
	if a.ran.Swap(true) {
		return errors.New("node: Agent.Run called twice")
	}
	if a.ca != nil {
		if err := a.ca.open(); err != nil {
			return err
		}
		defer a.ca.close()
	}
	lns, err := a.listen(ctx)
	if err != nil {
		return err
	}
	defer lns.close()
	defer a.local.Close()
	if a.redirect != nil {
		var err error
		if a.pods != nil {
			if t, ok := lns.cni.(interface{ TakenOver() bool }); ok {
				a.pods.takenOver = t.TakenOver
			}
			err = a.pods.start()
		} else {
			err = a.redirect.(*redirection).attach(lns)
		}
		if err != nil {
			return err
		}
		defer func() {
			if rerr := a.release(lns); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}()
	}
	a.ready.set(TaskListeners, true, "")
	defer a.client.Close()
	return a.serve(ctx, lns)
}

// serve runs the agent's loops and servers on lns until one fails, or until
// ctx is done and the drain that follows has ended: the data plane runs on
// its own context, cancelled after that drain, so open connections can
// finish. It returns once every goroutine it started has exited.
func (a *Agent) serve(ctx context.Context, lns *listeners) error {
	snaps := make(chan *inventory.Snapshot, 1)
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error {
		return a.source.Run(gctx, func(s *inventory.Snapshot) { keepNewest(snaps, s) })
	})
	g.Go(func() error { return a.reconcile(gctx, snaps) })
	g.Go(func() error { return a.store.Run(gctx) })
	g.Go(func() error { return a.watchCertificates(gctx) })
	g.Go(func() error { return a.server.Serve(gctx, lns.hbone) })
	g.Go(func() error { return a.server.Serve(gctx, a.local) })
	outboundLn, inboundLn := newDrainListener(lns.outbound), newDrainListener(lns.inbound)
	g.Go(func() error { return a.outbound.Serve(gctx, outboundLn) })
	g.Go(func() error { return a.plaintext.Serve(gctx, inboundLn) })
	g.Go(func() error { return serveHTTP(gctx, lns.admin, newAdminHandler(a, a.level, a.log)) })
	if a.pods != nil {
		g.Go(func() error { return a.serveCNI(gctx, lns.cni) })
		if a.cfg.CNIConfDir != "" {
			g.Go(func() error { return a.keepCNIInstalled(gctx) })
		}
		if a.cfg.ProbeSource != "" {
			g.Go(func() error { return a.keepProbesAttached(gctx) })
		}
	}
	g.Go(func() error { return a.serveDataPlaneHTTP(gctx, "metrics", lns.metrics, a.metricsHandler()) })
	g.Go(func() error { return a.serveDataPlaneHTTP(gctx, "readiness", lns.readiness, a.readinessHandler()) })
	g.Go(func() error {
		select {
		case <-gctx.Done():
			return nil
		case <-ctx.Done():
		}
		outboundLn.drain()
		inboundLn.drain()
		if a.pods != nil {
			a.pods.closeListeners()
		}
		a.drain(ctx)
		stopRun()
		return nil
	})
	a.log.Info("agent started", "node", a.cfg.NodeName, "redirect", a.cfg.Redirect, "version", a.version,
		"outbound", lns.outbound.Addr(), "inbound", lns.inbound.Addr(), "hbone", lns.hbone.Addr(), "admin", lns.admin.Addr())
	err := g.Wait()
	a.log.Info("agent stopped", "err", err)
	return err
}

// keepNewest puts s in snaps, a channel of capacity 1, replacing a snapshot
// not yet taken: the reconcile loop is level-triggered and only needs the
// newest.
func keepNewest(snaps chan *inventory.Snapshot, s *inventory.Snapshot) {
	for {
		select {
		case snaps <- s:
			return
		default:
		}
		select {
		case <-snaps:
		default:
		}
	}
}

// release closes capture's handles when Run ends and, if Ferry is being
// uninstalled and no other agent has taken over, removes the capture state.
// Otherwise it stays for the next agent, and enrolled pods fail closed
// meanwhile.
func (a *Agent) release(lns *listeners) error {
	uninstall := a.uninst != nil && a.uninst() && a.lastAgent(lns)
	if uninstall && a.pods != nil {
		if a.cfg.CNIConfDir != "" {
			if err := cni.Uninstall(a.cfg.CNIConfDir, a.cfg.CNIBinDir); err != nil {
				a.log.Error("uninstall: removing the ferry-cni plugin failed", "dir", a.cfg.CNIConfDir, "err", err)
			}
		}
		a.pods.removeAll()
	}
	a.redirect.Close()
	if !uninstall {
		return nil
	}
	if err := Cleanup(a.cfg.BPFPinDir, a.cfg.StateDir); err != nil {
		a.log.Error("uninstall: removing the capture state failed; run ferry cleanup on the node", "err", err)
		return err
	}
	a.log.Info("uninstall: capture state removed (rules, routes, BPF pins)")
	return nil
}

// lastAgent reports whether no other agent runs beside this stopping one:
// a DaemonSet deleted and created again can start its agent before this
// one has seen the new DaemonSet, and that agent uses the same pins, rules
// and routes. It closes this agent's listeners and binds the HBONE address
// without SO_REUSEPORT: only another agent's listener makes that fail.
func (a *Agent) lastAgent(lns *listeners) bool {
	if a.pods != nil {
		// With --capture pod another agent takes the CNI socket over
		// (cni.Listen) as it starts.
		taken, ok := lns.cni.(interface{ TakenOver() bool })
		other := ok && taken.TakenOver()
		lns.close()
		if other {
			a.log.Info("uninstall: another agent took over the CNI socket; leaving it the capture state", "socket", a.cfg.CNISocket)
		}
		return !other
	}
	lns.close()
	ln, err := net.Listen("tcp4", a.cfg.HBONEAddr)
	if err != nil {
		a.log.Info("uninstall: another agent listens on the HBONE address; leaving it the capture state", "addr", a.cfg.HBONEAddr, "err", err)
		return false
	}
	ln.Close()
	return true
}

// newStore builds the certificate store on its issuer: the embedded local
// CA, or an Istio CA over gRPC, which Run connects to (a.ca). Requests are
// counted in ferry_certs_ca_requests_total.
func (a *Agent) newStore() (*certs.Store, error) {
	var issuer certs.Issuer
	var roots *x509.CertPool
	if a.cfg.CAAddr == "" {
		ca, err := certs.LoadLocalCA(a.cfg.CACert, a.cfg.CAKey)
		if err != nil {
			return nil, err
		}
		roots = x509.NewCertPool()
		roots.AddCert(ca.Root())
		issuer = ca
	} else {
		var err error
		if roots, err = certs.LoadRoots(a.cfg.CARoot); err != nil {
			return nil, fmt.Errorf("node: --ca-root: %w", err)
		}
		a.ca = &istioCA{cfg: istioca.ClientConfig{Address: a.cfg.CAAddr, Roots: roots, TokenFile: a.cfg.CATokenFile, ClusterID: a.cfg.ClusterID}}
		issuer = a.ca
	}
	return certs.NewStore(certs.StoreConfig{TrustDomain: a.cfg.TrustDomain, Roots: roots, PostQuantum: a.cfg.PostQuantum},
		countingIssuer{issuer, a.metrics}, a.log.With("component", "certs"))
}

// istioCA is an Istio CA as a certs.Issuer. Building its gRPC client starts
// goroutines, so Run builds it (open) and closes it when it returns; Issue
// fails outside that span, in which the certificate store runs.
type istioCA struct {
	cfg    istioca.ClientConfig
	client atomic.Pointer[istioca.Client]
}

func (c *istioCA) open() error {
	client, err := istioca.NewClient(c.cfg)
	if err != nil {
		return err
	}
	c.client.Store(client)
	return nil
}

func (c *istioCA) close() { c.client.Swap(nil).Close() }

// Issue implements certs.Issuer.
func (c *istioCA) Issue(ctx context.Context, id certs.Identity, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	client := c.client.Load()
	if client == nil {
		return nil, errors.New("node: not connected to the Istio CA")
	}
	return client.Issue(ctx, id, csrPEM, ttl)
}

// countingIssuer counts CA requests by result.
type countingIssuer struct {
	certs.Issuer
	m *Metrics
}

func (c countingIssuer) Issue(ctx context.Context, id certs.Identity, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	chain, err := c.Issuer.Issue(ctx, id, csrPEM, ttl)
	result := "ok"
	if err != nil {
		result = "error"
	}
	c.m.CARequests.WithLabelValues(result).Inc()
	return chain, err
}

// drain stops taking HBONE connections (the caller has stopped the outbound
// and plaintext listeners), sends GOAWAY to peers and clients, and waits up to
// DrainTimeout for open connections to finish. The server's and client's
// drains run beside that wait; they have returned when drain does.
func (a *Agent) drain(ctx context.Context) {
	a.ready.set("shutting down", false, "")
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel, below, has ended both drains
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.DrainTimeout)
	defer cancel()
	open := len(a.conns.Connections())
	a.log.Info("draining", "open", open, "deadline", a.cfg.DrainTimeout)
	wg.Go(func() { a.server.Drain(dctx) })
	wg.Go(func() { a.client.Drain(dctx) })
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for len(a.conns.Connections()) > 0 {
		select {
		case <-dctx.Done():
			a.log.Warn("drain deadline reached, closing open connections", "open", len(a.conns.Connections()))
			return
		case <-t.C:
		}
	}
}

// reconcile applies each inventory snapshot: policy, identities, redirection,
// and re-authorization of open connections.
func (a *Agent) reconcile(ctx context.Context, snaps <-chan *inventory.Snapshot) error {
	var retry <-chan time.Time
	var last *inventory.Snapshot
	for {
		var done chan struct{}
		select {
		case <-ctx.Done():
			return nil
		case last = <-snaps:
		case <-retry:
		case done = <-a.reapply:
		}
		if last == nil {
			if done != nil {
				close(done)
			}
			continue
		}
		retry = nil
		err := a.apply(last)
		if done != nil {
			close(done)
		}
		if s := a.current(); s != nil && last.Revision != 0 && s.view.snap.Revision == last.Revision && !s.view.rebuild {
			// Applying it again (a retry, a pod captured since) changes no
			// pod the view holds: its Pods need not be kept twice.
			last = withoutPods(last)
		}
		if err == nil {
			err = a.annotate(ctx)
		}
		if err != nil {
			a.log.Warn("applying inventory, will retry", "err", err)
			retry = time.After(time.Second)
		}
	}
}

// apply makes the agent's state from snap: its view (updated from the last
// one where snap lists its changes), its policy (compiled again only when
// it changed), and then the certificates, capture and open connections
// that follow from them.
func (a *Agent) apply(snap *inventory.Snapshot) error {
	var fills map[string]capturedAddrs
	if a.pods != nil {
		fills = a.pods.addresses()
	}
	var v *view
	if s := a.current(); s != nil {
		v = s.view.update(snap, fills)
	} else {
		v = buildView(snap, viewConfig{a.cfg.NodeName, unique.Make(a.cfg.TrustDomain), a.cfg.SystemNamespace}, fills)
	}
	engine, diags := a.compile(snap)
	diags = slices.Concat(diags, snap.PolicyProblems)
	a.reportPolicyProblems(diags)
	for _, e := range v.conflicts {
		a.log.Warn("inventory conflict", "err", e)
	}
	a.metrics.InventoryError.Set(float64(len(snap.Errors) + len(v.conflicts)))
	bindings := map[*Workload]*authz.Binding{}
	for _, w := range v.local {
		if w.Mesh != nil {
			bindings[w] = engine.Bind(w.Mesh.AuthorizationPolicies.Slice())
		}
	}
	a.state.Store(&state{view: v, engine: engine, bindings: bindings, diags: diags, at: time.Now()})
	a.store.SetIdentities(v.identities)
	a.checkCertificates()
	a.metrics.EnrolledPods.Set(float64(len(v.local)))
	a.ready.set(TaskInventory, true, "")
	// Close connections, open or still being set up, that the new policy or
	// inventory no longer allows. The state is stored above first: a
	// connection the scan misses is authorized against it (tunnel.Registry).
	a.conns.Reauthorize(func(r tunnel.Request) error { return a.authorize(r) })
	if a.redirect != nil {
		if err := a.redirect.apply(v); err != nil {
			a.ready.set(TaskRedirection, false, err.Error())
			return err
		}
		a.ready.set(TaskRedirection, true, "")
	}
	return nil
}

// compile returns the Engine for snap's policies, compiling them only when
// their revision is new: a pod's change leaves a cluster's 10,000 policies
// as they were, and compiling them took most of an apply.
func (a *Agent) compile(snap *inventory.Snapshot) (*authz.Engine, []authz.Diagnostic) {
	c := &a.compiled
	if snap.PolicyRevision == 0 || snap.PolicyRevision != c.revision {
		c.engine, c.diags = compilePolicies(authz.Config{RootNamespace: a.cfg.SystemNamespace, TrustDomain: a.cfg.TrustDomain}, snap)
		c.revision = snap.PolicyRevision
	}
	return c.engine, c.diags
}

// annotate converges the redirection annotation of this node's pods to their
// capture state (Kubernetes mode only). It is level-triggered: it compares
// each local pod's annotation (or what this agent last wrote, which the
// snapshot may not show yet) with whether the pod is captured.
func (a *Agent) annotate(ctx context.Context) error {
	if a.annot == nil {
		return nil
	}
	s := a.current()
	var errs []error
	seen := map[string]bool{}
	for _, w := range s.view.localByName {
		if cur, ok := s.view.workload(w.IP); !ok || cur != w || w.UID == "" {
			continue // no address of its own
		}
		seen[w.UID] = true
		want := w.Enrolled && (a.redirect == nil || a.redirect.Captured(w.IP))
		has, written := a.annotated[w.UID]
		if !written {
			has = w.Annotations[RedirectionAnnotation] == "enabled"
		}
		if want == has {
			continue
		}
		if err := a.annot.SetRedirection(ctx, *w.Pod, want); err != nil {
			errs = append(errs, err)
			continue
		}
		a.annotated[w.UID] = want
	}
	for uid := range a.annotated {
		if !seen[uid] {
			delete(a.annotated, uid) // the pod is gone
		}
	}
	return errors.Join(errs...)
}

// watchCertificates keeps the certificate readiness task and expiry metrics
// current.
func (a *Agent) watchCertificates(ctx context.Context) error {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		a.checkCertificates()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// checkCertificates marks certificates ready once every identity with an
// enrolled pod on this node has a valid one (and never before the inventory
// has said which identities those are).
func (a *Agent) checkCertificates() {
	for _, c := range a.store.Snapshot() {
		if c.State == certs.CertValid {
			a.metrics.CertExpiry.WithLabelValues(c.ID).Set(float64(c.NotAfter.Unix()))
		}
	}
	s := a.current()
	if s == nil {
		a.ready.set(TaskCertificates, false, "waiting for the inventory")
		return
	}
	missing := 0
	for _, id := range s.view.identities {
		if !a.store.Ready(id) {
			missing++
		}
	}
	if missing == 0 {
		a.ready.set(TaskCertificates, true, "")
	} else {
		a.ready.set(TaskCertificates, false, fmt.Sprintf("%d identities waiting", missing))
	}
}

func (a *Agent) current() *state { return a.state.Load() }

// identityForLocal chooses the certificate the HBONE server presents: the
// identity of the local enrolled pod the connection was addressed to.
func (a *Agent) identityForLocal(local netip.Addr) (certs.Identity, error) {
	s := a.current()
	if s == nil {
		return certs.Identity{}, errors.New("node: inventory not synced yet")
	}
	w, ok := s.view.localEnrolled(local)
	if !ok {
		return certs.Identity{}, fmt.Errorf("node: %s is not an enrolled pod on node %s", local, a.cfg.NodeName)
	}
	return w.Identity(), nil
}

// Local implements tunnel.Destinations: dst is an enrolled pod on this node.
func (a *Agent) Local(dst netip.Addr) bool {
	s := a.current()
	if s == nil {
		return false
	}
	_, ok := s.view.localEnrolled(dst)
	return ok
}

// Authorize implements tunnel.Authorizer with the compiled policy.
func (a *Agent) Authorize(ctx context.Context, r tunnel.Request) error {
	return a.authorize(r)
}

func (a *Agent) authorize(r tunnel.Request) error {
	direction := "inbound"
	if r.Plaintext {
		direction = "inbound-plaintext"
	}
	s := a.current()
	if s == nil {
		a.metrics.PolicyDecision.WithLabelValues(direction, "deny", "not synced").Inc()
		return errors.New("node: inventory not synced: deny")
	}
	w, ok := s.view.localEnrolled(r.Dst.Addr())
	if !ok {
		a.metrics.PolicyDecision.WithLabelValues(direction, "deny", "unknown destination").Inc()
		return fmt.Errorf("node: %s is not an enrolled pod on this node", r.Dst.Addr())
	}
	if s.view.snap.TranslatedPolicies != nil && w.Mesh == nil {
		// istiod binds selector policies (and STRICT) to the workloads it
		// sends: without its workload, they would be skipped.
		a.metrics.PolicyDecision.WithLabelValues(direction, "deny", "unknown to istiod").Inc()
		return fmt.Errorf("node: istiod has not sent pod %s/%s: deny until it does", w.Namespace, w.Name)
	}
	req := authzRequest(r.Peer, r.Src, w, r.Dst.Port(), s.bindings[w])
	d := s.engine.Decide(req)
	if d.Allow {
		a.metrics.PolicyDecision.WithLabelValues(direction, "allow", "").Inc()
		return nil
	}
	a.metrics.PolicyDecision.WithLabelValues(direction, "deny", d.Kind).Inc()
	a.log.Info("connection denied", "src", r.Src, "peer", r.Peer.String(), "dst", r.Dst, "pod", w.Namespace+"/"+w.Name,
		"policy", d.Policy, "reason", d.Reason)
	return &DeniedError{Decision: d}
}

// DeniedError is a policy denial; its message is the decision's reason.
type DeniedError struct{ Decision authz.Decision }

func (e *DeniedError) Error() string {
	// The tunnel says "denied: " before this; authz's reasons say it too.
	reason := strings.TrimPrefix(e.Decision.Reason, "denied: ")
	if e.Decision.Policy != "" {
		return fmt.Sprintf("by %s %s: %s", e.Decision.Kind, e.Decision.Policy, reason)
	}
	return reason
}

// Route implements tunnel.Routes: where an outbound connection from a
// captured local pod goes, as ztunnel decides (reference/ztunnel.md §1.8).
// dialled is the Service address the pod dialled when kube-proxy's DNAT
// rewrote it before capture.
func (a *Agent) Route(src, dst, dialled netip.AddrPort) (tunnel.Route, error) {
	s := a.current()
	if s == nil {
		return tunnel.Route{}, errors.New("node: inventory not synced: deny")
	}
	v := s.view
	from, ok := v.localEnrolled(src.Addr())
	if !ok {
		return tunnel.Route{}, fmt.Errorf("node: source %s is not an enrolled pod on node %s: deny", src.Addr(), a.cfg.NodeName)
	}
	// A Service's waypoint sees the Service address, even where kube-proxy
	// picked an endpoint first.
	if svc, ok := v.serviceByAddr(dialled.Addr()); ok && svc.Waypoint != nil {
		if r, ok := v.viaWaypoint(from, svc.Waypoint, "Service "+svc.Namespace+"/"+svc.Name); ok {
			r.Authority = dialled
			return r, nil
		}
	}
	to, ok := v.workload(dst.Addr())
	if !ok {
		if svc, ok := v.serviceByAddr(dst.Addr()); ok {
			return v.serviceRoute(from, svc, dst, a.cfg.hbonePort())
		}
		// Outside the mesh: pass through in plaintext, as Istio does for
		// destinations that do not speak HBONE.
		return tunnel.Route{Mode: tunnel.Passthrough, Src: from.Identity()}, nil
	}
	// A pod's own waypoint, unless the pod was reached through a Service.
	if to.Mesh != nil && to.Mesh.Waypoint != nil && !dialled.IsValid() {
		if r, ok := v.viaWaypoint(from, to.Mesh.Waypoint, "pod "+to.Namespace+"/"+to.Name); ok {
			return r, nil
		}
	}
	if !to.Enrolled {
		if to.Local && to.Mesh != nil && to.Mesh.HBONE {
			// istiod says the pod is captured here; this agent has not
			// captured it (yet, or any more): plaintext would skip its
			// policy.
			return tunnel.Route{Mode: tunnel.Deny, Src: from.Identity(), Reason: fmt.Sprintf(
				"pod %s/%s: istiod says it is captured on this node, this agent does not capture it", to.Namespace, to.Name)}, nil
		}
		return tunnel.Route{Mode: tunnel.Passthrough, Src: from.Identity()}, nil
	}
	return tunnel.Route{
		Mode:      tunnel.HBONE,
		Src:       from.Identity(),
		Dst:       to.Identity(),
		HBONEAddr: netip.AddrPortFrom(dst.Addr(), a.cfg.hbonePort()),
	}, nil
}

// dialOut dials dst as the local pod src when capture is on, plainly
// otherwise.
func (a *Agent) dialOut(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if a.redirect != nil {
		return a.redirect.dialOut(ctx, src, dst)
	}
	return dialPlain(ctx, dst)
}

// dialPlain dials dst from an address of the node.
func dialPlain(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{KeepAliveConfig: redirect.KeepAlive}
	return d.DialContext(ctx, "tcp", dst.String())
}

// dialPod dials a local pod for inbound delivery, from the client's own
// address when capture is on, so the pod sees the real client IP.
func (a *Agent) dialPod(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	if a.redirect != nil {
		return a.redirect.dialIn(ctx, src, dst)
	}
	return dialPlain(ctx, dst)
}

// dialHBONE dials a peer agent's HBONE port, from the source pod's address
// when capture is on; a pod of this node is reached in process.
func (a *Agent) dialHBONE(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if a.Local(dst.Addr()) {
		return a.local.dial(ctx, src, dst)
	}
	return a.dialOut(ctx, src, dst)
}

// dialPassthrough dials a destination outside the mesh, from the pod's own
// address unless the destination is an address of this node: a transparent
// dial to a local address would be captured again by the sk_lookup program
// (its source is an enrolled pod) and loop back into the agent.
func (a *Agent) dialPassthrough(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	if a.redirect != nil && a.pods == nil && isLocalAddr(dst.Addr()) {
		return dialPlain(ctx, dst)
	}
	return a.dialOut(ctx, src.Addr(), dst)
}

func (a *Agent) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	h := promhttp.HandlerFor(a.metrics.Registry, promhttp.HandlerOpts{})
	mux.Handle("/metrics", h)
	mux.Handle("/stats/prometheus", h)
	return mux
}

func (a *Agent) readinessHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/healthz/ready", a.ready)
	return mux
}

// serveHTTP serves h on ln until ctx is done, then shuts down gracefully.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler) error {
	return runHTTPServer(ctx, ln, &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	})
}

// listeners are the agent's sockets. With --capture pod, outbound, inbound
// and hbone are the fan-ins of the pods' listeners, and cni is the CNI
// plugin's socket.
type listeners struct {
	outbound, inbound, hbone  net.Listener
	admin, metrics, readiness net.Listener
	cni                       net.Listener
	once                      sync.Once
}

func (l *listeners) close() {
	l.once.Do(func() {
		for _, c := range []net.Listener{l.outbound, l.inbound, l.hbone, l.admin, l.metrics, l.readiness, l.cni} {
			if c != nil {
				c.Close()
			}
		}
	})
}
