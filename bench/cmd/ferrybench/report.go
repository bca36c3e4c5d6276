package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
)

// stat is one figure over rounds.
type stat struct {
	Min    float64   `json:"min"`
	Median float64   `json:"median"`
	Max    float64   `json:"max"`
	Rounds []float64 `json:"rounds"`
	Unit   string    `json:"unit,omitempty"`
}

func (s *stat) add(v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return
	}
	s.Rounds = append(s.Rounds, v)
	sorted := slices.Clone(s.Rounds)
	slices.Sort(sorted)
	s.Min, s.Max = sorted[0], sorted[len(sorted)-1]
	n := len(sorted)
	if n%2 == 1 {
		s.Median = sorted[n/2]
	} else {
		s.Median = (sorted[n/2-1] + sorted[n/2]) / 2
	}
}

// recorder collects raw figures (benchmark → peer → metric) and the
// headline keys.
type recorder struct {
	Raw     map[string]map[string]map[string]*stat `json:"raw"`
	Keys    map[string]*stat                       `json:"-"`
	Skipped map[string]string                      `json:"skipped,omitempty"`
	Errors  []string                               `json:"errors,omitempty"`
	Meta    map[string]any                         `json:"meta"`
}

func newRecorder() *recorder {
	return &recorder{Raw: map[string]map[string]map[string]*stat{}, Keys: map[string]*stat{}, Skipped: map[string]string{}, Meta: map[string]any{}}
}

func (r *recorder) raw(bench, peer, metric, unit string, v float64) {
	if r.Raw[bench] == nil {
		r.Raw[bench] = map[string]map[string]*stat{}
	}
	if r.Raw[bench][peer] == nil {
		r.Raw[bench][peer] = map[string]*stat{}
	}
	s := r.Raw[bench][peer][metric]
	if s == nil {
		s = &stat{Unit: unit}
		r.Raw[bench][peer][metric] = s
	}
	s.add(v)
}

func (r *recorder) key(name string, v float64) {
	s := r.Keys[name]
	if s == nil {
		s = &stat{}
		r.Keys[name] = s
	}
	s.add(v)
}

// keyOrder is the table's order of the keys, with each key's target
// (issue 23's where it sets one, issue 8's otherwise).
var keyOrder = []struct{ name, target string }{
	{"path_1conn_up_vs_gotls", ">= 1.3"},
	{"path_1conn_down_vs_gotls", ">= 1.3"},
	{"path_1conn_vs_best_peer", ">= 1.0"},
	{"path_1conn_vs_direct", ">= 0.40"},
	{"cpu_per_gb_vs_gotls", "<= 0.70"},
	{"cpu_us_per_rr1k", "<= 100"},
	{"cpu_per_rr1k_vs_best_peer", "<= 0.65"},
	{"rr1k_added_p50_vs_gotls", "<= 0.75"},
	{"rr1k_p99_at_80pct_vs_p50", "<= 3"},
	{"connect_rate_vs_tls_peers", ">= 4.5"},
	{"connect_cpu_vs_best_tls_peer", "<= 0.15"},
	{"handshakes_per_s_core_x25519", ">= 1500"},
	{"handshake_cpu_vs_gotls", "<= 0.70"},
	{"idle_conn_rss_kib", "<= 6"},
	{"idle_conn_heap_kib", "<= 5"},
	{"mux8_vs_8tls", ">= 1.2"},
	{"hol_p99_ratio", "<= 1.5"},
	{"active_10k_cpu_per_req_vs_1conn", "<= 1.3"},
	{"decide_10k_vs_1_policy", "<= 20"},
	{"capture_pod_vs_node_1conn_up", "pod ÷ node"},
	{"capture_pod_vs_node_1conn_down", "pod ÷ node"},
	{"capture_pod_vs_node_cpu_per_gb", "pod ÷ node"},
	{"capture_pod_vs_node_rr1k_p50", "pod ÷ node"},
	{"capture_pod_vs_node_cpu_per_rr1k", "pod ÷ node"},
	{"capture_pod_vs_node_connect_rate", "pod ÷ node"},
	{"capture_pod_vs_node_cpu_per_conn", "pod ÷ node"},
	{"capture_pod_vs_node_same_node_1conn_up", "pod ÷ node"},
	{"capture_pod_vs_node_same_node_1conn_down", "pod ÷ node"},
	{"capture_pod_vs_node_same_node_cpu_per_gb", "pod ÷ node"},
	{"capture_pod_vs_node_same_node_rr1k_p50", "pod ÷ node"},
	{"capture_pod_vs_node_same_node_cpu_per_rr1k", "pod ÷ node"},
	{"capture_pod_vs_node_same_node_connect_rate", "pod ÷ node"},
	{"capture_pod_vs_node_same_node_cpu_per_conn", "pod ÷ node"},
}

