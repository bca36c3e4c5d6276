package inventory

import (
	"iter"
	"slices"
	"strings"
	"unique"
)

// Intern returns the canonical copy of s, so the strings that repeat across
// a cluster's pods (namespaces, service accounts, nodes, policy names)
// share one copy however many pods name them.
func Intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

// Names is a list of names that many pods share (the policies istiod binds
// to a deployment's pods, the Services selecting them), held once per
// distinct list: a pod holds a handle, not a slice of its own. The zero
// value is the empty list.
type Names struct{ h unique.Handle[string] }

// namesSep cannot occur in a Kubernetes name or a DNS hostname.
const namesSep = "\x00"

// MakeNames returns the list of names, in the order given.
func MakeNames(names ...string) Names {
	if len(names) == 0 {
		return Names{}
	}
	return Names{unique.Make(strings.Join(names, namesSep))}
}

// All yields the names in order.
func (n Names) All() iter.Seq[string] {
	if n == (Names{}) {
		return func(func(string) bool) {}
	}
	return strings.SplitSeq(n.h.Value(), namesSep)
}

// Slice returns the names in a slice of their own (nil when empty).
func (n Names) Slice() []string { return slices.Collect(n.All()) }

// Contains reports whether name is in the list.
func (n Names) Contains(name string) bool {
	for s := range n.All() {
		if s == name {
			return true
		}
	}
	return false
}
