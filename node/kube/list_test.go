package kube

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// pagedPods answers pod lists as a kube-apiserver with a watch cache does
// when it cannot stream the initial list (its etcd lacks progress
// notifications): a watch with sendInitialEvents is refused, a list from
// resourceVersion "0" comes whole whatever its limit, and any other list
// comes in pages of at most limit pods. It records every list's options.
type pagedPods struct {
	pods []corev1.Pod

	mu    sync.Mutex
	lists []metav1.ListOptions
}

func (p *pagedPods) list(_ context.Context, o metav1.ListOptions) (*corev1.PodList, error) {
	p.mu.Lock()
	p.lists = append(p.lists, o)
	p.mu.Unlock()
	from := 0
	if o.Continue != "" {
		from, _ = strconv.Atoi(o.Continue)
	}
	to := len(p.pods)
	if o.ResourceVersion != "0" && o.Limit > 0 {
		to = min(to, from+int(o.Limit))
	}
	out := &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: "100"}, Items: p.pods[from:to]}
	if to < len(p.pods) {
		out.Continue = strconv.Itoa(to)
	}
	return out, nil
}

func (p *pagedPods) watch(_ context.Context, o metav1.ListOptions) (watch.Interface, error) {
	if o.SendInitialEvents != nil {
		return nil, apierrors.NewBadRequest("a watch stream was requested by the client but the required storage feature RequestWatchProgress is disabled")
	}
	return watch.NewFake(), nil
}

// TestPodListFallsBackToPages runs client-go's reflector on the pod
// informer's ListerWatcher against an API server that cannot stream: the
// reflector falls back to listing, which must come in pages (not from
// resourceVersion "0", which the watch cache answers whole) and reach the
// store as podInfos.
func TestPodListFallsBackToPages(t *testing.T) {
	const n = 1200
	api := &pagedPods{}
	for i := range n {
		api.pods = append(api.pods, *fullPod(i))
	}
	s := &Source{log: slog.New(slog.DiscardHandler)}
	tr := &transformer{}
	lw := s.listWatcher("pods", nil,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			list, err := api.list(ctx, o)
			if err != nil {
				return nil, err
			}
			return compactPods(list, tr.pod)
		}, api.watch)
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	r := cache.NewReflectorWithOptions(lw, &corev1.Pod{}, store, cache.ReflectorOptions{})

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { r.RunWithContext(ctx) })
	defer wg.Wait()
	defer cancel()
	deadline := time.Now().Add(10 * time.Second)
	for len(store.ListKeys()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("store holds %d pods, want %d", len(store.ListKeys()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	wg.Wait()

	for _, obj := range store.List() {
		if _, ok := obj.(*podInfo); !ok {
			t.Fatalf("store holds a %T, want *podInfo", obj)
		}
	}
	api.mu.Lock()
	defer api.mu.Unlock()
	if len(api.lists) != 3 {
		t.Fatalf("%d list requests, want 3 pages of at most 500: %+v", len(api.lists), api.lists)
	}
	for i, o := range api.lists {
		if o.ResourceVersion != "" || o.Limit != 500 {
			t.Errorf("list %d: resourceVersion %q, limit %d; want \"\" and 500", i, o.ResourceVersion, o.Limit)
		}
	}
}

// TestListWatcherKeepsOtherLists checks that only the reflector's first,
// paged list from resourceVersion "0" is asked from "" instead.
func TestListWatcherKeepsOtherLists(t *testing.T) {
	for _, o := range []metav1.ListOptions{
		{ResourceVersion: "0"},              // no limit: nothing to page
		{ResourceVersion: "42", Limit: 500}, // a relist from a known version
		{ResourceVersion: "0", Limit: 500, ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan},
		{Limit: 500, Continue: "next"},
	} {
		var got metav1.ListOptions
		lw := (&Source{log: slog.New(slog.DiscardHandler)}).listWatcher("pods", nil,
			func(_ context.Context, o metav1.ListOptions) (runtime.Object, error) {
				got = o
				return &corev1.PodList{}, nil
			}, nil)
		if _, err := lw.(cache.ListerWatcherWithContext).ListWithContext(t.Context(), o); err != nil {
			t.Fatal(err)
		}
		if got != o {
			t.Errorf("list %+v sent as %+v", o, got)
		}
	}
}
