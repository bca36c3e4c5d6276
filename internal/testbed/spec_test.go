package testbed

import (
	"slices"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	s, err := ParseSpec(strings.NewReader(`# two nodes
namespace foo istio.io/dataplane-mode=ambient
pod foo/a node1 sa=alpha app=a
pod foo/b node2 istio.io/dataplane-mode=none
pod legacy/c node2
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.maxNode(); got != 2 {
		t.Errorf("maxNode = %d, want 2", got)
	}
	if !slices.ContainsFunc(s.Namespaces, func(n Namespace) bool { return n.Name == "legacy" && len(n.Labels) == 0 }) {
		t.Errorf("undeclared namespace legacy missing: %+v", s.Namespaces)
	}
	for _, tc := range []struct {
		pod      int
		sa       string
		enrolled bool
	}{{0, "alpha", true}, {1, "default", false}, {2, "default", false}} {
		p := s.Pods[tc.pod]
		if p.ServiceAccount != tc.sa || s.enrolled(p) != tc.enrolled {
			t.Errorf("pod %s: sa %s enrolled %v, want %s %v", p.Name, p.ServiceAccount, s.enrolled(p), tc.sa, tc.enrolled)
		}
	}
	for _, bad := range []string{
		"",
		"pod foo node1",
		"pod foo/a nodeX",
		"pod foo/a node1 sa=Bad_SA",
		"namespace Foo",
		"service foo",
		"pod foo/a node1\npod foo/a node2",
	} {
		if _, err := ParseSpec(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseSpec(%q) accepted it", bad)
		}
	}
}

func TestDefaultSpec(t *testing.T) {
	s := DefaultSpec(2, 3)
	if err := s.check(); err != nil {
		t.Fatal(err)
	}
	var enrolled []string
	for _, p := range s.Pods {
		if s.enrolled(p) {
			enrolled = append(enrolled, p.Namespace+"/"+p.Name)
		}
	}
	want := []string{"mesh/app-1-1", "mesh/app-1-3", "mesh/app-2-1", "mesh/app-2-3"}
	if !slices.Equal(enrolled, want) || len(s.Pods) != 6 {
		t.Errorf("enrolled %v of %d pods, want %v of 6", enrolled, len(s.Pods), want)
	}
}
