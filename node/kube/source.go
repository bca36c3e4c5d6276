package kube

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/node/inventory"
)

// The Istio security resources the Source watches, in group security.istio.io
// version v1.
const (
	authorizationPolicies = "authorizationpolicies"
	peerAuthentications   = "peerauthentications"
)

// Source is an inventory.Source fed by the Kubernetes API: all Pods
// (stripped to the fields Ferry uses, kept by a reflector in a sorted store of
// its own, see podStore), and informers on Namespaces and
// security.istio.io/v1 AuthorizationPolicy and PeerAuthentication.
//
// Run publishes a first snapshot once every one has synced. If the
// Istio CRDs are missing or the agent may not read them, it keeps waiting
// (and logs why) rather than publishing a policy-less snapshot that would
// allow what a policy denies. After that it publishes a whole new snapshot
// after each change, coalescing bursts: at most one per MinInterval, each one
// Coalesce after the change that triggered it. Updates that touch no field
// Ferry uses (a container's restart count, conditions) publish nothing.
//
// Policies are decoded strictly (exact field names; an unknown, duplicate or
// mistyped field is an error). An object whose new version has an error
// keeps its last good version enforced, reported in Snapshot.PolicyProblems;
// one that never was good is published as it is, for authz.Compile to read
// fail-closed; one that cannot be identified is left out and reported in
// Snapshot.Errors. The agent logs each problem.
//
// Pods in phase Succeeded or Failed are left out: their IPs may already
// belong to new pods. Pods without an IP are included, with the zero IP.
//
// Set the exported fields before Run; a Source runs once.
type Source struct {
	client Client
	dyn    dynamic.Interface
	log    *slog.Logger

	// Coalesce is how long Run waits after a change for further changes
	// before it publishes; zero means 100ms.
	Coalesce time.Duration
	// MinInterval is the least time between two snapshots; zero means 1s.
	MinInterval time.Duration
	// NodeOnly, when set, limits the Source to that node's pods and the
	// namespaces, with no Services or policies: in xDS mode istiod sends
	// the rest, so no agent watches every pod of the cluster.
	NodeOnly string
}

// NewSource returns a Source reading from client (pods, namespaces) and dyn
// (the Istio policies). It starts nothing; Run does.
func NewSource(client Client, dyn dynamic.Interface, log *slog.Logger) *Source {
	return &Source{client: client, dyn: dyn, log: log}
}

