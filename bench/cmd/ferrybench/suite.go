package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// config sizes a run.
type config struct {
	rounds      int
	dur         time.Duration // each timed measurement
	idleConns   []int         // counts of idle connections held per peer, ascending
	connWorkers int           // parallel connectors (connect rate)
	hsWorkers   int           // parallel TLS handshakers
	muxConns    int
	activeConns int             // connections of the active benchmark
	profileDir  string          // CPU profiles of the Go peers, first round
	benchmarks  map[string]bool // run only these (all when empty)
	// crossNodeOnly: the capture section leaves out its same-node path
	// (-smoke, to keep make test short).
	crossNodeOnly bool
}

// suite runs the benchmarks over the started peers.
type suite struct {
	cfg     config
	env     *env
	peers   []*peer
	rec     *recorder
	sink    *sink
	log     *slog.Logger
	roundNo int
	inproc  *inproc         // B3; nil when it could not start
	capture *captureSection // nil when the capture section does not run
	// rr1k is this round's path/rr-1k figures by peer; nil until rr1k ran
	// in the round.
	rr1k map[string]rrResult
}

func (s *suite) peer(name string) *peer {
	for _, p := range s.peers {
		if p.name == name {
			return p
		}
	}
	return nil
}

func (s *suite) target(p *peer) target {
	if p.reach.ns != "" {
		return target{ns: p.reach.ns, dst: p.reach.dst, sink: s.sink}
	}
	return target{ns: s.env.topo.nsA, dst: netip.AddrPortFrom(serverPod, p.port), sink: s.sink}
}

// adminNS returns the namespaces of the peer's admin endpoints (adminA,
// adminB): node a's and node b's unless the peer says otherwise.
func (s *suite) adminNS(p *peer) (a, b string) {
	if p.adminNS[0] != "" {
		return p.adminNS[0], p.adminNS[1]
	}
	return s.env.topo.nsA, s.env.topo.nsB
}

func (s *suite) fail(bench string, p *peer, err error) {
	msg := fmt.Sprintf("%s/%s: %v", bench, p.name, err)
	if aerr := p.checkAlive(); aerr != nil {
		msg += "; " + aerr.Error()
	}
	s.log.Error("benchmark failed", "bench", bench, "peer", p.name, "err", err)
	s.rec.Errors = append(s.rec.Errors, msg)
}

// measure runs fn and returns the CPU time the peer's processes used. With
// -profile, the first round also records a CPU profile of each side of the
// peers that serve /debug/pprof/ while fn runs (for about the length of
// one measurement).
func (s *suite) measure(bench string, p *peer, fn func() error) (time.Duration, error) {
	return s.measureProfiled(bench, p, s.roundNo == 0, s.cfg.dur, fn)
}

// measureProfiled is measure; with profile, the profiles last d (whole
// seconds, at least one), how long fn runs.
func (s *suite) measureProfiled(bench string, p *peer, profile bool, d time.Duration, fn func() error) (time.Duration, error) {
	var wg sync.WaitGroup
	if s.cfg.profileDir != "" && profile && p.adminA != "" {
		secs := max(1, int(d.Seconds()))
		nsA, nsB := s.adminNS(p)
		for _, side := range []struct{ name, ns, addr string }{{"a", nsA, p.adminA}, {"b", nsB, p.adminB}} {
			wg.Go(func() {
				name := strings.NewReplacer("/", "_").Replace(bench) + "-" + p.name + "-" + side.name + ".pprof"
				if err := fetchProfile(context.Background(), side.ns, side.addr, secs, filepath.Join(s.cfg.profileDir, name)); err != nil {
					s.log.Warn("profile", "bench", bench, "peer", p.name, "err", err)
				}
			})
		}
		time.Sleep(50 * time.Millisecond)
	}
	c0, _ := p.usage()
	err := fn()
	c1, _ := p.usage()
	wg.Wait()
	return c1 - c0, err
}

// fetchProfile stores a CPU profile of secs seconds from a debug endpoint.
func fetchProfile(ctx context.Context, ns, addr string, secs int, path string) error {
	c, err := dialFrom(ctx, ns, netip.Addr{}, netip.MustParseAddrPort(addr))
	if err != nil {
		return err
	}
	b, err := httpGetOn(c, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs))
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// settle gives the peers a moment between measurements (closing
// connections, GC).
func settle() { time.Sleep(150 * time.Millisecond) }

