package node

import (
	"maps"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"testing"
)

// TestPmapMatchesMap applies random sets and deletes to a pmap and a Go
// map, in transactions of random size, and checks after each that they
// hold the same keys and that every earlier version is unchanged. The
// weak hashes put keys in the same slots and collide whole hashes.
func TestPmapMatchesMap(t *testing.T) {
	hashes := map[string]func(int) uint64{
		"good":      comparableHash[int](),
		"16 values": func(k int) uint64 { return uint64(k%16) * 0x9e3779b97f4a7c15 },
		"one value": func(int) uint64 { return 42 },
		"low bits":  func(k int) uint64 { return uint64(k % 1024) },
	}
	for name, hash := range hashes {
		t.Run(name, func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(1, 2))
			type version struct {
				m    pmap[int, int]
				want map[int]int
			}
			m := newPmap[int, int](hash)
			want := map[int]int{}
			var versions []version
			for range 300 {
				txn := m.edit()
				for range rnd.IntN(40) + 1 {
					k := rnd.IntN(200)
					if rnd.IntN(3) == 0 {
						txn.Delete(k)
						delete(want, k)
					} else {
						v := rnd.Int()
						txn.Set(k, v)
						want[k] = v
					}
					wantV, wantOK := want[k]
					if got, ok := txn.Get(k); ok != wantOK || got != wantV {
						t.Fatalf("in transaction: Get(%d) = %d, %v; want %d, %v", k, got, ok, wantV, wantOK)
					}
				}
				m = txn.Done()
				versions = append(versions, version{m, maps.Clone(want)})
			}
			for i, v := range versions {
				checkPmap(t, strconv.Itoa(i), v.m, v.want)
			}
			// Built at once, from keys given more than once.
			var keys, vals []int
			want = map[int]int{}
			for range 500 {
				k, v := rnd.IntN(300), rnd.Int()
				keys, vals = append(keys, k), append(vals, v)
				want[k] = v
			}
			dups := map[int]int{}
			built := pmapOf(hash, len(keys), func(yield func(int, int) bool) {
				for i := range keys {
					if !yield(keys[i], vals[i]) {
						return
					}
				}
			}, func(k int) { dups[k]++ })
			checkPmap(t, "built", built, want)
			wantDups := map[int]int{}
			seen := map[int]bool{}
			for _, k := range keys {
				if seen[k] {
					wantDups[k] = 1
				}
				seen[k] = true
			}
			if !maps.Equal(dups, wantDups) {
				t.Errorf("dup called for %v, want once for each of %v", dups, wantDups)
			}
			txn := built.edit()
			for k := range 300 {
				if k%2 == 0 {
					txn.Delete(k)
					delete(want, k)
				}
			}
			checkPmap(t, "built, then half deleted", txn.Done(), want)
		})
	}
}

func checkPmap[K comparable, V comparable](t *testing.T, name string, m pmap[K, V], want map[K]V) {
	t.Helper()
	if m.Len() != len(want) {
		t.Fatalf("version %s: Len = %d, want %d", name, m.Len(), len(want))
	}
	got := map[K]V{}
	for k, v := range m.All() {
		if _, dup := got[k]; dup {
			t.Fatalf("version %s: All yields %v twice", name, k)
		}
		got[k] = v
	}
	if !maps.Equal(got, want) {
		t.Fatalf("version %s: All = %v, want %v", name, got, want)
	}
	for k, v := range want {
		if g, ok := m.Get(k); !ok || g != v {
			t.Fatalf("version %s: Get(%v) = %v, %v; want %v", name, k, g, ok, v)
		}
	}
	var zero K
	if _, ok := want[zero]; !ok {
		if _, ok := m.Get(zero); ok {
			t.Fatalf("version %s: Get(%v) found a key never set", name, zero)
		}
	}
}

// TestPmapShrinks checks that deleting every key leaves no subtries behind.
func TestPmapShrinks(t *testing.T) {
	m := newPmap[netip.Addr, int](addrHash())
	txn := m.edit()
	for i := range 5000 {
		txn.Set(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), i)
	}
	full := txn.Done()
	txn = full.edit()
	for i := range 5000 {
		txn.Delete(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	empty := txn.Done()
	if empty.Len() != 0 || len(empty.root.data)+len(empty.root.nodes) != 0 {
		t.Errorf("after deleting every key: Len %d, root %+v", empty.Len(), empty.root)
	}
	if full.Len() != 5000 {
		t.Errorf("the full version changed: Len %d", full.Len())
	}
}

func BenchmarkPmap(b *testing.B) {
	for _, n := range []int{1000, 100_000} {
		txn := newPmap[netip.Addr, int](addrHash()).edit()
		for i := range n {
			txn.Set(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), i)
		}
		m := txn.Done()
		k := netip.AddrFrom4([4]byte{10, 0, 0, 7})
		b.Run("get/n="+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				m.Get(k)
			}
		})
		b.Run("set/n="+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				txn := m.edit()
				txn.Set(k, 1)
				txn.Done()
			}
		})
	}
}
