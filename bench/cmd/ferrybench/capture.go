package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrymesh/ferry/internal/netns"
	"github.com/ferrymesh/ferry/internal/testbed"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// The capture section (issue 22) measures Ferry's agents with --capture pod
// against the same agents with --capture node, on internal/testbed's default
// layout, the one with real pod network namespaces (LayoutFabric: each pod
// behind a veth to its node, the nodes on a bridge). It brings up one such
// testbed per mode, side by side, each running two real agents with eBPF
// redirection and, in pod mode, the real ferry-cni plugin for every pod;
// the load generator's sockets live in the client pod's namespace and the
// sink listens in the server pods' namespaces. Both modes run interleaved in
// every round (the suite's slices, in rotating order), and every key is the
// pod-mode figure divided by the node-mode one from the same round.

// The capture testbeds' pods, in a namespace enrolled in the mesh: the
// client and a same-node server on node1, a server on node2. The testbed
// numbers pods in order per node, so the client and the node2 server get
// clientPod's and serverPod's addresses; newCaptureBed checks.
var (
	captureSpec = testbed.Spec{
		Namespaces: []testbed.Namespace{{Name: "bench", Labels: []string{"istio.io/dataplane-mode=ambient"}}},
		Pods: []testbed.PodSpec{
			{Namespace: "bench", Name: "client", Node: "node1", ServiceAccount: "client"},
			{Namespace: "bench", Name: "local", Node: "node1", ServiceAccount: "local"},
			{Namespace: "bench", Name: "server", Node: "node2", ServiceAccount: "server"},
		},
	}
	localPod = netip.MustParseAddr("198.18.1.3") // the same-node server
)

// capturePort is the sink's port in the capture testbeds' server pods; the
// agents capture every TCP port of an enrolled pod.
const capturePort = 20001

// captureModes are the agents' --capture values the section compares, in
// the order their testbeds come up; each mode's peer is "ferry-" + mode.
var captureModes = []string{"node", "pod"}

// captureDefinitions define the section's keys (meta.definitions).
var captureDefinitions = map[string]string{
	"capture_pod_vs_node_1conn_up":               "MB/s of one connection client pod → server pod on the other node, ferry --capture pod ÷ --capture node, same round (capture section: internal/testbed's fabric layout with pod namespaces, real agents, eBPF redirection)",
	"capture_pod_vs_node_1conn_down":             "the same, server → client",
	"capture_pod_vs_node_cpu_per_gb":             "both agents' CPU per GB moved (up+down, cross-node), pod ÷ node",
	"capture_pod_vs_node_rr1k_p50":               "p50 latency of 1 KiB request/response on one cross-node connection, pod ÷ node",
	"capture_pod_vs_node_cpu_per_rr1k":           "both agents' CPU per 1 KiB request/response, cross-node, pod ÷ node",
	"capture_pod_vs_node_connect_rate":           "new connections/s (connect, one byte back, close) cross-node, pod ÷ node",
	"capture_pod_vs_node_cpu_per_conn":           "both agents' CPU per new cross-node connection, pod ÷ node",
	"capture_pod_vs_node_same_node_1conn_up":     "as capture_pod_vs_node_1conn_up, client and server pods on the same node",
	"capture_pod_vs_node_same_node_1conn_down":   "as capture_pod_vs_node_1conn_down, same node",
	"capture_pod_vs_node_same_node_cpu_per_gb":   "as capture_pod_vs_node_cpu_per_gb, same node (the node's agent does both ends)",
	"capture_pod_vs_node_same_node_rr1k_p50":     "as capture_pod_vs_node_rr1k_p50, same node",
	"capture_pod_vs_node_same_node_cpu_per_rr1k": "as capture_pod_vs_node_cpu_per_rr1k, same node",
	"capture_pod_vs_node_same_node_connect_rate": "as capture_pod_vs_node_connect_rate, same node",
	"capture_pod_vs_node_same_node_cpu_per_conn": "as capture_pod_vs_node_cpu_per_conn, same node",
}

// captureBed is one testbed of the capture section, its agents running with
// --capture mode. cross and same are the ways through it to the server on
// the other node and to the one on the client's node.
type captureBed struct {
	mode        string
	tb          *testbed.Testbed
	cross, same *peer
}

// captureSection holds the section's testbeds, in captureModes order.
type captureSection struct {
	beds []*captureBed
}

// peers returns each mode's peer to the same-node server or the other
// node's.
func (c *captureSection) peers(sameNode bool) []*peer {
	var out []*peer
	for _, b := range c.beds {
		if sameNode {
			out = append(out, b.same)
		} else {
			out = append(out, b.cross)
		}
	}
	return out
}