// timeSlices is how many parts the timed benchmarks that decide the closest
// keys (throughput, multiplexing, request/response) cut each measurement
// into. The parts alternate between the peers, so that a change in the
// host's load during a round (this machine is shared) falls on every peer
// alike rather than on whichever happened to be running.
const timeSlices = 3

// interleaved runs fn for every peer in turn, timeSlices times, each run
// lasting a slice of the measurement time, and returns the CPU time each
// peer's processes used over its runs. The order rotates from slice to
// slice and round to round, so no peer always follows the same neighbour.
// A peer whose run fails is recorded as failed and left out of the result
// and of the later slices.
func (s *suite) interleaved(bench string, fn func(p *peer, d time.Duration) error) map[string]time.Duration {
	return s.interleavedOver(s.peers, bench, fn)
}

// interleavedOver is interleaved over the given peers.
func (s *suite) interleavedOver(peers []*peer, bench string, fn func(p *peer, d time.Duration) error) map[string]time.Duration {
	cpu := map[string]time.Duration{}
	failed := map[string]bool{}
	d := s.cfg.dur / timeSlices
	for i := range timeSlices {
		shift := (s.roundNo*timeSlices + i) % len(peers)
		for _, p := range append(peers[shift:len(peers):len(peers)], peers[:shift]...) {
			if failed[p.name] {
				continue
			}
			used, err := s.measureProfiled(bench, p, s.roundNo == 0 && i == 0, d, func() error { return fn(p, d) })
			if err != nil {
				s.fail(bench, p, err)
				failed[p.name] = true
				delete(cpu, p.name)
				continue
			}
			cpu[p.name] += used
			settle()
		}
	}
	return cpu
}

// round runs every benchmark once for every peer, in the order of the
// headline keys, except idle memory, which runs first so that RSS baselines
// see as little freed-but-retained memory as possible.
func (s *suite) round(ctx context.Context, r int) {
	s.log.Info("round", "n", r+1, "of", s.cfg.rounds)
	s.roundNo = r
	s.rr1k = nil
	for _, b := range []struct {
		name string
		run  func(context.Context)
	}{
		{"idle", s.idle},
		{"stream", s.stream},
		{"tput", s.throughput},
		{"rr1k", func(ctx context.Context) { s.rr(ctx, 1024, "path/rr-1k") }},
		{"rr16k", func(ctx context.Context) { s.rr(ctx, 16384, "path/rr-16k") }},
		{"fixed", s.fixedRate},
		{"connect", s.connectRate},
		{"handshake", s.handshakes},
		{"mux", s.mux},
		{"hol", s.hol},
		{"active", s.active},
		{"capture", s.captureBenchmarks},
		{"policy", s.policy},
	} {
		if len(s.cfg.benchmarks) == 0 || s.cfg.benchmarks[b.name] {
			b.run(ctx)
		}
	}
}

// benchmarkNames are the values -benchmarks accepts.
const benchmarkNames = "idle,stream,tput,rr1k,rr16k,fixed,connect,handshake,mux,hol,active,capture,policy"

type dirResult struct {
	mbps, bytes float64
	cpu         time.Duration
}

// tputOver measures one connection's throughput through each of peers,
// upload then download, interleaved, and records each one's MB/s and (for
// tunnels) the agents' CPU per GB under prefix+"up" and prefix+"down". It
// returns the figures by direction and peer name.
func (s *suite) tputOver(ctx context.Context, peers []*peer, prefix string) map[string]map[string]dirResult {
	res := map[string]map[string]dirResult{"up": {}, "down": {}}
	for _, dir := range []string{"up", "down"} {
		bench := prefix + dir
		moved := map[string]int64{}
		took := map[string]time.Duration{}
		cpu := s.interleavedOver(peers, bench, func(p *peer, d time.Duration) error {
			var n int64
			var el time.Duration
			var err error
			if dir == "up" {
				n, el, err = s.target(p).upload(ctx, d)
			} else {
				n, el, err = s.target(p).download(ctx, d)
			}
			moved[p.name] += n
			took[p.name] += el
			return err
		})
		for _, p := range peers {
			used, ok := cpu[p.name]
			if !ok {
				continue
			}
			n := moved[p.name]
			mbps := float64(n) / took[p.name].Seconds() / 1e6
			s.rec.raw(bench, p.name, "MB/s", "MB/s", mbps)
			if p.tunnel() {
				s.rec.raw(bench, p.name, "agents_cpu_ms_per_gb", "ms/GB", used.Seconds()*1e3/(float64(n)/1e9))
			}
			res[dir][p.name] = dirResult{mbps: mbps, bytes: float64(n), cpu: used}
		}
	}
	return res
}

