package node

import (
	"hash/maphash"
	"iter"
	"math/bits"
	"net/netip"
	"slices"
)

// pmap is a persistent hash map (a hash array mapped trie): a changed
// version shares all but the path to the changed key with the one it came
// from, so the view can change one pod of a cluster of 100,000 in time that
// grows with the depth of the trie (log32 of its size), where a Go map would
// have to be copied whole to leave its readers the old version.
//
// A pmap is a value, never modified once built: readers may share it
// freely. Its zero value is not usable; newPmap makes an empty one. Change
// one through a pmapTxn (edit), which copies the nodes it touches the first
// time and changes its own copies in place after that, so a batch of
// changes (or a whole build) copies each node once.
type pmap[K comparable, V any] struct {
	root *pnode[K, V]
	n    int
	hash func(K) uint64
}

// pnode is a trie node (a CHAMP node: Steindorfer and Vinju, "Optimizing
// hash-array mapped tries for fast and lean immutable JVM collections").
// Of the 32 slots that 5 bits of the hash at its depth name, those
// datamap marks hold one key each, in data, and those nodemap marks a
// subtrie, in nodes, both in slot order. The nodes near the root then hold
// only pointers, and a change copies little. Past the hash's last bits (a
// full collision) a node lists its keys in data in any order.
type pnode[K comparable, V any] struct {
	datamap, nodemap uint32
	data             []pentry[K, V]
	nodes            []*pnode[K, V]
	// txn is the pmapTxn that made the node, the only one that may change
	// it in place.
	txn *pmapTxn[K, V]
}

// pentry is a key and its value. (Keys' hashes are not kept: they are
// computed again when two keys come to share a slot, and entries stay
// small.)
type pentry[K comparable, V any] struct {
	key K
	val V
}

const (
	pmapBits     = 5
	pmapMaxShift = 64 // at this shift, nodes are collision lists
)

// newPmap returns an empty map whose keys hash with hash.
func newPmap[K comparable, V any](hash func(K) uint64) pmap[K, V] {
	return pmap[K, V]{hash: hash}
}

// comparableHash returns a hash function for K with a seed of its own.
func comparableHash[K comparable]() func(K) uint64 {
	seed := maphash.MakeSeed()
	return func(k K) uint64 { return maphash.Comparable(seed, k) }
}

// stringHash and addrHash are faster than comparableHash for their types.
func stringHash() func(string) uint64 {
	seed := maphash.MakeSeed()
	return func(k string) uint64 { return maphash.String(seed, k) }
}

func addrHash() func(netip.Addr) uint64 {
	seed := maphash.MakeSeed()
	return func(k netip.Addr) uint64 {
		b := k.As16()
		if k.Zone() != "" {
			return maphash.String(seed, k.String())
		}
		return maphash.Bytes(seed, b[:])
	}
}

// Len returns the number of keys.
func (m pmap[K, V]) Len() int { return m.n }

// Get returns the value of k.
func (m pmap[K, V]) Get(k K) (V, bool) {
	var zero V
	n := m.root
	if n == nil {
		return zero, false
	}
	h := m.hash(k)
	for shift := uint(0); ; shift += pmapBits {
		if shift >= pmapMaxShift {
			for i := range n.data {
				if n.data[i].key == k {
					return n.data[i].val, true
				}
			}
			return zero, false
		}
		bit := uint32(1) << ((h >> shift) & 31)
		switch {
		case n.datamap&bit != 0:
			if e := &n.data[index(n.datamap, bit)]; e.key == k {
				return e.val, true
			}
			return zero, false
		case n.nodemap&bit != 0:
			n = n.nodes[index(n.nodemap, bit)]
		default:
			return zero, false
		}
	}
}

// index is the position of slot bit among those bitmap marks.
func index(bitmap, bit uint32) int { return bits.OnesCount32(bitmap & (bit - 1)) }

// All yields every key and value, in no particular order.
func (m pmap[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		if m.root != nil {
			m.root.all(yield)
		}
	}
}

func (n *pnode[K, V]) all(yield func(K, V) bool) bool {
	for i := range n.data {
		if !yield(n.data[i].key, n.data[i].val) {
			return false
		}
	}
	for _, c := range n.nodes {
		if !c.all(yield) {
			return false
		}
	}
	return true
}

// pmapTxn changes a pmap. Done returns the result; the pmap edit was called
// on is left as it was. A pmapTxn is not safe for concurrent use, and must
// not be used after Done.
type pmapTxn[K comparable, V any] struct {
	m pmap[K, V]
}

// edit starts changing m.
func (m pmap[K, V]) edit() *pmapTxn[K, V] { return &pmapTxn[K, V]{m: m} }

// Done returns the map with the changes made.
func (t *pmapTxn[K, V]) Done() pmap[K, V] {
	m := t.m
	t.m = pmap[K, V]{}
	return m
}

