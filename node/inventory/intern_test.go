package inventory

import (
	"slices"
	"testing"
)

// TestNames: a list keeps its names in order, lists of the same names are
// one handle, and the empty list is the zero value.
func TestNames(t *testing.T) {
	a, b := MakeNames("ns/p2", "ns/p1"), MakeNames(Intern("ns/p2"), "ns/p1")
	if a != b || !slices.Equal(a.Slice(), []string{"ns/p2", "ns/p1"}) {
		t.Errorf("lists %v and %v, want one handle of [ns/p2 ns/p1]", a.Slice(), b.Slice())
	}
	if !a.Contains("ns/p1") || a.Contains("ns/p") || a.Contains("") {
		t.Errorf("Contains: %v", a.Slice())
	}
	if MakeNames() != (Names{}) || (Names{}).Slice() != nil || (Names{}).Contains("") {
		t.Error("the empty list is not the zero value")
	}
	if one := MakeNames("ns/p"); !slices.Equal(one.Slice(), []string{"ns/p"}) || one == a {
		t.Errorf("one name: %v", one.Slice())
	}
}