// cpuPerGB is the agents' CPU ms per GB moved over both directions of res
// (tputOver's) for the named peer; false when a direction is missing.
func cpuPerGB(res map[string]map[string]dirResult, name string) (float64, bool) {
	u, ok1 := res["up"][name]
	d, ok2 := res["down"][name]
	if !ok1 || !ok2 {
		return 0, false
	}
	return (u.cpu + d.cpu).Seconds() * 1e3 / ((u.bytes + d.bytes) / 1e9), true
}

func (s *suite) throughput(ctx context.Context) {
	res := s.tputOver(ctx, s.peers, "path/tput-1conn/")
	f, g := "ferry", "go-tls"
	worst := math.Inf(1)
	for _, dir := range []string{"up", "down"} {
		rf, okf := res[dir][f]
		rg, okg := res[dir][g]
		if okf && okg {
			s.rec.key("path_1conn_"+dir+"_vs_gotls", rf.mbps/rg.mbps)
		}
		best, bestName := 0.0, ""
		for name, v := range res[dir] {
			if name != f && name != "direct" && v.mbps > best {
				best, bestName = v.mbps, name
			}
		}
		if okf && best > 0 {
			worst = min(worst, rf.mbps/best)
			s.rec.raw("path/tput-1conn/"+dir, "ferry", "vs_best_peer", "ratio", rf.mbps/best)
			s.log.Debug("best peer", "dir", dir, "peer", bestName)
		}
	}
	if !math.IsInf(worst, 1) && len(res["up"]) > 0 && len(res["down"]) > 0 {
		s.rec.key("path_1conn_vs_best_peer", worst)
	}
	if v, ok := vsDirect(res, f); ok {
		s.rec.key("path_1conn_vs_direct", v)
	}
	if cf, ok := cpuPerGB(res, f); ok {
		if cg, ok := cpuPerGB(res, g); ok && cg > 0 {
			s.rec.key("cpu_per_gb_vs_gotls", cf/cg)
		}
	}
	for _, dir := range []string{"up", "down"} {
		if rf, ok := res[dir][f]; ok {
			if rd, ok := res[dir]["direct"]; ok && rd.mbps > 0 {
				s.rec.raw("path/tput-1conn/"+dir, f, "vs_direct", "ratio", rf.mbps/rd.mbps)
			}
		}
	}
}

// vsDirect is the lower over both directions of the named peer's MB/s ÷
// direct TCP's in res (tputOver's); false unless both peers have both
// directions.
func vsDirect(res map[string]map[string]dirResult, name string) (float64, bool) {
	worst := math.Inf(1)
	for _, dir := range []string{"up", "down"} {
		p, ok1 := res[dir][name]
		d, ok2 := res[dir]["direct"]
		if !ok1 || !ok2 || d.mbps <= 0 {
			return 0, false
		}
		worst = min(worst, p.mbps/d.mbps)
	}
	return worst, true
}

// otherTunnel reports whether the named peer is a tunnel other than Ferry
// (the peers Ferry's figures are set against): neither direct TCP nor one
// of Ferry's own binaries.
func otherTunnel(name string) bool {
	return name != "direct" && name != "ferry" && name != "ferry-baseline"
}

// lowest returns the name and value of the lowest positive value in m
// among the names keep accepts (ties go to the first name in order); ok is
// false when there is none.
func lowest(m map[string]float64, keep func(string) bool) (name string, v float64, ok bool) {
	for _, n := range slices.Sorted(maps.Keys(m)) {
		if x := m[n]; keep(n) && x > 0 && (!ok || x < v) {
			name, v, ok = n, x, true
		}
	}
	return name, v, ok
}

// rrResult is one peer's request/response figures in a round.
type rrResult struct {
	p50       float64 // µs
	cpuPerReq float64 // the agents' CPU µs per exchange; 0 for direct TCP
}

