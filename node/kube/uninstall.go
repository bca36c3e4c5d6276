package kube

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// UninstallWatch tells an agent stopping on SIGTERM whether Ferry is being
// uninstalled: the DaemonSet that owns its pod (by name) is gone or being
// deleted, and none by that name has been created since.
// Then the agent removes its kernel objects, as `ferry cleanup` would; on
// every other stop (a rolling update, a restart, a node drain) it leaves
// them for its successor, and enrolled pods fail closed meanwhile.
//
// It watches the DaemonSet for the agent's lifetime rather than asking at
// SIGTERM: by then an uninstall may have deleted the agent's service
// account, and its token with it. Whatever it cannot tell reads as "not
// uninstalling" (keep the objects: fail closed).
type UninstallWatch struct {
	deleted atomic.Bool
	synced  chan struct{} // closed once the watch has listed (tests wait on it)
	handled atomic.Int64  // events about the DaemonSet taken (tests wait on them)
}

// WatchUninstall starts watching the DaemonSet that owns pod namespace/name
// until ctx ends. A pod without one (an agent run by hand) is never
// uninstalled this way.
func WatchUninstall(ctx context.Context, c Client, namespace, name string, log *slog.Logger) *UninstallWatch {
	w := &UninstallWatch{synced: make(chan struct{})}
	go w.run(ctx, c, namespace, name, log)
	return w
}

// Uninstalling reports whether the owning DaemonSet was deleted.
func (w *UninstallWatch) Uninstalling() bool { return w.deleted.Load() }

func (w *UninstallWatch) run(ctx context.Context, c Client, namespace, name string, log *slog.Logger) {
	var ds string
	for ds == "" {
		pod, err := c.Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			ref := metav1.GetControllerOf(pod)
			if ref == nil || ref.Kind != "DaemonSet" {
				log.Info("agent pod has no DaemonSet: SIGTERM keeps the capture state", "pod", namespace+"/"+name)
				return
			}
			ds = ref.Name
			break
		}
		log.Warn("reading the agent's own pod, retrying", "pod", namespace+"/"+name, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
	byName := fields.OneTermEqualSelector("metadata.name", ds).String()
	inf := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = byName
			return c.DaemonSets(namespace).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = byName
			return c.DaemonSets(namespace).Watch(ctx, o)
		},
	}, c), &appsv1.DaemonSet{}, 0, cache.Indexers{})
	// The handlers check the name too: the field selector is the API
	// server's to apply, and this decision removes the capture state.
	ours := func(obj any) (*appsv1.DaemonSet, bool) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		d, ok := obj.(*appsv1.DaemonSet)
		return d, ok && d.Name == ds
	}
	seen := func(obj any) {
		d, ok := ours(obj)
		switch {
		case !ok:
		case d.DeletionTimestamp != nil:
			w.set(log, ds, "being deleted")
		case w.deleted.Swap(false):
			// Deleted and created again (kubectl replace --force, a
			// delete-and-reinstall upgrade): the new one's agent takes over.
			log.Info("the agent's DaemonSet exists again: the agent will keep its capture state when it stops", "daemonset", ds)
		}
		if ok {
			w.handled.Add(1)
		}
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    seen,
		UpdateFunc: func(_, obj any) { seen(obj) },
		DeleteFunc: func(obj any) {
			if _, ok := ours(obj); ok {
				w.set(log, ds, "deleted")
				w.handled.Add(1)
			}
		},
	})
	if err != nil {
		log.Warn("watching the agent's DaemonSet", "err", err)
		return
	}
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			close(w.synced)
		}
	}()
	inf.RunWithContext(ctx)
}

func (w *UninstallWatch) set(log *slog.Logger, ds, what string) {
	if !w.deleted.Swap(true) {
		log.Info("the agent's DaemonSet was "+what+": Ferry is being uninstalled, the agent will remove its capture state when it stops", "daemonset", ds)
	}
}