// otherSuites are the top-level keys of results.json that other suites
// write (scripts/bench-inventory, which make bench runs after ferrybench and
// which prints its own keys); write keeps them, and their definitions.
var otherSuites = []string{"inventory_scale", "apply_cost_100k_vs_1k", "inventory_rss_mib_100k_pods"}

// write stores results.json: the keys at the top level, then raw, meta, and
// what other suites recorded in the file before.
func (r *recorder) write(path string) error {
	out := map[string]any{}
	var before struct {
		Meta struct {
			Definitions map[string]any `json:"definitions"`
		} `json:"meta"`
	}
	old := map[string]json.RawMessage{}
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &old)
		json.Unmarshal(b, &before)
	}
	defs, _ := r.Meta["definitions"].(map[string]string)
	for _, k := range otherSuites {
		if v, ok := old[k]; ok {
			out[k] = v
			if d, ok := before.Meta.Definitions[k].(string); ok && defs != nil {
				defs[k] = d
			}
		}
	}
	for k, v := range r.Keys {
		out[k] = v
	}
	out["raw"] = r.Raw
	out["meta"] = r.Meta
	if len(r.Skipped) > 0 {
		out["skipped"] = r.Skipped
	}
	if len(r.Errors) > 0 {
		out["errors"] = r.Errors
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func fmtStat(s *stat) string {
	if s == nil || len(s.Rounds) == 0 {
		return "-"
	}
	f := func(v float64) string {
		switch a := math.Abs(v); {
		case a >= 100:
			return fmt.Sprintf("%.0f", v)
		case a >= 10:
			return fmt.Sprintf("%.1f", v)
		default:
			return fmt.Sprintf("%.2f", v)
		}
	}
	if len(s.Rounds) == 1 {
		return f(s.Median)
	}
	return f(s.Min) + "/" + f(s.Median) + "/" + f(s.Max)
}

// table prints the keys, then each benchmark's raw figures per peer.
func (r *recorder) table(w io.Writer, peerOrder []string) {
	fmt.Fprintf(w, "\nHeadline figures (Ferry ÷ peer, same round; min/median/max over rounds)\n")
	fmt.Fprintf(w, "%-42s %-24s %s\n", "key", "value", "target")
	for _, k := range keyOrder {
		fmt.Fprintf(w, "%-42s %-24s %s\n", k.name, fmtStat(r.Keys[k.name]), k.target)
	}
	benches := make([]string, 0, len(r.Raw))
	for b := range r.Raw {
		benches = append(benches, b)
	}
	sort.Strings(benches)
	for _, b := range benches {
		metricSet := map[string]string{}
		for _, ms := range r.Raw[b] {
			for m, s := range ms {
				metricSet[m] = s.Unit
			}
		}
		metrics := make([]string, 0, len(metricSet))
		for m := range metricSet {
			metrics = append(metrics, m)
		}
		sort.Strings(metrics)
		fmt.Fprintf(w, "\n%s\n%-12s", b, "peer")
		for _, m := range metrics {
			h := m
			if u := metricSet[m]; u != "" {
				h += " (" + u + ")"
			}
			fmt.Fprintf(w, " %-22s", h)
		}
		fmt.Fprintln(w)
		for _, p := range peerOrder {
			ms, ok := r.Raw[b][p]
			if !ok {
				continue
			}
			fmt.Fprintf(w, "%-12s", p)
			for _, m := range metrics {
				fmt.Fprintf(w, " %-22s", fmtStat(ms[m]))
			}
			fmt.Fprintln(w)
		}
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintln(w, "\nskipped:")
		for k, v := range r.Skipped {
			fmt.Fprintf(w, "  %s: %s\n", k, strings.TrimSpace(v))
		}
	}
	if len(r.Errors) > 0 {
		fmt.Fprintln(w, "\nerrors:")
		for _, e := range r.Errors {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
}