// rrOver runs size-byte request/response exchanges on one connection
// through each of peers, interleaved, and records each one's latency
// percentiles and (for tunnels) the agents' CPU per exchange under bench.
// It returns the figures by peer name.
func (s *suite) rrOver(ctx context.Context, peers []*peer, size int, bench string) map[string]rrResult {
	res := map[string]rrResult{}
	lats := map[string][]time.Duration{}
	cpu := s.interleavedOver(peers, bench, func(p *peer, d time.Duration) error {
		lat, err := s.target(p).rr(ctx, size, d, 1_000_000)
		if err == nil && len(lat) == 0 {
			err = errors.New("no exchange completed")
		}
		lats[p.name] = append(lats[p.name], lat...)
		return err
	})
	for _, p := range peers {
		used, ok := cpu[p.name]
		if !ok {
			continue
		}
		lat := lats[p.name]
		sorted := sortedCopy(lat)
		us := func(q float64) float64 { return float64(percentile(sorted, q)) / 1e3 }
		s.rec.raw(bench, p.name, "p50", "us", us(50))
		s.rec.raw(bench, p.name, "p90", "us", us(90))
		s.rec.raw(bench, p.name, "p99", "us", us(99))
		s.rec.raw(bench, p.name, "p99_over_p50", "ratio", us(99)/us(50))
		r := rrResult{p50: us(50)}
		if p.tunnel() {
			r.cpuPerReq = float64(used.Microseconds()) / float64(len(lat))
			s.rec.raw(bench, p.name, "agents_cpu_us_per_req", "us", r.cpuPerReq)
		}
		res[p.name] = r
	}
	return res
}

func (s *suite) rr(ctx context.Context, size int, bench string) {
	res := s.rrOver(ctx, s.peers, size, bench)
	if size != 1024 {
		return
	}
	s.rr1k = res
	if r, ok := res["ferry"]; ok {
		s.rec.key("cpu_us_per_rr1k", r.cpuPerReq)
		cpu := map[string]float64{}
		for name, o := range res {
			cpu[name] = o.cpuPerReq
		}
		if name, best, ok := lowest(cpu, otherTunnel); ok {
			s.rec.key("cpu_per_rr1k_vs_best_peer", r.cpuPerReq/best)
			s.log.Debug("lowest CPU per request", "peer", name)
		} else {
			s.rec.Skipped["cpu_per_rr1k_vs_best_peer"] = "no tunnel peer other than Ferry completed " + bench
		}
	}
	d, okd := res["direct"]
	f, okf := res["ferry"]
	g, okg := res["go-tls"]
	if okd && okf && okg && g.p50 > d.p50 {
		s.rec.key("rr1k_added_p50_vs_gotls", (f.p50-d.p50)/(g.p50-d.p50))
		s.rec.raw(bench, "ferry", "added_p50_vs_direct", "us", f.p50-d.p50)
		s.rec.raw(bench, "go-tls", "added_p50_vs_direct", "us", g.p50-d.p50)
	}
	s.rrLoaded(ctx, res)
}

// fixedRate is Istio's published set-up: 1000 rps of 1 KiB over 4
// connections; it reports both sides' vCPU and RSS and the latency
// percentiles.
func (s *suite) fixedRate(ctx context.Context) {
	const bench = "path/rr-1k-1000rps"
	for _, p := range s.peers {
		var lat []time.Duration
		cpu, err := s.measure(bench, p, func() error {
			var err error
			lat, err = s.target(p).fixedRate(ctx, 4, 1000, s.cfg.dur)
			return err
		})
		if err != nil || len(lat) == 0 {
			s.fail(bench, p, fmt.Errorf("%d exchanges: %v", len(lat), err))
			continue
		}
		sorted := sortedCopy(lat)
		us := func(q float64) float64 { return float64(percentile(sorted, q)) / 1e3 }
		s.rec.raw(bench, p.name, "p50", "us", us(50))
		s.rec.raw(bench, p.name, "p90", "us", us(90))
		s.rec.raw(bench, p.name, "p99", "us", us(99))
		if p.tunnel() {
			_, rss := p.usage()
			s.rec.raw(bench, p.name, "agents_vcpu", "vCPU", cpu.Seconds()/s.cfg.dur.Seconds())
			s.rec.raw(bench, p.name, "agents_rss_mib", "MiB", float64(rss)/1024)
		}
		settle()
	}
}

