package node

import (
	"cmp"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/tunnel"
)

// observer turns the tunnel's connection events into Istio metrics and one
// access-log line per connection.
type observer struct{ a *Agent }

// connObserver is one connection's metric handles and access-log fields.
//
// The tunnel reports a connection before its authorization, so the connection
// is counted as opened at its first byte or at its close, whichever comes
// first: a refused connection is then counted once, with response_flags DENY,
// as ztunnel reports it.
type connObserver struct {
	a          *Agent
	info       tunnel.ConnInfo
	labels     TrafficLabels
	once       sync.Once
	counters   *ConnCounters
	sent, recv atomic.Int64
}

// Opened implements tunnel.Observer.
func (o *observer) Opened(info tunnel.ConnInfo) tunnel.ConnObserver {
	c := &connObserver{a: o.a, info: info, labels: o.a.trafficLabels(info)}
	if info.Direction == tunnel.DirOutbound && info.DialledDst.IsValid() && c.labels.DestinationServiceName != "" {
		o.a.picks.add(c.labels.DestinationServiceNamespace+"/"+c.labels.DestinationServiceName, info.Picked)
	}
	return c
}

// open counts the connection, once, with flags as its response_flags.
func (c *connObserver) open(flags string) *ConnCounters {
	c.once.Do(func() {
		l := c.labels
		l.ResponseFlags = flags
		c.counters = c.a.metrics.Open(l)
	})
	return c.counters
}

// trafficLabels derives Istio's labels for a connection. Principals come only
// from verified identities: the peer certificate inbound, the local pod's own
// certificate outbound.
func (a *Agent) trafficLabels(info tunnel.ConnInfo) TrafficLabels {
	l := TrafficLabels{Reporter: ReporterSource, SecurityPolicy: SecurityUnknown}
	if info.Direction != tunnel.DirOutbound {
		l.Reporter = ReporterDest
	}
	if info.Mode == "hbone" {
		l.SecurityPolicy = SecurityMutualTLS
		l.SourcePrincipal = info.SrcIdentity.String()
		l.DestinationPrincipal = info.DstIdentity.String()
	}
	if s := a.current(); s != nil {
		if w, ok := s.view.workload(info.Src.Addr()); ok {
			l.SourceWorkload, l.SourceNamespace = workloadName(w), w.Namespace
			l.SourceApp, l.SourceVersion = appLabels(w.Labels)
		}
		w, ok := s.view.workload(info.Dst.Addr())
		if ok {
			l.DestinationWorkload, l.DestinationNamespace = workloadName(w), w.Namespace
			l.DestinationApp, l.DestinationVersion = appLabels(w.Labels)
			if info.Mode == "hbone" && info.Direction == tunnel.DirInbound && w.Local {
				// Inbound, the destination principal is our own pod's, whose
				// certificate this agent presented.
				l.DestinationPrincipal = w.Identity().String()
			}
		}
		// The Service: the one whose ClusterIP the source dialled, else
		// inbound (over HBONE only the pod's address travels) the one
		// Service that selects the pod on this port, as ztunnel guesses.
		svc, found := s.view.serviceAt(info.DialledDst)
		if !found && ok && info.Direction != tunnel.DirOutbound && !info.DialledDst.IsValid() {
			svc, found = s.view.serviceOf(w, info.Dst.Port())
		}
		if found {
			l.DestinationService = svc.Name + "." + svc.Namespace + ".svc." + a.cfg.ClusterDomain
			l.DestinationServiceName, l.DestinationServiceNamespace = svc.Name, svc.Namespace
		}
	}
	return l
}

// workloadName is the pod's workload: its canonical name label if set, else
// its app label, else the pod name.
func workloadName(w *Workload) string {
	for _, k := range []string{"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"} {
		if v := w.Labels[k]; v != "" {
			return v
		}
	}
	return w.Name
}

func appLabels(labels map[string]string) (app, version string) {
	app = labels["app"]
	if app == "" {
		app = labels["app.kubernetes.io/name"]
	}
	version = labels["version"]
	if version == "" {
		version = labels["app.kubernetes.io/version"]
	}
	return app, version
}

func (c *connObserver) Received(n int) {
	c.recv.Add(int64(n))
	c.open("-").Received(n)
}

func (c *connObserver) Sent(n int) {
	c.sent.Add(int64(n))
	c.open("-").Sent(n)
}

// Closed counts the close and writes the connection's access-log line.
func (c *connObserver) Closed(result, reason string) {
	flags := "-"
	switch {
	case result == "denied":
		flags = "DENY"
		c.a.metrics.TunnelRejects.WithLabelValues("policy").Inc()
	case strings.HasPrefix(reason, "dial:"):
		flags = "CONNECT"
		c.a.metrics.TunnelRejects.WithLabelValues("upstream unavailable").Inc()
	}
	c.open(flags).Close()
	level := slog.LevelInfo
	if result != "ok" {
		level = slog.LevelWarn
	}
	ctx := context.Background()
	if !c.a.log.Enabled(ctx, level) {
		return // the line's fields cost allocations
	}
	c.a.log.LogAttrs(ctx, level, "connection complete",
		slog.String("direction", string(c.info.Direction)),
		slog.String("mode", c.info.Mode),
		slog.String("src.addr", c.info.Src.String()),
		slog.String("src.workload", c.labels.SourceWorkload),
		slog.String("src.namespace", c.labels.SourceNamespace),
		slog.String("src.identity", c.info.SrcIdentity.String()),
		slog.String("dst.addr", c.info.Dst.String()),
		slog.String("dst.service", c.labels.DestinationService),
		slog.String("dst.picked_by", pickedBy(c.info)),
		slog.String("dst.workload", c.labels.DestinationWorkload),
		slog.String("dst.namespace", c.labels.DestinationNamespace),
		slog.String("dst.identity", cmp.Or(c.info.DstIdentity.String(), c.labels.DestinationPrincipal)),
		slog.Int64("bytes_sent", c.sent.Load()),
		slog.Int64("bytes_recv", c.recv.Load()),
		slog.Duration("duration", time.Since(c.info.Start).Round(time.Microsecond)),
		slog.String("result", result),
		slog.String("reason", reason),
	)
}

// pickedBy names who chose the endpoint of a connection made to a Service
// address: Ferry itself (it saw the address), kube-proxy (a NAT had already
// rewritten it), or "-" for a connection made to a pod.
func pickedBy(info tunnel.ConnInfo) string {
	switch {
	case info.Picked:
		return "ferry"
	case info.DialledDst.IsValid():
		return "kube-proxy"
	}
	return "-"
}

// connections implements adminSource.
func (a *Agent) connections() []ConnectionDump {
	out := []ConnectionDump{}
	s := a.current()
	ns := func(ap netip.AddrPort) string {
		if s == nil {
			return ""
		}
		if w, ok := s.view.workload(ap.Addr()); ok {
			return w.Namespace
		}
		return ""
	}
	for _, c := range a.conns.Connections() {
		proto := "TCP"
		if c.Mode == "hbone" {
			proto = "HBONE"
		}
		out = append(out, ConnectionDump{
			Direction: string(c.Direction), Source: c.Src.String(), Destination: c.Dst.String(),
			SourceNS: ns(c.Src), DestNS: ns(c.Dst),
			SourceID: c.SrcIdentity.String(), DestID: c.DstIdentity.String(), Protocol: proto,
			BytesSent: c.BytesSent, BytesRecv: c.BytesReceived, Started: c.Start,
		})
	}
	return out
}
