package inventory

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const manifests = `apiVersion: v1
kind: Namespace
metadata:
  name: foo
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: httpbin
  namespace: foo
  labels: {app: httpbin}
spec:
  nodeName: node-a
  serviceAccountName: httpbin
  containers: [{name: httpbin, image: x}]
status:
  podIP: 198.18.1.2
---
apiVersion: v1
kind: Pod
metadata: {name: curl, namespace: foo}
spec: {nodeName: node-b}
status: {podIP: 198.18.2.2}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-foo, namespace: foo, labels: {team: x}}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/foo/sa/curl"]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo}
spec:
  clusterIP: 198.19.1.10
  clusterIPs: [198.19.1.10]
  selector: {app: httpbin}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: named, port: 81, targetPort: web}
  - {name: same, port: 82}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
`

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.yaml")
	if err := os.WriteFile(path, []byte(manifests), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Errors) != 0 {
		t.Fatalf("errors: %v", s.Errors)
	}
	if got := s.Namespaces["foo"].Labels["istio.io/dataplane-mode"]; got != "ambient" {
		t.Errorf("namespace label = %q", got)
	}
	if len(s.Pods) != 2 {
		t.Fatalf("pods = %d, want 2", len(s.Pods))
	}
	p := s.Pods[0]
	if p.Name != "httpbin" || p.Namespace != "foo" || p.ServiceAccount != "httpbin" || p.NodeName != "node-a" ||
		p.IP != netip.MustParseAddr("198.18.1.2") || p.Labels["app"] != "httpbin" {
		t.Errorf("pod = %+v", p)
	}
	if s.Pods[1].ServiceAccount != "default" {
		t.Errorf("default service account = %q", s.Pods[1].ServiceAccount)
	}
	if len(s.AuthorizationPolicies) != 1 || s.AuthorizationPolicies[0].Spec.Rules[0].From[0].Source.Principals[0] != "cluster.local/ns/foo/sa/curl" {
		t.Errorf("policies = %+v", s.AuthorizationPolicies)
	}
	if len(s.PeerAuthentications) != 1 || s.PeerAuthentications[0].Spec.MTLS.Mode != "STRICT" {
		t.Errorf("peer authentications = %+v", s.PeerAuthentications)
	}
	wantSvcs := []Service{
		{Name: "httpbin", Namespace: "foo", ClusterIPs: []netip.Addr{netip.MustParseAddr("198.19.1.10")},
			Selector: map[string]string{"app": "httpbin"},
			Ports:    []ServicePort{{Port: 80, TargetPort: 8080}, {Port: 81, TargetPortName: "web"}, {Port: 82}}},
		{Name: "headless", Namespace: "default", Ports: []ServicePort{{Port: 80}}},
	}
	if !reflect.DeepEqual(s.Services, wantSvcs) {
		t.Errorf("services = %+v, want %+v", s.Services, wantSvcs)
	}
	if !s.Services[0].Selects(s.Pods[0]) || s.Services[0].Selects(s.Pods[1]) || s.Services[1].Selects(s.Pods[0]) {
		t.Error("Selects: want the httpbin Service to select the httpbin pod alone, the headless one none")
	}
}

func TestLoadRejectsMalformedNamingFileAndObject(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"misspelt spec field", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec: {rulez: []}\n", `AuthorizationPolicy foo/p: rulez: unknown field "rulez" (did you mean "rules"?)`},
		{"bad pod IP", "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nstatus: {podIP: 300.1.1.1}\n", `Pod "web": status.podIP`},
		{"bad pod IPs", "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nstatus: {podIPs: [{ip: 198.18.1.2}, {ip: 2001:2::zz}]}\n", `Pod "web": status.podIPs[1].ip`},
		{"bad cluster IP", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 198.19.1.300}\n", `Service "web": spec.clusterIPs[0]`},
		{"bad service port", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 0}]}\n", `Service "web": spec.ports[0].port`},
		{"bad target port", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80, targetPort: 70000}]}\n", `Service "web": spec.ports[0].targetPort`},
		{"not yaml", "kind: [\n", "document 1"},
		{"no name", "apiVersion: v1\nkind: Namespace\nmetadata: {}\n", "metadata.name is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bad := filepath.Join(dir, "bad.yaml")
			os.WriteFile(bad, []byte(tc.doc), 0o644)
			os.WriteFile(filepath.Join(dir, "good.yaml"), []byte(manifests), 0o644)
			s, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Errors) != 1 || !strings.Contains(s.Errors[0].Error(), tc.want) || !strings.Contains(s.Errors[0].Error(), bad) {
				t.Fatalf("errors = %v, want one naming %s and containing %q", s.Errors, bad, tc.want)
			}
			if len(s.Pods) != 2 {
				t.Errorf("the good file's pods are gone: %d", len(s.Pods))
			}
		})
	}
}

// TestFileKeepsLastGood edits a manifest from good to bad to good again and
// checks that the bad version never replaces the good objects.
func TestFileKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.yaml")
	os.WriteFile(path, []byte(manifests), 0o644)
	var mu sync.Mutex
	var snaps []*Snapshot
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- (&File{Path: path, Interval: 10 * time.Millisecond}).Run(ctx, func(s *Snapshot) {
			mu.Lock()
			snaps = append(snaps, s)
			mu.Unlock()
		})
	}()
	waitFor := func(what string, ok func(*Snapshot) bool) {
		t.Helper()
		for range 3000 { // 30 s: a loaded machine running -race
			mu.Lock()
			n := len(snaps)
			var last *Snapshot
			if n > 0 {
				last = snaps[n-1]
			}
			mu.Unlock()
			if last != nil && ok(last) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("timed out waiting for %s", what)
	}
	// Each version replaces the file at once, as the agent's users are told
	// to: a scan between os.WriteFile's truncation and its write would see
	// an empty file, a good version holding nothing.
	write := func(content string) {
		t.Helper()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	waitFor("first snapshot", func(s *Snapshot) bool { return len(s.Pods) == 2 })
	write(manifests + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\nstatus: {podIP: nope}\n")
	waitFor("error snapshot", func(s *Snapshot) bool {
		return len(s.Errors) == 2 && len(s.Pods) == 2 && strings.Contains(s.Errors[1].Error(), "keeping its last good version")
	})
	write(manifests + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\nstatus: {podIP: 198.18.3.3}\n")
	waitFor("fixed snapshot", func(s *Snapshot) bool { return len(s.Errors) == 0 && len(s.Pods) == 3 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestFileMissingPath(t *testing.T) {
	err := (&File{Path: filepath.Join(t.TempDir(), "nope")}).Run(t.Context(), func(*Snapshot) {})
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("err = %v", err)
	}
}

// TestLoadDualStackPod reads status.podIPs: every address, for the
// redirection to refuse the IPv6 ones.
func TestLoadDualStackPod(t *testing.T) {
	dir := t.TempDir()
	doc := "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: a}\nstatus:\n  podIP: 198.18.1.2\n  podIPs: [{ip: 198.18.1.2}, {ip: 2001:2:0:1::2}]\n"
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("2001:2:0:1::2")}
	if len(snap.Pods) != 1 || snap.Pods[0].IP != want[0] || !slices.Equal(snap.Pods[0].IPs, want) {
		t.Errorf("pods %+v, want IP %v and IPs %v", snap.Pods, want[0], want)
	}
}