func (s *suite) connectRate(ctx context.Context) {
	const bench = "path/connect-rate"
	rate := map[string]float64{}
	cpuPerConn := map[string]float64{}
	for _, p := range s.peers {
		var lat []time.Duration
		cpu, err := s.measure(bench, p, func() error {
			var err error
			lat, err = s.target(p).connectRate(ctx, s.cfg.connWorkers, s.cfg.dur)
			return err
		})
		if err != nil || len(lat) == 0 {
			s.fail(bench, p, fmt.Errorf("%d connections: %v", len(lat), err))
			continue
		}
		rate[p.name], cpuPerConn[p.name] = s.recordConnect(bench, p, lat, cpu, s.cfg.dur)
		// Let TIME_WAIT and the peers' closing work drain.
		time.Sleep(500 * time.Millisecond)
	}
	best := 0.0
	for _, p := range s.peers {
		if p.perConnTLS {
			best = max(best, rate[p.name])
		}
	}
	if f, ok := rate["ferry"]; ok && best > 0 {
		s.rec.key("connect_rate_vs_tls_peers", f/best)
	}
	perConnTLS := func(name string) bool { p := s.peer(name); return p != nil && p.perConnTLS }
	if f, ok := cpuPerConn["ferry"]; ok && f > 0 {
		if name, low, ok := lowest(cpuPerConn, perConnTLS); ok {
			s.rec.key("connect_cpu_vs_best_tls_peer", f/low)
			s.log.Debug("lowest CPU per connection", "peer", name)
		} else {
			s.rec.Skipped["connect_cpu_vs_best_tls_peer"] = "no TLS-per-connection peer completed " + bench
		}
	}
}

// recordConnect records the connect-rate figures of peer p, which opened
// len(lat) connections in d using cpu, under bench, and returns its
// connections/s and (for tunnels) the agents' CPU µs per connection.
func (s *suite) recordConnect(bench string, p *peer, lat []time.Duration, cpu, d time.Duration) (rate, cpuPerConn float64) {
	n := len(lat)
	rate = float64(n) / d.Seconds()
	s.rec.raw(bench, p.name, "conns_per_s", "1/s", rate)
	sorted := sortedCopy(lat)
	s.rec.raw(bench, p.name, "conn_p50", "us", float64(percentile(sorted, 50))/1e3)
	s.rec.raw(bench, p.name, "conn_p99", "us", float64(percentile(sorted, 99))/1e3)
	if p.tunnel() {
		cpuPerConn = float64(cpu.Microseconds()) / float64(n)
		s.rec.raw(bench, p.name, "agents_cpu_us_per_conn", "us", cpuPerConn)
	}
	return rate, cpuPerConn
}

func (s *suite) idle(ctx context.Context) {
	for _, n := range s.cfg.idleConns {
		s.idleAt(ctx, n, n == slices.Max(s.cfg.idleConns))
	}
}

// idleAt measures the memory n idle connections cost each tunnel peer; with
// headline, Ferry's figures are the keys.
func (s *suite) idleAt(ctx context.Context, n int, headline bool) {
	bench := fmt.Sprintf("mem/idle-%d", n)
	for _, p := range s.peers {
		if !p.tunnel() {
			continue
		}
		var lim syscall.Rlimit
		if p.bothSides && syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && uint64(2*n+1000) > lim.Max {
			// Running it out of descriptors could stop it serving for the
			// rest of the suite.
			s.rec.Skipped[bench+"/"+p.name] = fmt.Sprintf("a process holding both sides of %d connections needs %d descriptors; RLIMIT_NOFILE here is %d and raising it needs CAP_SYS_RESOURCE", n, 2*n, lim.Max)
			continue
		}
		time.Sleep(300 * time.Millisecond)
		nsA, nsB := s.adminNS(p)
		_, rss0 := p.usage()
		heap0, hasHeap, err := p.heap(ctx, nsA, nsB)
		if err != nil {
			s.fail(bench, p, fmt.Errorf("heap: %w", err))
			hasHeap = false
		}
		release, err := s.target(p).holdIdle(ctx, s.env.self, n)
		if err != nil {
			s.fail(bench, p, err)
			continue
		}
		// Idle for longer than Ferry waits before it parks a socket (1 s).
		time.Sleep(2500 * time.Millisecond)
		_, rss1 := p.usage()
		var heap1 uint64
		if hasHeap {
			if heap1, _, err = p.heap(ctx, nsA, nsB); err != nil {
				s.fail(bench, p, fmt.Errorf("heap: %w", err))
				hasHeap = false
			}
		}
		release()
		rssPer := (float64(rss1) - float64(rss0)) / float64(n)
		s.rec.raw(bench, p.name, "rss_kib_per_conn", "KiB", rssPer)
		s.rec.raw(bench, p.name, "rss_mib_total", "MiB", float64(rss1)/1024)
		if p.name == "ferry" && headline {
			s.rec.key("idle_conn_rss_kib", rssPer)
		}
		if hasHeap {
			heapPer := (float64(heap1) - float64(heap0)) / 1024 / float64(n)
			s.rec.raw(bench, p.name, "heap_kib_per_conn", "KiB", heapPer)
			if p.name == "ferry" && headline {
				s.rec.key("idle_conn_heap_kib", heapPer)
			}
		}
		// Wait (bounded) for the peer to release the connections.
		time.Sleep(time.Second)
	}
}

