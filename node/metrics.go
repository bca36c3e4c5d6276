package node

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Values of the connection_security_policy and reporter labels, as Istio names them.
const (
	SecurityMutualTLS = "mutual_tls"
	SecurityUnknown   = "unknown"
	ReporterSource    = "source"
	ReporterDest      = "destination"
)

// trafficLabelNames is Istio's label set for the four TCP counters, in
// ztunnel's order, so dashboards and Kiali queries work unchanged.
var trafficLabelNames = []string{
	"reporter",
	"source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
	"source_principal", "source_app", "source_version", "source_cluster",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_canonical_service", "destination_canonical_revision",
	"destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy",
}

// Metrics holds every metric the agent exports, on a private registry.
type Metrics struct {
	Registry *prometheus.Registry

	opened, closed, sent, received *prometheus.CounterVec
	// conns caches each label set's handles (TrafficLabels →
	// *ConnCounters): a lookup by 23 label values costs four hashes and
	// validations per connection otherwise. It grows with the label sets
	// seen, as the registry's series do; neither is pruned (a pruning of
	// series must drop the entry too).
	conns sync.Map

	EnrolledPods   prometheus.Gauge
	CertExpiry     *prometheus.GaugeVec   // identity
	CARequests     *prometheus.CounterVec // result
	PolicyDecision *prometheus.CounterVec // direction, result, reason
	InventoryError prometheus.Gauge
	PolicyErrors   *prometheus.GaugeVec   // kind, namespace
	TunnelRejects  *prometheus.CounterVec // reason
	HTTPShed       *prometheus.CounterVec // server, reason: see shedListener
	CNIRequests    *prometheus.CounterVec // op, result: the ferry-cni plugin's requests (--capture pod)
}

// NewMetrics creates and registers the agent's metrics.
func NewMetrics(version string) *Metrics {
	r := prometheus.NewRegistry()
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "istio", Name: name, Help: help}, trafficLabelNames)
	}
	m := &Metrics{
		Registry: r,
		opened:   counter("tcp_connections_opened_total", "Total TCP connections opened."),
		closed:   counter("tcp_connections_closed_total", "Total TCP connections closed."),
		sent:     counter("tcp_sent_bytes_total", "Bytes sent during response over a TCP connection."),
		received: counter("tcp_received_bytes_total", "Bytes received during request over a TCP connection."),
		EnrolledPods: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "ferry", Subsystem: "node", Name: "enrolled_pods",
			Help: "Pods on this node whose traffic is captured."}),
		CertExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "ferry", Subsystem: "certs", Name: "expiry_timestamp_seconds",
			Help: "When the certificate served for an identity expires (Unix time)."}, []string{"identity"}),
		CARequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "certs", Name: "ca_requests_total",
			Help: "Certificate requests to the CA, by result."}, []string{"result"}),
		PolicyDecision: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "authz", Name: "decisions_total",
			Help: "Authorization decisions, by direction, result and reason."}, []string{"direction", "result", "reason"}),
		InventoryError: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "ferry", Subsystem: "inventory", Name: "rejected_objects",
			Help: "Objects the inventory source currently rejects (malformed manifests or policies)."}),
		PolicyErrors: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "ferry", Name: "policy_errors",
			Help: "Policy objects with errors, enforced fail-closed or by their last good version (ferry policies shows how), by kind and namespace."},
			[]string{"kind", "namespace"}),
		TunnelRejects: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "tunnel", Name: "rejected_total",
			Help: "Connections or streams refused before any byte reached the destination, by reason (policy includes connections a policy change refused while their dial was in flight)."}, []string{"reason"}),
		HTTPShed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "node", Name: "http_connections_shed_total",
			Help: "Connections the metrics and readiness servers closed to stay under their cap, by server and by whether the connection was idle or busy."},
			[]string{"server", "reason"}),
		CNIRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "cni", Name: "requests_total",
			Help: "Requests of the ferry-cni plugin (--capture pod), by operation (add, del) and result (ok, error)."}, []string{"op", "result"}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "istio", Name: "build", Help: "Istio component build info."},
		[]string{"component", "tag"})
	build.WithLabelValues("ztunnel", version).Set(1)
	r.MustRegister(m.opened, m.closed, m.sent, m.received, build, m.EnrolledPods, m.CertExpiry, m.CARequests,
		m.PolicyDecision, m.InventoryError, m.PolicyErrors, m.TunnelRejects, m.HTTPShed, m.CNIRequests,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// TrafficLabels are the label values of one connection's Istio TCP metrics.
// Empty values are reported as "unknown", as Istio does.
type TrafficLabels struct {
	Reporter                                                 string
	SourceWorkload, SourceNamespace, SourcePrincipal         string
	SourceApp, SourceVersion                                 string
	DestinationWorkload, DestinationNamespace                string
	DestinationPrincipal, DestinationApp, DestinationVersion string
	// DestinationService is the Service's host name
	// (NAME.NAMESPACE.svc.DOMAIN), as Istio reports it.
	DestinationService, DestinationServiceName string
	DestinationServiceNamespace                string
	ResponseFlags, SecurityPolicy              string
}

func (l TrafficLabels) values() []string {
	u := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	flags := l.ResponseFlags
	if flags == "" {
		flags = "-"
	}
	return []string{
		l.Reporter,
		u(l.SourceWorkload), u(l.SourceWorkload), "latest", u(l.SourceNamespace),
		u(l.SourcePrincipal), u(l.SourceApp), u(l.SourceVersion), "Kubernetes",
		u(l.DestinationService), u(l.DestinationServiceNamespace), u(l.DestinationServiceName),
		u(l.DestinationWorkload), u(l.DestinationWorkload), "latest",
		u(l.DestinationNamespace), u(l.DestinationPrincipal), u(l.DestinationApp), u(l.DestinationVersion),
		"Kubernetes",
		"tcp", flags, u(l.SecurityPolicy),
	}
}

// ConnCounters are the counter handles of one label set, looked up once and
// shared by its connections, so counting costs no label lookup.
type ConnCounters struct {
	opened, closed, sent, received prometheus.Counter
}

// Open counts a connection as opened and returns its counter handles.
func (m *Metrics) Open(l TrafficLabels) *ConnCounters {
	c, ok := m.conns.Load(l)
	if !ok {
		v := l.values()
		c, _ = m.conns.LoadOrStore(l, &ConnCounters{
			opened: m.opened.WithLabelValues(v...), closed: m.closed.WithLabelValues(v...),
			sent: m.sent.WithLabelValues(v...), received: m.received.WithLabelValues(v...),
		})
	}
	cc := c.(*ConnCounters)
	cc.opened.Inc()
	return cc
}

// Sent counts n bytes sent to the client (the response direction).
func (c *ConnCounters) Sent(n int) { c.sent.Add(float64(n)) }

// Received counts n bytes received from the client (the request direction).
func (c *ConnCounters) Received(n int) { c.received.Add(float64(n)) }

// Close counts the connection as closed.
func (c *ConnCounters) Close() { c.closed.Inc() }
