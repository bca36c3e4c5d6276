package testbed

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Spec says which namespaces and pods a testbed holds. Its text form, one
// item per line ('#' starts a comment):
//
//	namespace NAME [LABEL=VALUE]...
//	pod NAMESPACE/NAME NODE [sa=SERVICEACCOUNT] [LABEL=VALUE]...
//
// NODE is node1..nodeN. Namespaces that pods use but the spec does not
// declare exist without labels.
type Spec struct {
	Namespaces []Namespace
	Pods       []PodSpec
}

// Namespace is a Kubernetes namespace with its labels, "key=value" each.
type Namespace struct {
	Name   string
	Labels []string
}

// PodSpec is one pod of a Spec. ServiceAccount "" means "default".
type PodSpec struct {
	Namespace, Name string
	Node            string
	ServiceAccount  string
	Labels          []string
}

var (
	nameRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$`)
	labelRE = regexp.MustCompile(`^[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*$`)
	nodeRE  = regexp.MustCompile(`^node([1-9][0-9]*)$`)
)

// DefaultSpec is nodes nodes with pods pods each: namespace "mesh",
// ambient-enrolled, holds the odd-numbered pods, and "plain", not enrolled,
// the even ones.
func DefaultSpec(nodes, pods int) Spec {
	s := Spec{Namespaces: []Namespace{
		{Name: "mesh", Labels: []string{"istio.io/dataplane-mode=ambient"}},
		{Name: "plain"},
	}}
	for k := 1; k <= nodes; k++ {
		for j := 1; j <= pods; j++ {
			ns := "plain"
			if j%2 == 1 {
				ns = "mesh"
			}
			name := fmt.Sprintf("app-%d-%d", k, j)
			s.Pods = append(s.Pods, PodSpec{Namespace: ns, Name: name, Node: fmt.Sprintf("node%d", k),
				ServiceAccount: "app", Labels: []string{"app=" + name}})
		}
	}
	return s
}

// ParseSpec reads a spec in its text form and checks it.
func ParseSpec(r io.Reader) (Spec, error) {
	var s Spec
	sc := bufio.NewScanner(r)
	for lineno := 1; sc.Scan(); lineno++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("testbed: spec line %d: %s", lineno, fmt.Sprintf(format, args...))
		}
		if len(f) < 2 {
			return Spec{}, bad("%s needs a name", f[0])
		}
		switch f[0] {
		case "namespace":
			if !nameRE.MatchString(f[1]) {
				return Spec{}, bad("bad namespace name '%s'", f[1])
			}
			for _, l := range f[2:] {
				if !labelRE.MatchString(l) {
					return Spec{}, bad("bad label '%s'", l)
				}
			}
			s.Namespaces = append(s.Namespaces, Namespace{Name: f[1], Labels: f[2:]})
		case "pod":
			ns, name, ok := strings.Cut(f[1], "/")
			if !ok || !nameRE.MatchString(ns) || !nameRE.MatchString(name) {
				return Spec{}, bad("bad pod '%s' (want NS/NAME)", f[1])
			}
			if len(f) < 3 || !nodeRE.MatchString(f[2]) {
				return Spec{}, bad("bad node (want node<k>)")
			}
			p := PodSpec{Namespace: ns, Name: name, Node: f[2], ServiceAccount: "default"}
			for _, l := range f[3:] {
				if !labelRE.MatchString(l) {
					return Spec{}, bad("bad field '%s'", l)
				}
				if sa, ok := strings.CutPrefix(l, "sa="); ok {
					p.ServiceAccount = sa
				} else {
					p.Labels = append(p.Labels, l)
				}
			}
			if !nameRE.MatchString(p.ServiceAccount) {
				return Spec{}, bad("bad service account '%s'", p.ServiceAccount)
			}
			s.Pods = append(s.Pods, p)
		default:
			return Spec{}, bad("unknown kind '%s' (namespace, pod)", f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return Spec{}, fmt.Errorf("testbed: spec: %w", err)
	}
	return s, s.check()
}

// check validates s and declares the namespaces its pods use.
func (s *Spec) check() error {
	if len(s.Pods) == 0 {
		return errors.New("testbed: spec has no pods")
	}
	seen := map[string]bool{}
	for i, p := range s.Pods {
		if p.ServiceAccount == "" {
			s.Pods[i].ServiceAccount = "default"
		}
		if !nodeRE.MatchString(p.Node) {
			return fmt.Errorf("testbed: pod %s/%s: bad node '%s' (want node<k>)", p.Namespace, p.Name, p.Node)
		}
		if seen[p.Namespace+"/"+p.Name] {
			return errors.New("testbed: spec: duplicate pod names")
		}
		seen[p.Namespace+"/"+p.Name] = true
		if !slices.ContainsFunc(s.Namespaces, func(n Namespace) bool { return n.Name == p.Namespace }) {
			s.Namespaces = append(s.Namespaces, Namespace{Name: p.Namespace})
		}
	}
	return nil
}

// maxNode is the highest k of the nodes s places pods on.
func (s Spec) maxNode() int {
	m := 0
	for _, p := range s.Pods {
		k, _ := strconv.Atoi(nodeRE.FindStringSubmatch(p.Node)[1])
		m = max(m, k)
	}
	return m
}

// enrolled follows Istio's rules: the pod's dataplane-mode label wins, then
// its namespace's.
func (s Spec) enrolled(p PodSpec) bool {
	const key = "istio.io/dataplane-mode="
	for _, l := range p.Labels {
		if v, ok := strings.CutPrefix(l, key); ok {
			return v == "ambient"
		}
	}
	for _, n := range s.Namespaces {
		if n.Name == p.Namespace {
			return slices.Contains(n.Labels, key+"ambient")
		}
	}
	return false
}
