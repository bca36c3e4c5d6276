package node

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymesh/ferry/tunnel"
)

// stateCollector reports, when scraped, gauges read from live state: pool
// connections, open proxied connections by direction, and the BPF program's
// map occupancy and per-verdict counters.
type stateCollector struct {
	a      *Agent
	client *tunnel.Client

	poolConns, poolStreams, openConns, bpfPods, bpfVerdicts *prometheus.Desc
}

func newStateCollector(a *Agent, client *tunnel.Client) *stateCollector {
	return &stateCollector{
		a: a, client: client,
		poolConns:   prometheus.NewDesc("ferry_tunnel_pool_connections", "HBONE client connections in the pool.", nil, nil),
		poolStreams: prometheus.NewDesc("ferry_tunnel_pool_streams", "HBONE streams open on the pool's connections.", nil, nil),
		openConns:   prometheus.NewDesc("ferry_tunnel_open_connections", "Open proxied connections, by direction.", []string{"direction"}, nil),
		bpfPods:     prometheus.NewDesc("ferry_bpf_enrolled_pods_map_entries", "Entries in the BPF enrolled-pods map.", nil, nil),
		bpfVerdicts: prometheus.NewDesc("ferry_bpf_lookups_total", "Connections the sk_lookup program handled, by verdict.",
			[]string{"verdict"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.poolConns
	ch <- c.poolStreams
	ch <- c.openConns
	ch <- c.bpfPods
	ch <- c.bpfVerdicts
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.poolConns, prometheus.GaugeValue, float64(c.client.Conns()))
	open := map[tunnel.Direction]int{tunnel.DirOutbound: 0, tunnel.DirInbound: 0, tunnel.DirInboundPlaintext: 0}
	streams := 0
	for _, ci := range c.a.conns.Connections() {
		open[ci.Direction]++
		if ci.Direction == tunnel.DirOutbound && ci.Mode == "hbone" {
			streams++ // each outbound HBONE connection is one stream in the pool
		}
	}
	ch <- prometheus.MustNewConstMetric(c.poolStreams, prometheus.GaugeValue, float64(streams))
	for d, n := range open {
		ch <- prometheus.MustNewConstMetric(c.openConns, prometheus.GaugeValue, float64(n), string(d))
	}
	if r := c.a.redirect; r != nil {
		ch <- prometheus.MustNewConstMetric(c.bpfPods, prometheus.GaugeValue, float64(len(r.pods())))
		if counts, err := r.counters(); err == nil {
			for v, n := range counts {
				ch <- prometheus.MustNewConstMetric(c.bpfVerdicts, prometheus.CounterValue, float64(n), v.String())
			}
		}
	}
}
