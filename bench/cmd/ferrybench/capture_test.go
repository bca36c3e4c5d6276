package main

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/internal/testbed"
	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestPodVsNode(t *testing.T) {
	s := &suite{rec: newRecorder()}
	figures := map[string]float64{"ferry-node": 200, "ferry-pod": 150}
	of := func(m map[string]float64) func(string) (float64, bool) {
		return func(name string) (float64, bool) { v, ok := m[name]; return v, ok }
	}
	s.podVsNode("1conn_up", of(figures))
	if k := s.rec.Keys["capture_pod_vs_node_1conn_up"]; k == nil || k.Median != 0.75 {
		t.Errorf("capture_pod_vs_node_1conn_up = %+v, want 0.75", k)
	}
	s.podVsNode("rr1k_p50", of(map[string]float64{"ferry-pod": 1})) // node mode failed
	s.podVsNode("connect_rate", of(map[string]float64{"ferry-pod": 1, "ferry-node": 0}))
	if len(s.rec.Keys) != 1 {
		t.Errorf("keys without both figures recorded: %v", s.rec.Keys)
	}
}

// TestCaptureKeys checks that the table lists every key the section defines
// and only those, and that the keys podVsNode can record are all defined.
func TestCaptureKeys(t *testing.T) {
	var listed []string
	for _, k := range keyOrder {
		if strings.HasPrefix(k.name, "capture_") {
			listed = append(listed, k.name)
		}
	}
	var defined []string
	for k := range captureDefinitions {
		defined = append(defined, k)
	}
	slices.Sort(listed)
	slices.Sort(defined)
	if !slices.Equal(listed, defined) {
		t.Errorf("keyOrder lists %v, captureDefinitions defines %v", listed, defined)
	}
	for _, path := range []string{"", "same_node_"} {
		for _, k := range []string{"1conn_up", "1conn_down", "cpu_per_gb", "rr1k_p50", "cpu_per_rr1k", "connect_rate", "cpu_per_conn"} {
			if _, ok := captureDefinitions["capture_pod_vs_node_"+path+k]; !ok {
				t.Errorf("capture_pod_vs_node_%s%s is recorded but not defined", path, k)
			}
		}
	}
}

func TestCaptureSkip(t *testing.T) {
	ferry := filepath.Join(t.TempDir(), "ferry")
	if err := os.WriteFile(ferry, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		benchmarks map[string]bool
		only       map[string]bool
		ferry      string
		skip       bool
	}{
		{"all", nil, nil, ferry, false},
		{"selected", map[string]bool{"capture": true}, map[string]bool{"ferry": true}, ferry, false},
		{"other benchmarks", map[string]bool{"tput": true}, nil, ferry, true},
		{"peers without ferry", nil, map[string]bool{"go-tls": true}, ferry, true},
		{"no binary", nil, nil, "", true},
		{"missing binary", nil, nil, ferry + "-gone", true},
	} {
		why := captureSkip(config{benchmarks: tc.benchmarks}, &env{ferry: tc.ferry}, tc.only)
		if (why != "") != tc.skip {
			t.Errorf("%s: captureSkip = %q, want skipped %v", tc.name, why, tc.skip)
		}
	}
}

// TestPrivilegedCapture brings the section's testbeds up with a freshly
// built agent, which checks that every path is tunnelled, and checks that
// closing them leaves nothing behind.
func TestPrivilegedCapture(t *testing.T) {
	testutil.Privileged(t)
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	ferry := filepath.Join(t.TempDir(), "ferry")
	cmd := exec.Command("go", "build", "-o", ferry, "./cmd/ferry")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sk := newSink()
	defer sk.close()
	c, err := startCapture(t.Context(), slog.New(slog.DiscardHandler), ferry, t.TempDir(), sk)
	if err != nil {
		t.Fatal(err)
	}
	var prefixes []string
	for _, b := range c.beds {
		prefixes = append(prefixes, b.tb.Prefix)
		t.Cleanup(func() { testbed.Teardown(b.tb.Prefix, "", false, nil) })
	}
	if got := c.peers(true); len(got) != 2 || got[0].name != "ferry-node" || got[1].name != "ferry-pod" || got[0].reach.dst.Addr() != localPod {
		t.Errorf("same-node peers: %+v", got)
	}
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range prefixes {
		if left := testbed.Leftovers(p); len(left) > 0 {
			t.Errorf("%s left behind: %v", p, left)
		}
	}
}
