package inventory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ferrymesh/ferry/authz"
)

// File is a Source that reads Kubernetes-shaped YAML from a file or a directory
// of *.yaml/*.yml/*.json files (multi-document allowed): v1 Namespace, v1 Pod, v1 Service,
// security.istio.io/v1 AuthorizationPolicy and PeerAuthentication. Other kinds
// are ignored. It polls for changes. A file with any problem (a document that
// does not parse, a policy with an error) keeps its last good contents while
// the problem is reported in Snapshot.Errors and Snapshot.PolicyProblems; a
// file that never was good contributes what it holds, its policies read
// fail-closed by authz.Compile and its unreadable documents skipped.
type File struct {
	Path string
	// Interval between checks for changes; 0 means one second.
	Interval time.Duration
	Log      *slog.Logger
}

// fileState is what File remembers about one manifest file.
type fileState struct {
	modTime time.Time
	size    int64
	objects objects // the last good parse, or what the file holds if it never was good
	good    bool    // objects is a good parse
	errs    []error // problems of the current contents
	// problems are the policy errors of the current contents while the
	// last good version is enforced instead.
	problems []authz.Diagnostic
}

// objects is what one manifest file contributes to a snapshot.
type objects struct {
	namespaces []Namespace
	pods       []*Pod
	services   []Service
	aps        []authz.AuthorizationPolicy
	pas        []authz.PeerAuthentication
}

// Run implements Source.
func (f *File) Run(ctx context.Context, publish func(*Snapshot)) error {
	interval := f.Interval
	if interval == 0 {
		interval = time.Second
	}
	log := f.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	files := map[string]*fileState{}
	var last *Snapshot
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		changed, err := f.scan(files)
		if err != nil && last == nil {
			return err // never had a good state: the path itself is wrong
		}
		if err != nil {
			log.Warn("manifests unreadable, keeping last good inventory", "path", f.Path, "err", err)
		} else if changed || last == nil {
			last = merge(files)
			for _, e := range last.Errors {
				log.Warn("manifest rejected", "err", e)
			}
			publish(last)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Load reads path once and returns its snapshot, for offline tools such as
// `ferry policy check`.
func Load(path string) (*Snapshot, error) {
	files := map[string]*fileState{}
	if _, err := (&File{Path: path}).scan(files); err != nil {
		return nil, err
	}
	return merge(files), nil
}

// scan re-reads files whose size or modification time changed and forgets
// removed ones. It reports whether anything changed.
func (f *File) scan(files map[string]*fileState) (bool, error) {
	paths, err := manifestPaths(f.Path)
	if err != nil {
		return false, err
	}
	changed := false
	seen := map[string]bool{}
	for _, p := range paths {
		seen[p] = true
		fi, err := os.Stat(p)
		if err != nil {
			continue // removed between listing and stat: next scan forgets it
		}
		st := files[p]
		if st != nil && st.modTime.Equal(fi.ModTime()) && st.size == fi.Size() {
			continue
		}
		if st == nil {
			st = &fileState{}
			files[p] = st
		}
		st.modTime, st.size = fi.ModTime(), fi.Size()
		changed = true
		b, err := os.ReadFile(p)
		if err != nil {
			st.errs, st.problems = []error{fmt.Errorf("inventory: %s: %w", p, err)}, nil
			continue
		}
		st.update(p, parse(p, b))
	}
	for p := range files {
		if !seen[p] {
			delete(files, p)
			changed = true
		}
	}
	return changed, nil
}

func manifestPaths(path string) ([]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("inventory: manifests: %w", err)
	}
	if !fi.IsDir() {
		return []string{path}, nil
	}
	var paths []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != path && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		switch filepath.Ext(p) {
		case ".yaml", ".yml", ".json":
			if !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
				paths = append(paths, p)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("inventory: manifests: %w", err)
	}
	slices.Sort(paths)
	return paths, nil
}

// update takes a file's new parse: a good one replaces the last; a bad one
// keeps the last good version, or, if there never was one, is used as it is.
func (st *fileState) update(path string, r parsed) {
	st.errs, st.problems = r.errs, nil
	if len(r.errs) == 0 {
		st.objects, st.good = r.objects, true
		return
	}
	if !st.good {
		st.objects = r.objects
		return
	}
	kept := fmt.Errorf("inventory: %s: keeping its last good version until it is fixed", path)
	st.errs = append(st.errs, kept)
	for _, d := range r.policyErrs {
		d.Effect = "the last good version of " + path + " is enforced until it is fixed"
		st.problems = append(st.problems, d)
	}
}

// merge builds a snapshot from every file's last good objects.
func merge(files map[string]*fileState) *Snapshot {
	s := &Snapshot{Namespaces: map[string]Namespace{}}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		st := files[p]
		s.Errors = append(s.Errors, st.errs...)
		s.PolicyProblems = append(s.PolicyProblems, st.problems...)
		for _, ns := range st.objects.namespaces {
			s.Namespaces[ns.Name] = ns
		}
		s.Pods = append(s.Pods, st.objects.pods...)
		s.Services = append(s.Services, st.objects.services...)
		s.AuthorizationPolicies = append(s.AuthorizationPolicies, st.objects.aps...)
		s.PeerAuthentications = append(s.PeerAuthentications, st.objects.pas...)
	}
	return s
}

