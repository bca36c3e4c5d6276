package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferrymesh/ferry/bench/gotls"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "gotls" {
		os.Exit(runGoTLS(args[1:]))
	}
	if len(args) > 0 && args[0] == "hold" {
		os.Exit(runHold(args[1:]))
	}
	if len(args) > 0 && args[0] == "active" {
		os.Exit(runActive(args[1:]))
	}
	if len(args) > 0 && args[0] == "tlsserver" {
		os.Exit(runTLSServer(args[1:]))
	}
	if len(args) > 0 && args[0] == "split" {
		os.Exit(runSplit(args[1:]))
	}
	if len(args) > 0 && args[0] == "run" {
		args = args[1:]
	}
	os.Exit(run(args))
}

func run(args []string) int {
	fs := flag.NewFlagSet("ferrybench", flag.ExitOnError)
	cfg := config{}
	fs.IntVar(&cfg.rounds, "rounds", 3, "rounds; every peer runs every benchmark once per round")
	fs.DurationVar(&cfg.dur, "duration", 3*time.Second, "length of each timed measurement")
	idle := fs.String("idle-conns", "2000,10000", "comma-separated counts of idle connections held per peer (memory per connection); the headline keys use the largest")
	fs.IntVar(&cfg.connWorkers, "connect-workers", 8, "parallel connectors (connect rate)")
	fs.IntVar(&cfg.hsWorkers, "handshake-workers", 4, "parallel TLS handshakers")
	fs.IntVar(&cfg.muxConns, "mux-conns", 8, "connections of the multiplexing benchmark")
	fs.IntVar(&cfg.activeConns, "active-conns", 10000, "connections of the active benchmark, each making one 1 KiB request/response per second")
	smoke := fs.Bool("smoke", false, "one round of one second with tiny sizes (CI): checks that every benchmark runs")
	out := fs.String("out", "bench/results.json", "results file")
	dir := fs.String("dir", "", "run directory for configs and logs (default: a new temporary directory, removed unless -keep)")
	keep := fs.Bool("keep", false, "keep the run directory")
	ferryBin := fs.String("ferry", "bin/ferry", "ferry binary")
	baseline := fs.String("baseline", "", "a second ferry binary (say, the commit before a change), run as peer ferry-baseline")
	ghost := fs.String("ghostunnel", "", "ghostunnel binary (peer skipped when empty or missing)")
	istio := fs.String("istio-hbone", "", "bench/istiohbone binary (peer skipped when empty or missing)")
	only := fs.String("peers", "", "comma-separated peers to run (default: all available)")
	verbose := fs.Bool("v", false, "debug logging")
	benchmarks := fs.String("benchmarks", "", "comma-separated benchmarks to run (default all): "+benchmarkNames)
	fs.StringVar(&cfg.profileDir, "profile", "", "directory for CPU profiles of the Go peers' processes during each benchmark of the first round")
	fs.Parse(args)
	for _, b := range strings.Split(*benchmarks, ",") {
		if b = strings.TrimSpace(b); b != "" {
			if !strings.Contains(","+benchmarkNames+",", ","+b+",") {
				fmt.Fprintf(os.Stderr, "ferrybench: unknown benchmark %q (want %s)\n", b, benchmarkNames)
				return 2
			}
			if cfg.benchmarks == nil {
				cfg.benchmarks = map[string]bool{}
			}
			cfg.benchmarks[b] = true
		}
	}
	if *smoke {
		cfg.rounds, cfg.dur, *idle, cfg.connWorkers, cfg.hsWorkers, cfg.muxConns = 1, time.Second, "50,250", 4, 2, 8
		cfg.activeConns = 200
		cfg.crossNodeOnly = true
	}
	for _, f := range strings.Split(*idle, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "ferrybench: -idle-conns: %q is not a positive count\n", f)
			return 2
		}
		cfg.idleConns = append(cfg.idleConns, n)
	}
	slices.Sort(cfg.idleConns)
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if os.Geteuid() != 0 {
		log.Error("ferrybench needs root (network namespaces)")
		return 2
	}
	if cfg.activeConns <= 0 {
		fmt.Fprintf(os.Stderr, "ferrybench: -active-conns: %d is not a positive count\n", cfg.activeConns)
		return 2
	}
	if err := raiseFileLimit(2*max(slices.Max(cfg.idleConns), cfg.activeConns) + 1000); err != nil {
		// Without CAP_SYS_RESOURCE the hard limit stays; a peer process
		// that runs out of descriptors fails the idle benchmark, recorded.
		log.Warn("open files limit", "err", err)
	}
	if cfg.profileDir != "" {
		if err := os.MkdirAll(cfg.profileDir, 0o755); err != nil {
			log.Error("profile dir", "err", err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rec := newRecorder()
	err := runSuite(ctx, log, cfg, rec, suiteOpts{dir: *dir, keep: *keep, ferry: *ferryBin, baseline: *baseline, ghost: *ghost, istio: *istio, only: *only})
	rec.Meta["smoke"] = *smoke
	if werr := rec.write(*out); werr != nil {
		log.Error("write results", "err", werr)
		return 1
	}
	rec.table(os.Stdout, peerNames)
	fmt.Printf("\nresults: %s\n", *out)
	if err != nil {
		log.Error("ferrybench", "err", err)
		return 1
	}
	if len(rec.Errors) > 0 {
		log.Error("some benchmarks failed", "count", len(rec.Errors))
		return 1
	}
	return 0
}

// suiteDefinitions define the data-path suite's keys (meta.definitions).
var suiteDefinitions = map[string]string{
	"path_1conn_up_vs_gotls":       "ferry ÷ go-tls MB/s, one connection, client→server, same round",
	"path_1conn_down_vs_gotls":     "ferry ÷ go-tls MB/s, one connection, server→client",
	"path_1conn_vs_best_peer":      "min over directions of ferry ÷ the fastest other tunnel peer in that direction",
	"path_1conn_vs_direct":         "min over directions (up, down) of ferry ÷ direct TCP MB/s (no tunnel, same veth path), one connection, same round; each direction's ratio is raw path/tput-1conn/DIR ferry vs_direct",
	"cpu_per_gb_vs_gotls":          "both agents' CPU per GB (up+down) ÷ go-tls's",
	"rr1k_added_p50_vs_gotls":      "(ferry p50 − direct p50) ÷ (go-tls p50 − direct p50), 1 KiB request/response on one connection",
	"rr1k_p99_at_80pct_vs_p50":     "ferry 1 KiB request/response p99 under an open-loop load of 80% of its saturating rate ÷ its unloaded p50 (path/rr-1k, one connection, one request at a time), same round; saturating rate = exchanges/s with 16 connections back to back (path/rr-1k-saturated); the load spreads its requests evenly over 16 connections on a fixed schedule, each latency from the request's slot (or its send, when the sender was on time) to its response (path/rr-1k-80pct)",
	"cpu_us_per_rr1k":              "both agents' CPU µs per 1 KiB request/response (= vCPU per 1000 rps ×1000)",
	"cpu_per_rr1k_vs_best_peer":    "cpu_us_per_rr1k ÷ the lowest agents' CPU per 1 KiB request/response among the other tunnel peers that ran (go-tls, ghostunnel, haproxy, nginx, stunnel, istio-hbone), same round",
	"connect_rate_vs_tls_peers":    "ferry new connections/s ÷ the best TLS-per-connection peer's",
	"connect_cpu_vs_best_tls_peer": "both agents' CPU per new connection (path/connect-rate) ÷ the lowest agents' CPU per connection among the TLS-per-connection peers that ran (go-tls, ghostunnel, haproxy, nginx, stunnel), same round",
	"handshakes_per_s_core_x25519": "1 s ÷ node b agent's CPU per full mTLS handshake (X25519, P-256 certs, no resumption)",
	"handshake_cpu_vs_gotls":       "node b agent's (HBONE server's) CPU per full mTLS handshake ÷ a plain Go crypto/tls server's (ferrybench tlsserver: go-tls's server configuration, ALPN h2, no session tickets, a leaf from the same root), same client, same round, interleaved; each handshake ends at the server's first byte after the HTTP/2 preface",
	"idle_conn_rss_kib":            "RSS growth of both agents per idle tunnelled connection, at the largest -idle-conns count (raw figures for each count under mem/idle-N)",
	"idle_conn_heap_kib":           "Go HeapAlloc (after GC) growth of both agents per idle tunnelled connection, at the largest -idle-conns count",
	"mux8_vs_8tls":                 "aggregate upload MB/s of 8 connections: ferry (one HBONE connection) ÷ go-tls (8 TLS connections)",
	"hol_p99_ratio":                "ferry 1 KiB RR p99 while a bulk download with a slow (32 MiB/s) consumer shares the HBONE connection ÷ p99 alone",
}

// peerNames is the table order.
var peerNames = []string{"direct", "ferry", "ferry-baseline", "go-tls", "ghostunnel", "haproxy", "nginx", "stunnel", "istio-hbone", "ferry-tunnel", "go-tls-direct", "ferry-node", "ferry-pod"}

type suiteOpts struct {
	dir, ferry, baseline, ghost, istio, only string
	keep                                     bool
}

func absIf(p string) string {
	if p == "" {
		return ""
	}
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

func runSuite(ctx context.Context, log *slog.Logger, cfg config, rec *recorder, o suiteOpts) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir := o.dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "ferrybench-"); err != nil {
			return err
		}
		if !o.keep {
			defer os.RemoveAll(dir)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pk, err := newPKI(dir)
	if err != nil {
		return err
	}
	t, err := newTopo(ctx, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := t.close(); err != nil {
			log.Warn("testbed down", "err", err)
		}
	}()
	e := &env{topo: t, dir: dir, pki: pk, ferry: absIf(o.ferry), baseline: absIf(o.baseline), self: self, ghost: absIf(o.ghost), istio: absIf(o.istio)}
	rec.Meta["started"] = time.Now().UTC().Format(time.RFC3339)
	rec.Meta["go"] = runtime.Version()
	rec.Meta["cpus"] = runtime.NumCPU()
	rec.Meta["rounds"] = cfg.rounds
	rec.Meta["duration_s"] = cfg.dur.Seconds()
	rec.Meta["idle_conns"] = cfg.idleConns
	rec.Meta["active_conns"] = cfg.activeConns
	rec.Meta["topology"] = "two network namespaces (nodes) joined by a veth pair; load generator in node a " +
		"from the client pod address, sink in node b at the server pod address; each peer = client side in node a + server side in node b"
	defs := maps.Clone(suiteDefinitions)
	maps.Copy(defs, activeDefinitions)
	maps.Copy(defs, captureDefinitions)
	maps.Copy(defs, policyDefinitions)
	rec.Meta["definitions"] = defs

	s := &suite{cfg: cfg, env: e, rec: rec, log: log, sink: newSink()}
	var ports []uint16
	want := map[string]bool{}
	for _, n := range strings.Split(o.only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	defer func() {
		for _, p := range s.peers {
			p.stop()
		}
	}()
	for _, spec := range peerSpecs(e) {
		if len(want) > 0 && !want[spec.name] && spec.name != "direct" {
			continue
		}
		if err := spec.available(e); err != nil {
			log.Warn("peer skipped", "peer", spec.name, "why", err)
			rec.Skipped[spec.name] = err.Error()
			continue
		}
		ports = append(ports, spec.port)
		p := &peer{name: spec.name, port: spec.port, perConnTLS: spec.perConnTLS, bothSides: spec.bothSides}
		log.Info("starting peer", "peer", spec.name)
		if err := spec.start(ctx, e, p); err != nil {
			p.stop()
			msg := fmt.Sprintf("start %s: %v", spec.name, err)
			for _, pr := range p.procs {
				msg += "\n" + pr.name + ": " + pr.tail()
			}
			rec.Errors = append(rec.Errors, msg)
			log.Error("peer failed to start", "peer", spec.name, "err", err)
			continue
		}
		s.peers = append(s.peers, p)
	}
	if err := s.sink.listen(ctx, t.nsB, serverPod, ports); err != nil {
		return err
	}
	defer s.sink.close()
	if why := captureSkip(cfg, e, want); why != "" {
		rec.Skipped["capture"] = why
	} else if c, err := startCapture(ctx, log, e.ferry, dir, s.sink); err != nil {
		rec.Errors = append(rec.Errors, "capture: "+err.Error())
		log.Error("capture section not run", "err", err)
	} else {
		s.capture = c
		rec.Meta["capture_topology"] = "per capture mode, internal/testbed's fabric layout: two nodes on a bridge, each pod a network " +
			"namespace behind a veth to its node; real agents with eBPF redirection (and, for pod mode, the ferry-cni plugin per pod); " +
			"load generator in the client pod on node1, sinks in a server pod on node2 and one on node1"
		defer func() {
			if err := c.close(); err != nil {
				log.Warn("capture testbeds down", "err", err)
			}
		}()
	}
	if ip, err := newInproc(ctx, pk, slog.New(slog.DiscardHandler)); err != nil {
		rec.Errors = append(rec.Errors, "hbone/stream-1: "+err.Error())
	} else {
		s.inproc = ip
		defer ip.stop()
	}
	var names []string
	for _, p := range s.peers {
		names = append(names, p.name)
	}
	rec.Meta["peers"] = names
	for r := range cfg.rounds {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.round(ctx, r)
	}
	rec.Meta["finished"] = time.Now().UTC().Format(time.RFC3339)
	if s.peer("ferry") == nil {
		return errors.New("the ferry peer did not run")
	}
	return nil
}

// runGoTLS is the go-tls peer process: `gotls client|server`.
func runGoTLS(args []string) int {
	if len(args) == 0 || (args[0] != "client" && args[0] != "server") {
		fmt.Fprintln(os.Stderr, "usage: ferrybench gotls client|server -listen ADDR -target ADDR -cert F -key F -ca F [-debug-addr ADDR]")
		return 2
	}
	side := args[0]
	fs := flag.NewFlagSet("gotls "+side, flag.ExitOnError)
	listen := fs.String("listen", "", "listen address")
	target := fs.String("target", "", "where to forward")
	cert := fs.String("cert", "", "certificate chain (PEM)")
	key := fs.String("key", "", "key (PEM)")
	ca := fs.String("ca", "", "roots (PEM)")
	debug := fs.String("debug-addr", "", "serve /debug/pprof/ here")
	fs.Parse(args[1:])
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tcfg, err := gotls.LoadConfig(*cert, *key, *ca, "localhost", side == "server")
	if err != nil {
		log.Error("gotls", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *debug != "" {
		serveDebug(ctx, log, *debug)
	}
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp4", *listen)
	if err != nil {
		log.Error("gotls", "err", err)
		return 1
	}
	if side == "server" {
		err = (&gotls.Server{Target: *target, TLS: tcfg, Log: log}).Serve(ctx, ln)
	} else {
		err = (&gotls.Client{Target: *target, TLS: tcfg, Log: log}).Serve(ctx, ln)
	}
	if err != nil {
		log.Error("gotls", "err", err)
		return 1
	}
	return 0
}

// serveDebug serves net/http/pprof on addr until ctx ends.
func serveDebug(ctx context.Context, log *slog.Logger, addr string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("debug server", "err", err)
		}
	}()
	context.AfterFunc(ctx, func() { srv.Close() })
}

// raiseFileLimit lifts RLIMIT_NOFILE to at least n for this process and the
// peers it starts (they inherit it): each idle connection costs the load
// generator and the sink a descriptor each, and every peer process as many.
func raiseFileLimit(n int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= uint64(n) {
		return nil
	}
	want := max(uint64(n), lim.Max)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if limit, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && want > limit {
			return fmt.Errorf("need %d open files, the kernel allows %d (fs.nr_open)", n, limit)
		}
	}
	lim.Cur, lim.Max = want, want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise the open files limit to %d: %w", want, err)
	}
	return nil
}
