package kube

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"k8s.io/client-go/tools/cache"
)

// podStore is the pod reflector's store: Ferry's form of every pod that has
// not finished (podInfo), in namespace and name order, with the pods changed
// since the last snapshot beside them. An informer would keep a second index
// of the cluster's pods in its own store (a map entry and a key: 76 bytes a
// pod, 7.6 MB at 100k), plus a notification ring kept at its largest (2 MB);
// snapshots are made from the sorted list alone.
type podStore struct {
	transform cache.TransformFunc
	changed   func() // called after each change

	mu     sync.Mutex
	sorted []*podInfo // as of the last take
	// pending are the pods changed since, by "namespace/name"; nil for
	// one gone (or finished).
	pending map[string]*podInfo
	// whole says the store was replaced since the last take: any pod
	// may have changed.
	whole  bool
	synced bool // the first list is in
}

var _ cache.TransformingStore = (*podStore)(nil)

// Transformer implements cache.TransformingStore: the reflector's own
// store, which gathers a streamed initial list, holds podInfos too.
func (s *podStore) Transformer() cache.TransformFunc { return s.transform }

func (s *podStore) info(obj any) (*podInfo, error) {
	o, err := s.transform(obj)
	if err != nil {
		return nil, err
	}
	p, ok := o.(*podInfo)
	if !ok {
		return nil, fmt.Errorf("kube: pod store given %T", obj)
	}
	return p, nil
}

// Add implements cache.ReflectorStore.
func (s *podStore) Add(obj any) error { return s.Update(obj) }

// Update implements cache.ReflectorStore.
func (s *podStore) Update(obj any) error {
	p, err := s.info(obj)
	if err != nil {
		return err
	}
	s.put(p.Namespace+"/"+p.Name, p)
	return nil
}

// Delete implements cache.ReflectorStore.
func (s *podStore) Delete(obj any) error {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return err
	}
	s.put(key, nil)
	return nil
}

// put holds p (nil: none) as the pod named key, unless nothing Ferry reads
// of it changed.
func (s *podStore) put(key string, p *podInfo) {
	if p != nil && p.terminal() {
		p = nil
	}
	s.mu.Lock()
	old := s.get(key)
	if old == p || old != nil && p != nil && old.sameAs(p) {
		s.mu.Unlock()
		return
	}
	if s.pending == nil {
		s.pending = map[string]*podInfo{}
	}
	s.pending[key] = p
	s.mu.Unlock()
	s.changed()
}

func (s *podStore) get(key string) *podInfo {
	if p, ok := s.pending[key]; ok {
		return p
	}
	if i, ok := search(s.sorted, key); ok {
		return s.sorted[i]
	}
	return nil
}

// search finds key ("namespace/name") in pods.
func search(pods []*podInfo, key string) (int, bool) {
	ns, name, _ := strings.Cut(key, "/")
	return slices.BinarySearchFunc(pods, [2]string{ns, name}, func(p *podInfo, k [2]string) int {
		return cmp.Or(cmp.Compare(p.Namespace, k[0]), cmp.Compare(p.Name, k[1]))
	})
}

// Replace implements cache.ReflectorStore: the reflector's list, whole.
func (s *podStore) Replace(objs []any, _ string) error {
	pods := make([]*podInfo, 0, len(objs))
	for _, obj := range objs {
		p, err := s.info(obj)
		if err != nil {
			return err
		}
		if !p.terminal() {
			pods = append(pods, p)
		}
	}
	slices.SortFunc(pods, comparePods)
	pods = slices.CompactFunc(pods, func(a, b *podInfo) bool { return comparePods(a, b) == 0 })
	s.mu.Lock()
	s.sorted, s.pending, s.whole, s.synced = pods, nil, true, true
	s.mu.Unlock()
	s.changed()
	return nil
}

// Resync implements cache.ReflectorStore; there is nothing to resync.
func (s *podStore) Resync() error { return nil }

func (s *podStore) hasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// take returns the pods as of now, sorted, and the pods changed since the
// last take by "namespace/name" (nil for one gone); whole says the store was
// replaced since, so any pod may have changed, listed or not. The slice is
// the caller's until the next take, which may change it in place.
func (s *podStore) take() (pods []*podInfo, changed map[string]*podInfo, whole bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed, whole = s.pending, s.whole
	s.pending, s.whole = nil, false
	if len(changed) > 64 {
		drop := make([]bool, len(s.sorted))
		for key := range changed {
			if i, ok := search(s.sorted, key); ok {
				drop[i] = true
			}
		}
		next := make([]*podInfo, 0, len(s.sorted)+len(changed))
		for i, p := range s.sorted {
			if !drop[i] {
				next = append(next, p)
			}
		}
		for _, p := range changed {
			if p != nil {
				next = append(next, p)
			}
		}
		slices.SortFunc(next, comparePods)
		s.sorted = next
	} else {
		for _, key := range slices.Sorted(maps.Keys(changed)) {
			p := changed[key]
			switch i, found := search(s.sorted, key); {
			case p != nil && found:
				s.sorted[i] = p
			case p != nil:
				s.sorted = slices.Insert(s.sorted, i, p)
			case found:
				s.sorted = slices.Delete(s.sorted, i, i+1)
			}
		}
	}
	return s.sorted, changed, whole
}
