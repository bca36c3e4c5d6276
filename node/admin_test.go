package node

import (
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

var update = flag.Bool("update", false, "rewrite golden files")

// shape lists every key path of a JSON document ("a.b[].c"), sorted, so a
// golden file pins the document's structure without its values.
func shape(v any, prefix string, out map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			out[p] = true
			shape(e, p, out)
		}
	case []any:
		for _, e := range v {
			shape(e, prefix+"[]", out)
		}
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run go test -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminEndpoints(t *testing.T) {
	h := startAgent(t, baseManifests+`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7, namespace: foo}
spec:
  action: ALLOW
  rules: [{to: [{operation: {methods: ["GET"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: bar}
spec:
  action: DENY
  rules: [{from: [{source: {namespace: [evil]}}]}]
`)
	base := "http://" + h.cfg.AdminAddr

	code, body := get(t, base+FerryConfigDumpPath)
	if code != http.StatusOK {
		t.Fatalf("config_dump: %d %s", code, body)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	shape(doc, "", keys)
	var lines []string
	for k := range keys {
		if !strings.HasPrefix(k, "config.") && !strings.Contains(k, "labels.") {
			lines = append(lines, k)
		}
	}
	slices.Sort(lines)
	golden(t, "config_dump.shape", strings.Join(lines, "\n")+"\n")

	var d ConfigDump
	json.Unmarshal([]byte(body), &d)
	if !d.Ready || d.Node != "a" || len(d.Workloads) != 3 || len(d.Certificates) != 2 {
		t.Errorf("config_dump = ready %v node %q, %d workloads, %d certificates", d.Ready, d.Node, len(d.Workloads), len(d.Certificates))
	}
	var l7 *PolicyDump
	for i := range d.Policies {
		if d.Policies[i].Name == "l7" {
			l7 = &d.Policies[i]
		}
	}
	if l7 == nil || len(l7.Warnings) == 0 {
		t.Errorf("the L7-only ALLOW policy carries no warning: %+v", d.Policies)
	}
	i := slices.IndexFunc(d.Policies, func(p PolicyDump) bool { return p.Name == "typo" })
	if i < 0 || !slices.Contains(d.Policies[i].Errors, `rules[0].from[0].source.namespace: unknown field "namespace" (did you mean "namespaces"?)`) ||
		!strings.Contains(d.Policies[i].Enforced, "read as matching") {
		t.Errorf("the misspelt DENY policy's errors are not in config_dump: %+v", d.Policies)
	}
	if _, body := get(t, "http://"+h.cfg.MetricsAddr+"/metrics"); !strings.Contains(body, `ferry_policy_errors{kind="AuthorizationPolicy",namespace="bar"} 1`) {
		t.Errorf("ferry_policy_errors missing")
	}

	if code, body := get(t, base+"/connections"); code != http.StatusOK || strings.TrimSpace(body) != "[]" {
		t.Errorf("connections: %d %q", code, body)
	}

	// /logging reads and sets the level; bad levels are refused.
	resp, err := http.Post(base+"/logging?level=debug", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "current log level is debug") {
		t.Errorf("set level: %d %q", resp.StatusCode, b)
	}
	resp, _ = http.Post(base+"/logging?level=loud", "", nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad level: status %d, want 400", resp.StatusCode)
	}
	resp.Body.Close()

	if code, body := get(t, base+"/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile") {
		t.Errorf("pprof: %d", code)
	}
	if code, body := get(t, "http://"+h.cfg.MetricsAddr+"/stats/prometheus"); code != http.StatusOK || !strings.Contains(body, `istio_build{component="ztunnel",tag="test"} 1`) {
		t.Errorf("stats/prometheus: %d, istio_build missing", code)
	}
}

func TestAdminRefusesNonLoopbackPeers(t *testing.T) {
	h := newAdminHandler(nil, nil, logger(t))
	req := httptest.NewRequest(http.MethodGet, "/config_dump", nil)
	req.RemoteAddr = "198.18.1.2:40000"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("status %d, want 403", rec.Code)
	}
}

func TestReadinessNamesPending(t *testing.T) {
	r := newReadiness(TaskInventory, TaskCertificates)
	r.set(TaskCertificates, false, "2 identities waiting")
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz/ready", nil))
	if rec.Code != http.StatusServiceUnavailable ||
		rec.Body.String() != "not ready, pending: inventory sync, workload certificates (2 identities waiting)\n" {
		t.Fatalf("%d %q", rec.Code, rec.Body.String())
	}
	r.set(TaskInventory, true, "")
	r.set(TaskCertificates, true, "")
	rec = httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz/ready", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("%d %q", rec.Code, rec.Body.String())
	}
}

// TestDashboardMetricsExist keeps deploy/grafana's dashboard in step with the
// metrics the agent exports.
func TestDashboardMetricsExist(t *testing.T) {
	h := startAgent(t, baseManifests)
	m := h.agent.metrics
	// Give every labelled family a child so Gather lists it.
	m.Open(TrafficLabels{Reporter: ReporterSource}).Close()
	m.CARequests.WithLabelValues("ok")
	m.CertExpiry.WithLabelValues("spiffe://cluster.local/ns/foo/sa/x")
	m.PolicyDecision.WithLabelValues("inbound", "allow", "")
	m.TunnelRejects.WithLabelValues("test")
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range fams {
		have[f.GetName()] = true
	}
	// Families only an eBPF-mode agent exports.
	sc := newStateCollector(h.agent, nil)
	for _, d := range []*prometheus.Desc{sc.bpfPods, sc.bpfVerdicts} {
		have[regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(d.String())[1]] = true
	}
	b, err := os.ReadFile("../deploy/grafana/ferry-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`\b((?:istio|ferry|process|go)_[a-z_]+)\{`).FindAllStringSubmatch(string(b), -1)
	if len(names) < 10 {
		t.Fatalf("found only %d metric references in the dashboard", len(names))
	}
	for _, n := range names {
		if !have[n[1]] {
			t.Errorf("dashboard uses %s, which the agent does not export", n[1])
		}
	}
}