// Run implements inventory.Source. It returns nil when ctx is done, after its
// reflector and informers have stopped.
func (s *Source) Run(ctx context.Context, publish func(*inventory.Snapshot)) error {
	coalesce := cmp.Or(s.Coalesce, 100*time.Millisecond)
	minInterval := cmp.Or(s.MinInterval, time.Second)

	// The pods' list, when it has to list (see listWatcher), keeps Ferry's
	// copy of each pod as each page arrives: the reflector gathers every
	// page before its store sees one. A reflector has no watch error
	// handler of the agent's, so the pods' list and watch say their own
	// failures.
	tr := &transformer{}
	onNode := func(o *metav1.ListOptions) {
		if s.NodeOnly != "" {
			o.FieldSelector = "spec.nodeName=" + s.NodeOnly
		}
	}
	podsFailed := func(ctx context.Context, err error) {
		if err != nil && ctx.Err() == nil {
			s.log.Warn("kubernetes watch failed, retrying", "resource", "pods", "err", err)
		}
	}
	podsLW := s.listWatcher("pods", s.client,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			onNode(&o)
			list, err := s.client.Pods(metav1.NamespaceAll).List(ctx, o)
			if err != nil {
				podsFailed(ctx, err)
				return nil, err
			}
			return compactPods(list, tr.pod)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			onNode(&o)
			w, err := s.client.Pods(metav1.NamespaceAll).Watch(ctx, o)
			podsFailed(ctx, err)
			return w, err
		})
	namespaces := cache.NewSharedIndexInformer(s.listWatcher("namespaces", s.client,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return s.client.Namespaces().List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return s.client.Namespaces().Watch(ctx, o)
		}), &corev1.Namespace{}, 0, cache.Indexers{})
	services := cache.NewSharedIndexInformer(s.listWatcher("services", s.client,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return s.client.Services(metav1.NamespaceAll).List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return s.client.Services(metav1.NamespaceAll).Watch(ctx, o)
		}), &corev1.Service{}, 0, cache.Indexers{})
	aps := s.policyInformer(authorizationPolicies)
	pas := s.policyInformer(peerAuthentications)

	trigger := make(chan struct{}, 1)
	changed := func() {
		select {
		case trigger <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { changed() },
		UpdateFunc: func(any, any) { changed() },
		DeleteFunc: func(any) { changed() },
	}
	pods := &podStore{transform: tr.pod, changed: changed}
	podReflector := cache.NewReflectorWithOptions(podsLW, &corev1.Pod{}, pods, cache.ReflectorOptions{Name: "pods", TypeDescription: "*v1.Pod"})
	type informer struct {
		name    string
		inf     cache.SharedIndexInformer
		fn      cache.TransformFunc
		handler cache.ResourceEventHandler
	}
	// The policies' handler says they changed: snapshots read them again
	// only then.
	var policiesChanged atomic.Bool
	policyHandler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { policiesChanged.Store(true); changed() },
		UpdateFunc: func(any, any) { policiesChanged.Store(true); changed() },
		DeleteFunc: func(any) { policiesChanged.Store(true); changed() },
	}
	informers := []informer{{"namespaces", namespaces, tr.namespace, handler}}
	if s.NodeOnly == "" {
		informers = append(informers, informer{"services", services, tr.service, handler},
			informer{authorizationPolicies, aps, tr.policy(authz.KindAuthorizationPolicy), policyHandler},
			informer{peerAuthentications, pas, tr.policy(authz.KindPeerAuthentication), policyHandler})
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, i := range informers {
		if err := i.inf.SetTransform(i.fn); err != nil {
			return fmt.Errorf("kube: %s informer: %w", i.name, err)
		}
		if _, err := i.inf.AddEventHandler(i.handler); err != nil {
			return fmt.Errorf("kube: %s informer: %w", i.name, err)
		}
		name := i.name
		if err := i.inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			if ctx.Err() == nil {
				s.log.Warn("kubernetes watch failed, retrying", "resource", name, "err", err)
			}
		}); err != nil {
			return fmt.Errorf("kube: %s informer: %w", i.name, err)
		}
		wg.Go(func() { i.inf.RunWithContext(ctx) })
	}
	wg.Go(func() { podReflector.RunWithContext(ctx) })

	// Services only name connections in metrics and logs: the inventory
	// does not wait for them (nor for their RBAC).
	wait := slices.DeleteFunc(slices.Clone(informers), func(i informer) bool { return i.name == "services" })
	var missing []string
	if !s.waitForSync(ctx, func() []string {
		missing = missing[:0]
		if !pods.hasSynced() {
			missing = append(missing, "pods")
		}
		for _, i := range wait {
			if !i.inf.HasSynced() {
				missing = append(missing, i.name)
			}
		}
		return missing
	}) {
		return nil
	}
	s.log.Info("kubernetes inventory synced")
	var last time.Time
	var book policyBook
	var built published
	for {
		// Everything that happened until now is in this snapshot.
		select {
		case <-trigger:
		default:
		}
		snap := buildSnapshot(&book, &built, pods, policiesChanged.Swap(false), namespaces.GetStore(), services.GetStore(), aps.GetStore(), pas.GetStore())
		s.log.Debug("kubernetes inventory", "namespaces", len(snap.Namespaces), "pods", len(snap.Pods), "services", len(snap.Services),
			"authorizationPolicies", len(snap.AuthorizationPolicies), "peerAuthentications", len(snap.PeerAuthentications),
			"rejected", len(snap.Errors))
		publish(snap)
		last = time.Now()

		select {
		case <-ctx.Done():
			return nil
		case <-trigger:
		}
		wait := coalesce
		if d := time.Until(last.Add(minInterval)); d > wait {
			wait = d
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func (s *Source) policyInformer(resource string) cache.SharedIndexInformer {
	ri := s.dyn.Resource(schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: resource})
	return cache.NewSharedIndexInformer(s.listWatcher(resource, s.dyn,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return ri.Namespace(metav1.NamespaceAll).List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return ri.Namespace(metav1.NamespaceAll).Watch(ctx, o)
		}), &unstructured.Unstructured{}, 0, cache.Indexers{})
}

// listWatcher returns the ListerWatcher of the informer on resource.
//
// Its reflector first tries to stream the initial list (watch-list: a watch
// with sendInitialEvents), which decodes and transforms the objects one at
// a time. ToListWatcherWithWatchListSemantics lets a client that cannot
// stream (a fake) say so; real clients try. An API server without the
// WatchList feature (off by default in 1.33), or whose etcd cannot send
// progress notifications (before 3.4.31 and 3.5.13), refuses the stream and
// the reflector lists instead, from resourceVersion "0" in pages of 500.
// The API server answers that from its watch cache whole, ignoring the
// limit: every object in one response, read and decoded at once (at 100k
// pods, more than a gigabyte of garbage at start-up). So the list here asks
// from resourceVersion "" instead: a consistent read, which the API server
// pages (from its watch cache where it can, else from etcd) and which is at
// least as fresh. It logs once that it lists.
func (s *Source) listWatcher(resource string, client any, lister cache.ListWithContextFunc, watcher cache.WatchFuncWithContext) cache.ListerWatcher {
	var once sync.Once
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			if o.ResourceVersion == "0" && o.ResourceVersionMatch == "" && o.Limit > 0 && o.Continue == "" {
				o.ResourceVersion = ""
				once.Do(func() {
					s.log.Info("kubernetes initial list not streamed (API server without watch-list), listing in pages", "resource", resource)
				})
			}
			return lister(ctx, o)
		},
		WatchFuncWithContext: watcher,
	}, client)
}