// close removes the testbeds.
func (c *captureSection) close() error {
	var errs []error
	for _, b := range c.beds {
		errs = append(errs, b.tb.Down(false, nil))
	}
	return errors.Join(errs...)
}

// startCapture brings up one testbed per capture mode with the sink
// listening in its server pods, and checks that a connection through each
// of its paths is tunnelled. On error it removes what it made; the agents'
// logs stay under dir.
func startCapture(ctx context.Context, log *slog.Logger, ferry, dir string, sk *sink) (*captureSection, error) {
	c := &captureSection{}
	for _, mode := range captureModes {
		tb, err := testbed.Up(ctx, testbed.Config{RunDir: filepath.Join(dir, "capture-"+mode), Spec: captureSpec,
			Capture: mode, LogLevel: "warn", Ferry: ferry, ReadyTimeout: time.Minute})
		if err != nil {
			return nil, errors.Join(fmt.Errorf("capture %s: %w", mode, err), c.close()) // Up removed its own
		}
		log.Info("testbed up", "prefix", tb.Prefix, "capture", mode)
		b := &captureBed{mode: mode, tb: tb}
		c.beds = append(c.beds, b)
		if err := b.setup(ctx, sk); err != nil {
			return nil, errors.Join(fmt.Errorf("capture %s: %w", mode, err), c.close())
		}
	}
	return c, nil
}

// setup checks the pods' addresses, lets the namespaces reuse TIME_WAIT
// ports as tune does, starts the sink in the server pods, makes the peers
// and checks that each one's connections are tunnelled.
func (b *captureBed) setup(ctx context.Context, sk *sink) error {
	client, _ := b.tb.Pod("bench/client")
	local, _ := b.tb.Pod("bench/local")
	server, _ := b.tb.Pod("bench/server")
	for _, c := range []struct {
		got  string
		want netip.Addr
	}{{client.IP, clientPod}, {local.IP, localPod}, {server.IP, serverPod}} {
		if c.got != c.want.String() {
			return fmt.Errorf("testbed gave %s where the bench expects %s", c.got, c.want)
		}
	}
	node1, node2 := b.tb.Nodes[0], b.tb.Nodes[1]
	for _, ns := range []string{client.Netns, local.Netns, server.Netns, node1.Netns, node2.Netns} {
		if err := sysctl1(ns, "net/ipv4/tcp_tw_reuse"); err != nil {
			return err
		}
	}
	if err := sk.listen(ctx, server.Netns, serverPod, []uint16{capturePort}); err != nil {
		return err
	}
	if err := sk.listen(ctx, local.Netns, localPod, []uint16{capturePort}); err != nil {
		return err
	}
	var agents []int
	for _, n := range b.tb.Nodes {
		pid, ok := b.tb.AgentPID(n.Name)
		if !ok {
			return fmt.Errorf("agent on %s is not running (log %s)", n.Name, n.AgentLog)
		}
		agents = append(agents, pid)
	}
	mk := func(dst netip.Addr) *peer {
		p := &peer{name: "ferry-" + b.mode, port: capturePort, agents: agents,
			adminA: "127.0.0.1:15000", adminB: "127.0.0.1:15000", adminNS: [2]string{node1.Netns, node2.Netns}}
		p.reach.ns, p.reach.dst = client.Netns, netip.AddrPortFrom(dst, capturePort)
		return p
	}
	b.cross, b.same = mk(serverPod), mk(localPod)
	if err := tunnelled(ctx, b.cross, node2); err != nil {
		return err
	}
	return tunnelled(ctx, b.same, node1)
}

// tunnelled connects through p until the agent on the destination node
// (dst) counts one more mutual-TLS connection it received: the sink's
// answer alone does not tell a captured connection from one that went
// around the agents.
func tunnelled(ctx context.Context, p *peer, dst testbed.Node) error {
	opened := func() (float64, error) {
		resp, err := testbed.HTTPClient(dst.Netns, 5*time.Second).Get("http://" + dst.IP + ":15020/metrics")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		m, err := testutil.ParseMetrics(resp.Body)
		if err != nil {
			return 0, err
		}
		return m.Sum("istio_tcp_connections_opened_total", "reporter", "destination", "connection_security_policy", "mutual_tls"), nil
	}
	return waitFor(ctx, 30*time.Second, func() error {
		before, err := opened()
		if err != nil {
			return err
		}
		if err := (target{ns: p.reach.ns, dst: p.reach.dst}).connect(ctx); err != nil {
			return err
		}
		return waitFor(ctx, 2*time.Second, func() error {
			after, err := opened()
			if err == nil && after <= before {
				err = fmt.Errorf("%s: a connection to %s was not tunnelled (%s's agent counts %v mutual TLS connections, as before)", p.name, p.reach.dst, dst.Name, after)
			}
			return err
		})
	})
}