// Get returns k's value as changed so far.
func (t *pmapTxn[K, V]) Get(k K) (V, bool) { return t.m.Get(k) }

// own returns n, or a copy of it the transaction may change in place.
func (t *pmapTxn[K, V]) own(n *pnode[K, V]) *pnode[K, V] {
	if n.txn == t {
		return n
	}
	return &pnode[K, V]{datamap: n.datamap, nodemap: n.nodemap, data: slices.Clone(n.data), nodes: slices.Clone(n.nodes), txn: t}
}

// Set sets k's value to v.
func (t *pmapTxn[K, V]) Set(k K, v V) {
	if t.m.root == nil {
		t.m.root = &pnode[K, V]{txn: t}
	}
	var added bool
	t.m.root, added = t.set(t.m.root, 0, t.m.hash(k), k, v)
	if added {
		t.m.n++
	}
}

func (t *pmapTxn[K, V]) set(n *pnode[K, V], shift uint, h uint64, k K, v V) (*pnode[K, V], bool) {
	if shift >= pmapMaxShift {
		for i := range n.data {
			if n.data[i].key == k {
				n = t.own(n)
				n.data[i].val = v
				return n, false
			}
		}
		n = t.own(n)
		n.data = append(n.data, pentry[K, V]{k, v})
		return n, true
	}
	bit := uint32(1) << ((h >> shift) & 31)
	switch {
	case n.datamap&bit != 0:
		i := index(n.datamap, bit)
		e := n.data[i]
		if e.key == k {
			n = t.own(n)
			n.data[i].val = v
			return n, false
		}
		// Two keys in one slot: a subtrie holds both.
		child := t.pair(shift+pmapBits, t.m.hash(e.key), e, h, pentry[K, V]{k, v})
		n = t.own(n)
		n.data = slices.Delete(n.data, i, i+1)
		n.datamap &^= bit
		n.nodes = slices.Insert(n.nodes, index(n.nodemap, bit), child)
		n.nodemap |= bit
		return n, true
	case n.nodemap&bit != 0:
		i := index(n.nodemap, bit)
		child, added := t.set(n.nodes[i], shift+pmapBits, h, k, v)
		if child != n.nodes[i] {
			n = t.own(n)
			n.nodes[i] = child
		}
		return n, added
	}
	n = t.own(n)
	n.data = slices.Insert(n.data, index(n.datamap, bit), pentry[K, V]{k, v})
	n.datamap |= bit
	return n, true
}

// pair makes the subtrie at shift holding a and b, whose hashes are ha and hb.
func (t *pmapTxn[K, V]) pair(shift uint, ha uint64, a pentry[K, V], hb uint64, b pentry[K, V]) *pnode[K, V] {
	if shift >= pmapMaxShift {
		return &pnode[K, V]{data: []pentry[K, V]{a, b}, txn: t}
	}
	ba, bb := uint32(1)<<((ha>>shift)&31), uint32(1)<<((hb>>shift)&31)
	switch {
	case ba == bb:
		return &pnode[K, V]{nodemap: ba, nodes: []*pnode[K, V]{t.pair(shift+pmapBits, ha, a, hb, b)}, txn: t}
	case ba < bb:
		return &pnode[K, V]{datamap: ba | bb, data: []pentry[K, V]{a, b}, txn: t}
	}
	return &pnode[K, V]{datamap: ba | bb, data: []pentry[K, V]{b, a}, txn: t}
}

// Delete removes k.
func (t *pmapTxn[K, V]) Delete(k K) {
	if t.m.root == nil {
		return
	}
	root, removed := t.del(t.m.root, 0, t.m.hash(k), k)
	if removed {
		t.m.n--
		if root == nil {
			root = &pnode[K, V]{txn: t}
		}
		t.m.root = root
	}
}

// del removes k under n. It returns the node that replaces n: nil when
// none is left; a node of one key and no subtrie, which the parent takes in
// place of the subtrie, keeping the trie as shallow as its keys need.
func (t *pmapTxn[K, V]) del(n *pnode[K, V], shift uint, h uint64, k K) (*pnode[K, V], bool) {
	if shift >= pmapMaxShift {
		i := slices.IndexFunc(n.data, func(e pentry[K, V]) bool { return e.key == k })
		switch {
		case i < 0:
			return n, false
		case len(n.data) == 1:
			return nil, true
		}
		n = t.own(n)
		n.data = slices.Delete(n.data, i, i+1)
		return n, true
	}
	bit := uint32(1) << ((h >> shift) & 31)
	switch {
	case n.datamap&bit != 0:
		i := index(n.datamap, bit)
		if n.data[i].key != k {
			return n, false
		}
		if len(n.data) == 1 && len(n.nodes) == 0 {
			return nil, true
		}
		n = t.own(n)
		n.data = slices.Delete(n.data, i, i+1)
		n.datamap &^= bit
		return n, true
	case n.nodemap&bit != 0:
		i := index(n.nodemap, bit)
		child, removed := t.del(n.nodes[i], shift+pmapBits, h, k)
		if !removed {
			return n, false
		}
		n = t.own(n)
		switch {
		case child == nil:
			n.nodes = slices.Delete(n.nodes, i, i+1)
			n.nodemap &^= bit
			if len(n.data) == 0 && len(n.nodes) == 0 {
				return nil, true
			}
		case len(child.data) == 1 && len(child.nodes) == 0:
			// The subtrie is down to one key: it moves up here.
			n.nodes = slices.Delete(n.nodes, i, i+1)
			n.nodemap &^= bit
			n.data = slices.Insert(n.data, index(n.datamap, bit), child.data[0])
			n.datamap |= bit
		default:
			n.nodes[i] = child
		}
		return n, true
	}
	return n, false
}

