package main

import (
	"encoding/json"
	"maps"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStat(t *testing.T) {
	var s stat
	for _, v := range []float64{3, 1, 2, 10} {
		s.add(v)
	}
	if s.Min != 1 || s.Max != 10 || s.Median != 2.5 || len(s.Rounds) != 4 || s.Rounds[0] != 3 {
		t.Fatalf("stat = %+v", s)
	}
	s.add(math.NaN()) // dropped
	if len(s.Rounds) != 4 {
		t.Fatalf("NaN recorded: %+v", s)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i))
	}
	s := sortedCopy(d)
	if p := percentile(s, 50); p != 50 {
		t.Errorf("p50 = %d", p)
	}
	if p := percentile(s, 99); p != 99 {
		t.Errorf("p99 = %d", p)
	}
	if p := percentile(nil, 50); p != 0 {
		t.Errorf("p50 of nothing = %d", p)
	}
}

func TestTreeUsage(t *testing.T) {
	// Burn a little CPU so utime is not zero, then read our own process.
	end := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(end) {
	}
	cpu, rss := treeUsage([]int{os.Getpid()})
	if cpu <= 0 || rss == 0 {
		t.Fatalf("cpu %v rss %d KiB", cpu, rss)
	}
}

func TestRecorderWrite(t *testing.T) {
	r := newRecorder()
	r.raw("path/x", "ferry", "MB/s", "MB/s", 100)
	r.key("path_1conn_up_vs_gotls", 1.1)
	p := filepath.Join(t.TempDir(), "r.json")
	if err := r.write(p); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	for _, want := range []string{`"path_1conn_up_vs_gotls"`, `"median": 1.1`, `"raw"`, `"MB/s"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("results lack %s:\n%s", want, b)
		}
	}
	var sb strings.Builder
	r.table(&sb, peerNames)
	if !strings.Contains(sb.String(), "path_1conn_up_vs_gotls") || !strings.Contains(sb.String(), "ferry") {
		t.Errorf("table:\n%s", sb.String())
	}
}

// TestRecorderWriteKeepsOtherSuites checks that a run keeps what
// scripts/bench-inventory recorded in the same file, and drops its own
// earlier keys.
func TestRecorderWriteKeepsOtherSuites(t *testing.T) {
	p := filepath.Join(t.TempDir(), "r.json")
	before := `{"inventory_scale": [{"mode": "kube", "pods": 1000}], "cpu_us_per_rr1k": {"median": 1},` +
		`"meta": {"definitions": {"inventory_scale": "memory per mode"}}}`
	if err := os.WriteFile(p, []byte(before), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newRecorder()
	r.Meta["definitions"] = map[string]string{"mux8_vs_8tls": "d"}
	r.key("mux8_vs_8tls", 1)
	if err := r.write(p); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Inventory []map[string]any `json:"inventory_scale"`
		Old       any              `json:"cpu_us_per_rr1k"`
		Mux       *stat            `json:"mux8_vs_8tls"`
		Meta      struct {
			Definitions map[string]string `json:"definitions"`
		} `json:"meta"`
	}
	b, _ := os.ReadFile(p)
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Inventory) != 1 || got.Old != nil || got.Mux == nil ||
		got.Meta.Definitions["inventory_scale"] != "memory per mode" || got.Meta.Definitions["mux8_vs_8tls"] != "d" {
		t.Errorf("results after the run:\n%s", b)
	}
}

// TestKeysDefined checks that every key of the table has a definition in
// meta.definitions.
func TestKeysDefined(t *testing.T) {
	defs := maps.Clone(suiteDefinitions)
	maps.Copy(defs, activeDefinitions)
	maps.Copy(defs, captureDefinitions)
	maps.Copy(defs, policyDefinitions)
	for _, k := range keyOrder {
		if defs[k.name] == "" {
			t.Errorf("key %s has no definition", k.name)
		}
		if k.target == "" {
			t.Errorf("key %s has no target", k.name)
		}
	}
}

func TestLowest(t *testing.T) {
	cpu := map[string]float64{"ferry": 50, "ferry-baseline": 40, "direct": 0, "go-tls": 150, "nginx": 105, "stunnel": 105, "haproxy": 0}
	for _, tc := range []struct {
		name   string
		m      map[string]float64
		keep   func(string) bool
		want   string
		wantV  float64
		wantOK bool
	}{
		{"other tunnels", cpu, otherTunnel, "nginx", 105, true},
		{"ties go to the first name", map[string]float64{"stunnel": 7, "nginx": 7}, otherTunnel, "nginx", 7, true},
		{"zero is no figure", map[string]float64{"haproxy": 0, "go-tls": 3}, otherTunnel, "go-tls", 3, true},
		{"only ferry", map[string]float64{"ferry": 1, "ferry-baseline": 1, "direct": 1}, otherTunnel, "", 0, false},
		{"nothing", nil, otherTunnel, "", 0, false},
		{"filter", cpu, func(n string) bool { return n == "go-tls" }, "go-tls", 150, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, v, ok := lowest(tc.m, tc.keep)
			if name != tc.want || v != tc.wantV || ok != tc.wantOK {
				t.Errorf("lowest = %q, %v, %v; want %q, %v, %v", name, v, ok, tc.want, tc.wantV, tc.wantOK)
			}
		})
	}
}

func TestVsDirect(t *testing.T) {
	res := map[string]map[string]dirResult{
		"up":   {"direct": {mbps: 2000}, "ferry": {mbps: 800}},
		"down": {"direct": {mbps: 2500}, "ferry": {mbps: 750}},
	}
	if v, ok := vsDirect(res, "ferry"); !ok || math.Abs(v-0.3) > 1e-9 {
		t.Errorf("vsDirect = %v, %v; want the lower ratio 0.3 (down)", v, ok)
	}
	delete(res["down"], "direct")
	if v, ok := vsDirect(res, "ferry"); ok {
		t.Errorf("vsDirect without direct down = %v, want none", v)
	}
}
