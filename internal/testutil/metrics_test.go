package testutil

import (
	"slices"
	"strings"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	text := `# HELP istio_tcp_connections_opened_total x
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="destination",source_principal="spiffe://cluster.local/ns/a/sa/b",connection_security_policy="mutual_tls"} 3
istio_tcp_connections_opened_total{reporter="source",connection_security_policy="mutual_tls",odd="q\"u\\o"} 2
ferry_node_enrolled_pods 4
`
	m, err := ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	name := "istio_tcp_connections_opened_total"
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{name, []string{"connection_security_policy", "mutual_tls"}, 5},
		{name, []string{"reporter", "destination", "source_principal", "spiffe://cluster.local/ns/a/sa/b"}, 3},
		{name, []string{"reporter", "nobody"}, 0},
		{"ferry_node_enrolled_pods", nil, 4},
		{"absent_total", nil, 0},
	} {
		if got := m.Sum(tc.name, tc.labels...); got != tc.want {
			t.Errorf("Sum(%s, %q) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if got := m.LabelValues(name, "odd"); !slices.Equal(got, []string{`q"u\o`}) {
		t.Errorf("escaped label values = %q", got)
	}
	if got := m.LabelValues(name, "reporter"); !slices.Equal(got, []string{"destination", "source"}) {
		t.Errorf("reporter values = %q", got)
	}
	if _, err := ParseMetrics(strings.NewReader("bad{ 1\n")); err == nil {
		t.Error("ParseMetrics accepted a malformed line")
	}
}