// pmapOf returns a map of the keys and values that entries yields, the last
// value of a key yielded twice winning (and dup, unless nil, called with
// that key once), faster than setting them one by one: it sorts them into
// their slots, level by level, and builds each node once.
func pmapOf[K comparable, V any](hash func(K) uint64, size int, entries iter.Seq2[K, V], dup func(K)) pmap[K, V] {
	b := pmapBuilder[K, V]{es: make([]pentry[K, V], 0, size), hs: make([]uint64, 0, size), dup: dup}
	for k, v := range entries {
		b.es = append(b.es, pentry[K, V]{k, v})
		b.hs = append(b.hs, hash(k))
	}
	idx, scratch := make([]int32, len(b.es)), make([]int32, len(b.es))
	for i := range idx {
		idx[i] = int32(i)
	}
	m := pmap[K, V]{hash: hash, root: b.node(idx, scratch, 0)}
	for range m.All() {
		m.n++
	}
	return m
}

// pmapBuilder builds a trie from entries es with hashes hs, sorting their
// indexes (no pointers to move).
type pmapBuilder[K comparable, V any] struct {
	es  []pentry[K, V]
	hs  []uint64
	dup func(K)
}

// node builds the node at shift holding the entries idx names, in that
// order (the later of two alike wins); scratch is as long as idx.
func (b *pmapBuilder[K, V]) node(idx, scratch []int32, shift uint) *pnode[K, V] {
	n := &pnode[K, V]{}
	if shift >= pmapMaxShift {
		var dups []K
		for _, x := range idx {
			e := b.es[x]
			if i := slices.IndexFunc(n.data, func(d pentry[K, V]) bool { return d.key == e.key }); i >= 0 {
				if b.dup != nil && !slices.Contains(dups, e.key) {
					dups = append(dups, e.key)
					b.dup(e.key)
				}
				n.data[i] = e
			} else {
				n.data = append(n.data, e)
			}
		}
		return n
	}
	slot := func(x int32) uint64 { return (b.hs[x] >> shift) & 31 }
	// A stable sort by slot, into scratch: counting for many, insertion
	// for few.
	if len(idx) > 16 {
		var start [33]int
		for _, x := range idx {
			start[slot(x)+1]++
		}
		for i := 1; i < len(start); i++ {
			start[i] += start[i-1]
		}
		for _, x := range idx {
			scratch[start[slot(x)]] = x
			start[slot(x)]++
		}
	} else {
		copy(scratch, idx)
		for i := 1; i < len(scratch); i++ {
			for j := i; j > 0 && slot(scratch[j]) < slot(scratch[j-1]); j-- {
				scratch[j], scratch[j-1] = scratch[j-1], scratch[j]
			}
		}
	}
	// Each run of one slot is a key (perhaps given more than once) or a
	// subtrie.
	type run struct {
		i, j   int
		single bool
	}
	var runsBuf [32]run
	runs := runsBuf[:0]
	for i := 0; i < len(scratch); {
		j := i + 1
		for j < len(scratch) && slot(scratch[j]) == slot(scratch[i]) {
			j++
		}
		last := scratch[j-1]
		single := !slices.ContainsFunc(scratch[i:j], func(x int32) bool { return b.hs[x] != b.hs[last] || b.es[x].key != b.es[last].key })
		runs = append(runs, run{i, j, single})
		if single {
			n.datamap |= 1 << slot(scratch[i])
		} else {
			n.nodemap |= 1 << slot(scratch[i])
		}
		i = j
	}
	n.data = make([]pentry[K, V], 0, bits.OnesCount32(n.datamap))
	n.nodes = make([]*pnode[K, V], 0, bits.OnesCount32(n.nodemap))
	for _, r := range runs {
		if !r.single {
			n.nodes = append(n.nodes, b.node(scratch[r.i:r.j], idx[r.i:r.j], shift+pmapBits))
			continue
		}
		n.data = append(n.data, b.es[scratch[r.j-1]])
		if r.j-r.i > 1 && b.dup != nil {
			b.dup(b.es[scratch[r.i]].key)
		}
	}
	return n
}
