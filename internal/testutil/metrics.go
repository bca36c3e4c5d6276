package testutil

import (
	"fmt"
	"io"
	"slices"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of an agent's /metrics endpoint, keyed by family
// name. Tests read counters, gauges and untyped samples through Sum and
// LabelValues; histograms and summaries are kept but not summed.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses the Prometheus text exposition format.
func ParseMetrics(r io.Reader) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	m, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("testutil: parse metrics: %w", err)
	}
	return m, nil
}

// Sum adds the values of the samples of family name whose labels include
// every pair in labels (name, value, name, value...). A missing family sums
// to 0.
func (m Metrics) Sum(name string, labels ...string) float64 {
	var total float64
	for _, s := range m.matching(name, labels) {
		switch {
		case s.Counter != nil:
			total += s.Counter.GetValue()
		case s.Gauge != nil:
			total += s.Gauge.GetValue()
		case s.Untyped != nil:
			total += s.Untyped.GetValue()
		}
	}
	return total
}

// LabelValues returns the distinct values of label on the samples of family
// name, in order of appearance.
func (m Metrics) LabelValues(name, label string) []string {
	var out []string
	for _, s := range m.matching(name, nil) {
		for _, l := range s.GetLabel() {
			if l.GetName() == label && !slices.Contains(out, l.GetValue()) {
				out = append(out, l.GetValue())
			}
		}
	}
	return out
}

func (m Metrics) matching(name string, labels []string) []*dto.Metric {
	f := m[name]
	if f == nil {
		return nil
	}
	var out []*dto.Metric
	for _, s := range f.GetMetric() {
		if hasLabels(s, labels) {
			out = append(out, s)
		}
	}
	return out
}

func hasLabels(s *dto.Metric, pairs []string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		found := false
		for _, l := range s.GetLabel() {
			if l.GetName() == pairs[i] {
				found = l.GetValue() == pairs[i+1]
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