// typeMeta identifies a document's kind.
type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

// manifestPod is the part of a v1 Pod manifest Ferry reads.
type manifestPod struct {
	Metadata struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		UID         string            `json:"uid"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		NodeName           string `json:"nodeName"`
		ServiceAccountName string `json:"serviceAccountName"`
		HostNetwork        bool   `json:"hostNetwork"`
	} `json:"spec"`
	Status struct {
		PodIP  string `json:"podIP"`
		PodIPs []struct {
			IP string `json:"ip"`
		} `json:"podIPs"`
	} `json:"status"`
}

// manifestService is the part of a v1 Service manifest Ferry reads.
type manifestService struct {
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		ClusterIP  string            `json:"clusterIP"`
		ClusterIPs []string          `json:"clusterIPs"`
		Selector   map[string]string `json:"selector"`
		Ports      []struct {
			Protocol   string          `json:"protocol"`
			Port       int             `json:"port"`
			TargetPort json.RawMessage `json:"targetPort"`
		} `json:"ports"`
	} `json:"spec"`
}

// service converts m, checking what the API server would.
func (m *manifestService) service() (Service, error) {
	s := Service{Name: m.Metadata.Name, Namespace: m.Metadata.Namespace, Selector: m.Spec.Selector}
	if s.Name == "" {
		return s, errors.New("metadata.name is required")
	}
	if s.Namespace == "" {
		s.Namespace = "default"
	}
	ips := m.Spec.ClusterIPs
	if len(ips) == 0 && m.Spec.ClusterIP != "" {
		ips = []string{m.Spec.ClusterIP}
	}
	for i, v := range ips {
		if v == "None" || v == "" {
			continue // headless
		}
		ip, err := netip.ParseAddr(v)
		if err != nil {
			return s, fmt.Errorf("spec.clusterIPs[%d]: %w", i, err)
		}
		s.ClusterIPs = append(s.ClusterIPs, ip)
	}
	for i, p := range m.Spec.Ports {
		if p.Protocol != "" && p.Protocol != "TCP" {
			continue
		}
		if p.Port < 1 || p.Port > 65535 {
			return s, fmt.Errorf("spec.ports[%d].port: %d is not a port number", i, p.Port)
		}
		sp := ServicePort{Port: uint16(p.Port)}
		if len(p.TargetPort) > 0 {
			var n int
			if err := json.Unmarshal(p.TargetPort, &n); err == nil {
				if n < 1 || n > 65535 {
					return s, fmt.Errorf("spec.ports[%d].targetPort: %d is not a port number", i, n)
				}
				sp.TargetPort = uint16(n)
			} else if err := json.Unmarshal(p.TargetPort, &sp.TargetPortName); err != nil {
				return s, fmt.Errorf("spec.ports[%d].targetPort: a port number or name", i)
			}
		}
		s.Ports = append(s.Ports, sp)
	}
	return s, nil
}

type manifestNamespace struct {
	Metadata struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
}

// parsed is one read of a manifest file.
type parsed struct {
	objects objects
	// errs lists every problem: documents that do not parse (left out)
	// and policies with errors (kept, to be read fail-closed).
	errs       []error
	policyErrs []authz.Diagnostic
}

// parse reads every document of one file; a bad document does not stop the
// others.
func parse(path string, b []byte) parsed {
	var r parsed
	for i, doc := range splitDocuments(b) {
		where := fmt.Sprintf("%s: document %d", path, i+1)
		js, err := yamlToJSON(doc)
		if err != nil {
			r.errs = append(r.errs, fmt.Errorf("inventory: %s: %w (document skipped)", where, err))
			continue
		}
		var tm typeMeta
		if err := json.Unmarshal(js, &tm); err != nil || tm.Kind == "" {
			if err != nil {
				r.errs = append(r.errs, fmt.Errorf("inventory: %s: %w (document skipped)", where, err))
			}
			continue
		}
		where = fmt.Sprintf("%s: %s %q", path, tm.Kind, tm.Metadata.Name)
		if err := r.object(path, tm, js); err != nil {
			r.errs = append(r.errs, fmt.Errorf("inventory: %s: %w (document skipped)", where, err))
		}
	}
	return r
}

func (r *parsed) object(path string, tm typeMeta, doc []byte) error {
	objs := &r.objects
	switch {
	case tm.APIVersion == "v1" && tm.Kind == "Namespace":
		var m manifestNamespace
		if err := json.Unmarshal(doc, &m); err != nil {
			return err
		}
		if m.Metadata.Name == "" {
			return errors.New("metadata.name is required")
		}
		objs.namespaces = append(objs.namespaces, Namespace{Name: m.Metadata.Name, Labels: m.Metadata.Labels})
	case tm.APIVersion == "v1" && tm.Kind == "Pod":
		var m manifestPod
		if err := json.Unmarshal(doc, &m); err != nil {
			return err
		}
		p := &Pod{
			Name: m.Metadata.Name, Namespace: m.Metadata.Namespace, UID: m.Metadata.UID,
			ServiceAccount: m.Spec.ServiceAccountName, NodeName: m.Spec.NodeName,
			HostNetwork: m.Spec.HostNetwork, Labels: m.Metadata.Labels, Annotations: m.Metadata.Annotations,
		}
		if p.Name == "" {
			return errors.New("metadata.name is required")
		}
		if p.Namespace == "" {
			p.Namespace = "default"
		}
		if p.ServiceAccount == "" {
			p.ServiceAccount = "default"
		}
		if m.Status.PodIP != "" {
			ip, err := netip.ParseAddr(m.Status.PodIP)
			if err != nil {
				return fmt.Errorf("status.podIP: %w", err)
			}
			p.IP = ip
		}
		for i, pip := range m.Status.PodIPs {
			ip, err := netip.ParseAddr(pip.IP)
			if err != nil {
				return fmt.Errorf("status.podIPs[%d].ip: %w", i, err)
			}
			p.IPs = append(p.IPs, ip)
		}
		if !p.IP.IsValid() && len(p.IPs) > 0 {
			p.IP = p.IPs[0] // status.podIP is status.podIPs[0] by the API's contract
		}
		objs.pods = append(objs.pods, p)
	case tm.APIVersion == "v1" && tm.Kind == "Service":
		var m manifestService
		if err := json.Unmarshal(doc, &m); err != nil {
			return err
		}
		svc, err := m.service()
		if err != nil {
			return err
		}
		objs.services = append(objs.services, svc)
	case strings.HasPrefix(tm.APIVersion, "security.istio.io/") && tm.Kind == "AuthorizationPolicy":
		ap, err := DecodeAuthorizationPolicy(doc)
		if err != nil {
			return err
		}
		if ap.Metadata.Namespace == "" {
			ap.Metadata.Namespace = "default"
		}
		r.policyErrors(path, authz.AuthorizationPolicyErrors(&ap))
		objs.aps = append(objs.aps, ap)
	case strings.HasPrefix(tm.APIVersion, "security.istio.io/") && tm.Kind == "PeerAuthentication":
		pa, err := DecodePeerAuthentication(doc)
		if err != nil {
			return err
		}
		if pa.Metadata.Namespace == "" {
			pa.Metadata.Namespace = "default"
		}
		r.policyErrors(path, authz.PeerAuthenticationErrors(&pa))
		objs.pas = append(objs.pas, pa)
	}
	return nil
}

func (r *parsed) policyErrors(path string, ds []authz.Diagnostic) {
	r.policyErrs = append(r.policyErrs, ds...)
	for _, d := range ds {
		r.errs = append(r.errs, fmt.Errorf("inventory: %s: %w", path, d))
	}
}

// splitDocuments splits a YAML stream on "---" separator lines.
func splitDocuments(b []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	for line := range bytes.Lines(b) {
		if t := bytes.TrimRight(line, " \t\r\n"); bytes.Equal(t, []byte("---")) || bytes.HasPrefix(t, []byte("--- ")) {
			docs = append(docs, bytes.Clone(cur.Bytes()))
			cur.Reset()
			continue
		}
		cur.Write(line)
	}
	docs = append(docs, cur.Bytes())
	return slices.DeleteFunc(docs, func(d []byte) bool { return len(bytes.TrimSpace(d)) == 0 })
}