// sysctl1 writes 1 to the sysctl at path (under /proc/sys) in the named
// namespace.
func sysctl1(ns, path string) error {
	err := netns.DoNamed(ns, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", path), []byte("1"), 0o644)
	})
	if err != nil {
		return fmt.Errorf("sysctl %s in %s: %w", path, ns, err)
	}
	return nil
}

// captureBenchmarks runs the section: throughput, 1 KiB request/response
// and connect rate through both modes, interleaved, to the other node's
// server and then to the same node's, and records each pod ÷ node ratio.
func (s *suite) captureBenchmarks(ctx context.Context) {
	if s.capture == nil {
		return
	}
	for _, path := range []struct {
		name, key string
		sameNode  bool
	}{{"cross-node", "", false}, {"same-node", "same_node_", true}} {
		if path.sameNode && s.cfg.crossNodeOnly {
			s.rec.Skipped["capture/same-node"] = "smoke run: the same-node path (the capture_pod_vs_node_same_node_* keys, measured by the same code as the cross-node one) runs in full runs only"
			continue
		}
		peers := s.capture.peers(path.sameNode)
		bench := "capture/" + path.name + "/"
		tput := s.tputOver(ctx, peers, bench+"tput-1conn/")
		for _, dir := range []string{"up", "down"} {
			s.podVsNode(path.key+"1conn_"+dir, func(name string) (float64, bool) {
				r, ok := tput[dir][name]
				return r.mbps, ok
			})
		}
		s.podVsNode(path.key+"cpu_per_gb", func(name string) (float64, bool) { return cpuPerGB(tput, name) })
		rr := s.rrOver(ctx, peers, 1024, bench+"rr-1k")
		s.podVsNode(path.key+"rr1k_p50", func(name string) (float64, bool) { r, ok := rr[name]; return r.p50, ok })
		s.podVsNode(path.key+"cpu_per_rr1k", func(name string) (float64, bool) { r, ok := rr[name]; return r.cpuPerReq, ok })
		conn := s.connectOver(ctx, peers, bench+"connect-rate")
		s.podVsNode(path.key+"connect_rate", func(name string) (float64, bool) { r, ok := conn[name]; return r[0], ok })
		s.podVsNode(path.key+"cpu_per_conn", func(name string) (float64, bool) { r, ok := conn[name]; return r[1], ok })
	}
}

// podVsNode records the key capture_pod_vs_node_<key>: of's figure for the
// pod-mode peer divided by the node-mode one's, when both have one.
func (s *suite) podVsNode(key string, of func(peer string) (float64, bool)) {
	pod, okp := of("ferry-pod")
	node, okn := of("ferry-node")
	if okp && okn && node > 0 {
		s.rec.key("capture_pod_vs_node_"+key, pod/node)
	}
}

// connectDrain is how long a connect-rate slice waits, still measuring, for
// the agents' work of closing its connections.
const connectDrain = 300 * time.Millisecond

// connectOver measures the connect rate through each of peers, interleaved
// (unlike connectRate, which runs each peer once for the whole time), and
// records its figures under bench. It returns, by peer name, connections/s
// and the agents' CPU µs per connection.
func (s *suite) connectOver(ctx context.Context, peers []*peer, bench string) map[string][2]float64 {
	lats := map[string][]time.Duration{}
	took := map[string]time.Duration{}
	cpu := s.interleavedOver(peers, bench, func(p *peer, d time.Duration) error {
		lat, err := s.target(p).connectRate(ctx, s.cfg.connWorkers, d)
		lats[p.name] = append(lats[p.name], lat...)
		took[p.name] += d
		time.Sleep(connectDrain)
		if err == nil && len(lat) == 0 {
			err = errors.New("no connection completed")
		}
		return err
	})
	res := map[string][2]float64{}
	for _, p := range peers {
		if used, ok := cpu[p.name]; ok {
			rate, per := s.recordConnect(bench, p, lats[p.name], used, took[p.name])
			res[p.name] = [2]float64{rate, per}
		}
	}
	return res
}

// captureSkip says why the section does not run with these options (the
// selected benchmarks, the -peers filter), or "" when it runs.
func captureSkip(cfg config, e *env, only map[string]bool) string {
	switch {
	case len(cfg.benchmarks) > 0 && !cfg.benchmarks["capture"]:
		return "not selected (-benchmarks)"
	case len(only) > 0 && !only["ferry"]:
		return "-peers does not name ferry"
	}
	if err := have(&e.ferry)(e); err != nil {
		return "ferry: " + err.Error()
	}
	return ""
}
