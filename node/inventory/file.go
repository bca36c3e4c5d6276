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

	"sigs.k8s.io/yaml"

	"github.com/ferrymesh/ferry/authz"
)

// File is a Source that reads Kubernetes-shaped YAML from a file or a directory
// of *.yaml/*.yml/*.json files (multi-document allowed): v1 Namespace, v1 Pod,
// security.istio.io/v1 AuthorizationPolicy and PeerAuthentication. Other kinds
// are ignored. It polls for changes; a file that fails to parse keeps its last
// good contents and the error is reported in Snapshot.Errors.
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
	objects objects // last good parse
	err     error   // last parse error, if the current contents are bad
}

// objects is what one manifest file contributes to a snapshot.
type objects struct {
	namespaces []Namespace
	pods       []Pod
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
			st.err = fmt.Errorf("inventory: %s: %w", p, err)
			continue
		}
		objs, err := parse(p, b)
		st.err = err
		if err == nil {
			st.objects = objs
		}
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
		if st.err != nil {
			s.Errors = append(s.Errors, st.err)
		}
		for _, ns := range st.objects.namespaces {
			s.Namespaces[ns.Name] = ns
		}
		s.Pods = append(s.Pods, st.objects.pods...)
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

type manifestNamespace struct {
	Metadata struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
}

// parse reads every document of one file. Any bad document rejects the whole
// file, so a half-edited file never yields a half-applied policy set.
func parse(path string, b []byte) (objects, error) {
	var objs objects
	for i, doc := range splitDocuments(b) {
		where := fmt.Sprintf("%s: document %d", path, i+1)
		var tm typeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return objects{}, fmt.Errorf("inventory: %s: %w", where, err)
		}
		if tm.Kind == "" {
			continue
		}
		where = fmt.Sprintf("%s: %s %q", path, tm.Kind, tm.Metadata.Name)
		if err := parseObject(&objs, tm, doc); err != nil {
			return objects{}, fmt.Errorf("inventory: %s: %w", where, err)
		}
	}
	return objs, nil
}

func parseObject(objs *objects, tm typeMeta, doc []byte) error {
	switch {
	case tm.APIVersion == "v1" && tm.Kind == "Namespace":
		var m manifestNamespace
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return err
		}
		if m.Metadata.Name == "" {
			return errors.New("metadata.name is required")
		}
		objs.namespaces = append(objs.namespaces, Namespace{Name: m.Metadata.Name, Labels: m.Metadata.Labels})
	case tm.APIVersion == "v1" && tm.Kind == "Pod":
		var m manifestPod
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return err
		}
		p := Pod{
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
	case strings.HasPrefix(tm.APIVersion, "security.istio.io/") && tm.Kind == "AuthorizationPolicy":
		var ap authz.AuthorizationPolicy
		if err := unmarshalPolicy(doc, &ap.Metadata, &ap.Spec); err != nil {
			return err
		}
		if ap.Metadata.Namespace == "" {
			ap.Metadata.Namespace = "default"
		}
		objs.aps = append(objs.aps, ap)
	case strings.HasPrefix(tm.APIVersion, "security.istio.io/") && tm.Kind == "PeerAuthentication":
		var pa authz.PeerAuthentication
		if err := unmarshalPolicy(doc, &pa.Metadata, &pa.Spec); err != nil {
			return err
		}
		if pa.Metadata.Namespace == "" {
			pa.Metadata.Namespace = "default"
		}
		objs.pas = append(objs.pas, pa)
	}
	return nil
}

// unmarshalPolicy reads an Istio policy document: metadata leniently (it may
// carry labels, annotations and more), spec strictly, so a misspelt field is an
// error instead of a silently wider or narrower policy.
func unmarshalPolicy(doc []byte, meta *authz.ObjectMeta, spec any) error {
	var obj struct {
		Metadata authz.ObjectMeta `json:"metadata"`
		Spec     json.RawMessage  `json:"spec"`
	}
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		return err
	}
	*meta = obj.Metadata
	if meta.Name == "" {
		return errors.New("metadata.name is required")
	}
	if len(obj.Spec) == 0 || string(obj.Spec) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(obj.Spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(spec); err != nil {
		return fmt.Errorf("spec: %w (check the field names against security.istio.io/v1)", err)
	}
	return nil
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
