package node

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestConnCountersShared checks that connections with one label set share
// its cached handles and count on the one series, and that another label
// set gets series of its own.
func TestConnCountersShared(t *testing.T) {
	m := NewMetrics("test")
	a := TrafficLabels{Reporter: ReporterSource, SourceWorkload: "client", DestinationWorkload: "server", SecurityPolicy: SecurityMutualTLS}
	b := a
	b.DestinationWorkload = "other"

	c1, c2, c3 := m.Open(a), m.Open(a), m.Open(b)
	if c1 != c2 {
		t.Error("two connections of one label set got different handles")
	}
	if c1 == c3 {
		t.Error("two label sets share handles")
	}
	c1.Received(100)
	c2.Received(20)
	c2.Sent(7)
	c1.Close()
	c3.Close()

	va, vb := a.values(), b.values()
	for _, tc := range []struct {
		name string
		got  float64
		want float64
	}{
		{"opened a", value(t, m.opened.WithLabelValues(va...)), 2},
		{"opened b", value(t, m.opened.WithLabelValues(vb...)), 1},
		{"received a", value(t, m.received.WithLabelValues(va...)), 120},
		{"sent a", value(t, m.sent.WithLabelValues(va...)), 7},
		{"closed a", value(t, m.closed.WithLabelValues(va...)), 1},
		{"closed b", value(t, m.closed.WithLabelValues(vb...)), 1},
		{"received b", value(t, m.received.WithLabelValues(vb...)), 0},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}