// compactPods returns one page of pods as the pod store keeps them
// (transform is its TransformFunc), so that a list gathered page by page
// never holds every whole Pod at once. The page's continue token and
// resource version are kept.
func compactPods(list *corev1.PodList, transform cache.TransformFunc) (*metainternalversion.List, error) {
	out := &metainternalversion.List{ListMeta: list.ListMeta, Items: make([]runtime.Object, 0, len(list.Items))}
	for i := range list.Items {
		obj, err := transform(&list.Items[i])
		if err != nil {
			return nil, err
		}
		o, ok := obj.(runtime.Object)
		if !ok {
			return nil, fmt.Errorf("kube: pod transform returned %T", obj)
		}
		out.Items = append(out.Items, o)
	}
	return out, nil
}

// waitForSync waits until unsynced reports no informer, logging the ones
// still missing every 10 seconds. It returns false if ctx ends first.
func (s *Source) waitForSync(ctx context.Context, unsynced func() []string) bool {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	nextLog := start.Add(10 * time.Second)
	for {
		missing := unsynced()
		if len(missing) == 0 {
			return true
		}
		if now := time.Now(); now.After(nextLog) {
			s.log.Warn("waiting for kubernetes informers to sync (are the security.istio.io CRDs installed, and may the agent list them?)",
				"missing", missing, "waited", now.Sub(start).Round(time.Second))
			nextLog = now.Add(10 * time.Second)
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// published is the last snapshot and what it was built from: the stores'
// objects, by pointer (the stores replace an object that changes).
type published struct {
	snap       *inventory.Snapshot // the next shares its policies while none changed
	namespaces []*corev1.Namespace
	services   []*corev1.Service
}

// buildSnapshot reads the stores into a new Snapshot, policies through
// book, with the pods changed since the one last built (as the pod store
// tells them). The label maps are shared with the stores, which never
// modify an object in place. The policies are read again only when
// policies says a policy informer changed since the last (10k of them are
// 5 MB to list, sort and copy); else the snapshot shares the last one's.
func buildSnapshot(book *policyBook, last *published, pods *podStore, policies bool, namespaces, services, aps, pas cache.Store) *inventory.Snapshot {
	snap := &inventory.Snapshot{Namespaces: map[string]inventory.Namespace{}, Revision: inventory.NewRevision()}
	next := published{snap: snap}
	for _, obj := range namespaces.List() {
		ns, ok := obj.(*corev1.Namespace)
		if !ok {
			continue
		}
		snap.Namespaces[ns.Name] = inventory.Namespace{Name: ns.Name, Labels: ns.Labels}
		next.namespaces = append(next.namespaces, ns)
	}

	podList, changed, whole := pods.take()
	snap.Pods = make([]*inventory.Pod, len(podList))
	for i, p := range podList {
		snap.Pods[i] = &p.Pod
	}

	for _, obj := range services.List() {
		if svc, ok := obj.(*corev1.Service); ok {
			next.services = append(next.services, svc)
		}
	}
	slices.SortFunc(next.services, func(a, b *corev1.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	for _, svc := range next.services {
		snap.Services = append(snap.Services, serviceFromAPI(svc))
	}

	if p := last.snap; p != nil && !policies {
		snap.AuthorizationPolicies, snap.PeerAuthentications, snap.PolicyProblems, snap.Errors, snap.PolicyRevision =
			p.AuthorizationPolicies, p.PeerAuthentications, p.PolicyProblems, p.Errors, p.PolicyRevision
	} else {
		seen := map[types.UID]bool{}
		book.add(snap, authz.KindAuthorizationPolicy, sortedObjects(aps), seen)
		book.add(snap, authz.KindPeerAuthentication, sortedObjects(pas), seen)
		snap.PolicyRevision = book.forget(seen)
	}

	slices.SortFunc(next.namespaces, func(a, b *corev1.Namespace) int { return cmp.Compare(a.Name, b.Name) })
	if !whole && last.snap != nil && slices.Equal(last.namespaces, next.namespaces) && slices.Equal(last.services, next.services) {
		snap.Changes = &inventory.Changes{Since: last.snap.Revision, Pods: make(map[string]*inventory.Pod, len(changed))}
		for key, p := range changed {
			if p != nil {
				snap.Changes.Pods[key] = &p.Pod
			} else {
				snap.Changes.Pods[key] = nil
			}
		}
	}
	*last = next
	return snap
}

func comparePods(a, b *podInfo) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

func sortedObjects(store cache.Store) []*policyObject {
	var out []*policyObject
	for _, obj := range store.List() {
		if o, ok := obj.(*policyObject); ok {
			out = append(out, o)
		}
	}
	slices.SortFunc(out, func(a, b *policyObject) int {
		return cmp.Or(cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.name, b.name))
	})
	return out
}