func (s *suite) mux(ctx context.Context) {
	bench := fmt.Sprintf("path/tput-%dconn/up", s.cfg.muxConns)
	results := map[string]*multiResult{}
	cpu := s.interleaved(bench, func(p *peer, d time.Duration) error {
		res, err := s.target(p).uploadN(ctx, s.cfg.muxConns, d)
		if err != nil {
			return err
		}
		r := results[p.name]
		if r == nil {
			r = &multiResult{perConn: make([]int64, len(res.perConn))}
			results[p.name] = r
		}
		for i, n := range res.perConn {
			r.perConn[i] += n
		}
		r.elapsed += res.elapsed
		return nil
	})
	agg := map[string]float64{}
	for _, p := range s.peers {
		used, ok := cpu[p.name]
		if !ok {
			continue
		}
		res := results[p.name]
		total := float64(res.total())
		agg[p.name] = total / res.elapsed.Seconds() / 1e6
		s.rec.raw(bench, p.name, "MB/s", "MB/s", agg[p.name])
		s.rec.raw(bench, p.name, "fairness_min_over_max", "ratio", float64(slices.Min(res.perConn))/float64(slices.Max(res.perConn)))
		if p.tunnel() {
			s.rec.raw(bench, p.name, "agents_cpu_ms_per_gb", "ms/GB", used.Seconds()*1e3/(total/1e9))
		}
	}
	if f, g := agg["ferry"], agg["go-tls"]; f > 0 && g > 0 {
		s.rec.key("mux8_vs_8tls", f/g)
	}
}

func (s *suite) hol(ctx context.Context) {
	const bench = "hol/bulk-plus-rr-1k"
	for _, name := range []string{"ferry", "go-tls", "istio-hbone"} {
		p := s.peer(name)
		if p == nil {
			continue
		}
		var alone, bulk []time.Duration
		var bulkMBps float64
		_, err := s.measureProfiled(bench, p, s.roundNo == 0, 2*s.cfg.dur, func() error {
			var err error
			alone, bulk, bulkMBps, err = s.target(p).hol(ctx, s.cfg.dur)
			return err
		})
		if err != nil || len(alone) == 0 || len(bulk) == 0 {
			s.fail(bench, p, fmt.Errorf("%d/%d exchanges: %v", len(alone), len(bulk), err))
			continue
		}
		a := float64(percentile(sortedCopy(alone), 99)) / 1e3
		b := float64(percentile(sortedCopy(bulk), 99)) / 1e3
		s.rec.raw(bench, name, "p99_alone", "us", a)
		s.rec.raw(bench, name, "p99_with_bulk", "us", b)
		s.rec.raw(bench, name, "p50_with_bulk", "us", float64(percentile(sortedCopy(bulk), 50))/1e3)
		s.rec.raw(bench, name, "p99_ratio", "ratio", b/a)
		s.rec.raw(bench, name, "bulk_MB/s", "MB/s", bulkMBps)
		if name == "ferry" {
			s.rec.key("hol_p99_ratio", b/a)
		}
		settle()
	}
}
