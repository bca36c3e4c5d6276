package xds

import (
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
)

// TestBook: after batches of puts and drops, small (merged in place) and
// large (merged anew), the book finds each resource held, counts them and
// lists them in name order, before a merge and after it.
func TestBook(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	var b book
	held := map[string]*resource{}
	check := func(step int) {
		t.Helper()
		var got []string
		for r := range b.all {
			if held[r.name] != r {
				t.Fatalf("step %d: %s listed, not as held", step, r.name)
			}
			got = append(got, r.name)
		}
		if want := slices.Sorted(maps.Keys(held)); !slices.Equal(got, want) || b.len() != len(want) {
			t.Fatalf("step %d: listed %d %v, want %v", step, b.len(), got, want)
		}
		for i := range 300 {
			name := "r" + strconv.Itoa(i)
			if r, ok := b.get(name); r != held[name] || ok != (held[name] != nil) {
				t.Fatalf("step %d: get(%s) = %v, %v", step, name, r, ok)
			}
		}
	}
	for step := range 200 {
		for range []int{1, 3, 10, 100}[rnd.IntN(4)] {
			name := "r" + strconv.Itoa(rnd.IntN(300))
			if rnd.IntN(3) == 0 {
				b.drop(name)
				delete(held, name)
			} else {
				held[name] = &resource{name: name}
				b.put(held[name])
			}
		}
		check(step)
		touched := b.merge()
		if len(b.pending) != 0 || len(touched) == 0 {
			t.Fatalf("step %d: merged with %d pending, %d touched", step, len(b.pending), len(touched))
		}
		check(step)
	}
}
