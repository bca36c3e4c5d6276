package xds

import (
	"maps"
	"slices"
	"strings"
)

// book holds one type's resources in name order. A cluster's 100,000
// workloads live in one sorted slice, not in a map beside it (a map entry
// costs more than the pointer it holds); the few changed since the last
// snapshot wait in pending until the snapshot merges them.
type book struct {
	sorted []*resource // in name order, as of the last merge
	// pending are the resources put (or, nil, dropped) since.
	pending map[string]*resource
	n       int // resources held, pending ones counted
}

// get returns the resource held as name.
func (b *book) get(name string) (*resource, bool) {
	if r, ok := b.pending[name]; ok {
		return r, r != nil
	}
	if i, ok := b.search(name); ok {
		return b.sorted[i], true
	}
	return nil, false
}

func (b *book) search(name string) (int, bool) {
	return slices.BinarySearchFunc(b.sorted, name, func(r *resource, name string) int { return strings.Compare(r.name, name) })
}

// put holds r under its name, in place of any resource of that name.
func (b *book) put(r *resource) {
	if _, held := b.get(r.name); !held {
		b.n++
	}
	b.change(r.name, r)
}

// drop forgets the resource of name, if held.
func (b *book) drop(name string) {
	if _, held := b.get(name); held {
		b.n--
	}
	b.change(name, nil)
}

func (b *book) change(name string, r *resource) {
	if b.pending == nil {
		b.pending = map[string]*resource{}
	}
	b.pending[name] = r
}

// len is the number of resources held.
func (b *book) len() int { return b.n }

// all calls yield with each resource in name order.
func (b *book) all(yield func(*resource) bool) {
	i, names := 0, slices.Sorted(maps.Keys(b.pending))
	for _, r := range b.sorted {
		for ; i < len(names) && names[i] < r.name; i++ {
			if p := b.pending[names[i]]; p != nil && !yield(p) {
				return
			}
		}
		if i < len(names) && names[i] == r.name {
			r = b.pending[names[i]]
			i++
		}
		if r != nil && !yield(r) {
			return
		}
	}
	for ; i < len(names); i++ {
		if p := b.pending[names[i]]; p != nil && !yield(p) {
			return
		}
	}
}

// merge puts the pending changes into the sorted slice and returns the
// names they touched.
func (b *book) merge() map[string]*resource {
	touched := b.pending
	if len(touched) == 0 {
		return nil
	}
	if len(touched) > 64 {
		sorted := make([]*resource, 0, b.n)
		for r := range b.all {
			sorted = append(sorted, r)
		}
		b.sorted = sorted
	} else {
		for name, r := range touched {
			switch i, found := b.search(name); {
			case r != nil && found:
				b.sorted[i] = r
			case r != nil:
				b.sorted = slices.Insert(b.sorted, i, r)
			case found:
				b.sorted = slices.Delete(b.sorted, i, i+1)
			}
		}
	}
	b.pending = nil
	return touched
}
