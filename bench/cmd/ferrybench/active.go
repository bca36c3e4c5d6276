package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The active-connections benchmark: many connections through each tunnel
// peer, each making one 1 KiB request/response per second, and the agents'
// CPU per request set against the one-connection figure of path/rr-1k in
// the same round. The connections' client side is a child process in node
// a (`ferrybench active`), as the idle benchmark's are (`ferrybench hold`),
// so that this process's descriptors serve the sink's side.

// activeDefinitions define the benchmark's key (meta.definitions).
var activeDefinitions = map[string]string{
	"active_10k_cpu_per_req_vs_1conn": "both agents' CPU per 1 KiB request/response with -active-conns (10,000) connections open through ferry, each making one request per second (slots spread evenly over the second, active/rr-1k-N-conns) ÷ cpu_us_per_rr1k (one connection, requests back to back), same round",
}

// activePeriod is how often each connection of the benchmark sends a
// request.
const activePeriod = time.Second

// activeDialers is how many connections the child opens at once while it
// sets up.
const activeDialers = 16

// activeResult is what the child reports of its run (one JSON line).
type activeResult struct {
	N       int    `json:"n"`          // exchanges completed
	Elapsed int64  `json:"elapsed_ns"` // from the first slot to the last response
	P50     int64  `json:"p50_ns"`     // latency percentiles
	P99     int64  `json:"p99_ns"`
	Error   string `json:"error,omitempty"` // the first error, if any
}

// active runs the benchmark at -active-conns connections through every
// tunnel peer, one after the other in an order that rotates from round to
// round (setting up thousands of connections takes seconds, too long to
// slice), and records active_10k_cpu_per_req_vs_1conn for Ferry.
func (s *suite) active(ctx context.Context) {
	n := s.cfg.activeConns
	bench := fmt.Sprintf("active/rr-1k-%d-conns", n)
	const key = "active_10k_cpu_per_req_vs_1conn"
	var tunnels []*peer
	for _, p := range s.peers {
		if p.tunnel() {
			tunnels = append(tunnels, p)
		}
	}
	if len(tunnels) == 0 {
		return
	}
	if s.rr1k == nil {
		s.rec.Skipped[key] = "needs path/rr-1k (the one-connection CPU per request) in the same round: run -benchmarks rr1k,active"
	}
	shift := s.roundNo % len(tunnels)
	for _, p := range append(tunnels[shift:len(tunnels):len(tunnels)], tunnels[:shift]...) {
		var lim syscall.Rlimit
		if p.bothSides && syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && uint64(2*n+1000) > lim.Max {
			s.rec.Skipped[bench+"/"+p.name] = fmt.Sprintf("a process holding both sides of %d connections needs %d descriptors; RLIMIT_NOFILE here is %d and raising it needs CAP_SYS_RESOURCE", n, 2*n, lim.Max)
			continue
		}
		run, err := s.target(p).startActive(ctx, s.env.self, n, 1024)
		if err != nil {
			s.fail(bench, p, err)
			continue
		}
		var res activeResult
		d := s.cfg.dur
		used, err := s.measure(bench, p, func() error {
			var err error
			res, err = run.run(d)
			return err
		})
		run.release()
		if err == nil && res.N == 0 {
			err = errors.New("no exchange completed")
		}
		if err != nil {
			s.fail(bench, p, fmt.Errorf("%d exchanges: %w", res.N, err))
			time.Sleep(time.Second)
			continue
		}
		perReq := float64(used.Microseconds()) / float64(res.N)
		s.rec.raw(bench, p.name, "completed_rps", "1/s", float64(res.N)/time.Duration(res.Elapsed).Seconds())
		s.rec.raw(bench, p.name, "p50", "us", float64(res.P50)/1e3)
		s.rec.raw(bench, p.name, "p99", "us", float64(res.P99)/1e3)
		s.rec.raw(bench, p.name, "agents_cpu_us_per_req", "us", perReq)
		if one := s.rr1k[p.name].cpuPerReq; one > 0 {
			s.rec.raw(bench, p.name, "cpu_per_req_vs_1conn", "ratio", perReq/one)
			if p.name == "ferry" {
				s.rec.key(key, perReq/one)
			}
		}
		// Wait (bounded) for the peer to release the connections.
		time.Sleep(time.Second)
	}
}

// activeRun is a child process holding the benchmark's connections.
type activeRun struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	stderr *bytes.Buffer
}

// startActive starts `ferrybench active` in t.ns with n connections to
// t.dst and waits until every one is open and has made one exchange.
func (t target) startActive(ctx context.Context, self string, n, size int) (*activeRun, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", t.ns, self, "active",
		"-n", strconv.Itoa(n), "-size", strconv.Itoa(size), "-dst", t.dst.String())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	r := &activeRun{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout), stderr: new(bytes.Buffer)}
	cmd.Stderr = r.stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if line, _ := r.out.ReadString('\n'); line != "ready\n" {
		r.release()
		return nil, fmt.Errorf("opening %d active connections: %s", n, strings.TrimSpace(r.stderr.String()))
	}
	return r, nil
}

// run has the child send requests for d and returns its report.
func (r *activeRun) run(d time.Duration) (activeResult, error) {
	var res activeResult
	if _, err := fmt.Fprintf(r.stdin, "run %d\n", d); err != nil {
		return res, err
	}
	line, err := r.out.ReadString('\n')
	if err != nil {
		return res, fmt.Errorf("active: %v: %s", err, strings.TrimSpace(r.stderr.String()))
	}
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		return res, fmt.Errorf("active: report %q: %w", line, err)
	}
	if res.Error != "" {
		return res, errors.New(res.Error)
	}
	return res, nil
}

// release closes the child's connections and waits for it.
func (r *activeRun) release() {
	r.stdin.Close()
	r.cmd.Wait()
}

// runActive is `ferrybench active -n N -size S -dst ADDR`, run inside the
// client namespace: it opens N connections to the sink's echo mode from
// the client pod's address, makes one exchange on each, prints "ready",
// and waits for "run DURATION_NS" on its standard input. Then each
// connection sends a size-byte request every activePeriod, the connections'
// slots spread evenly over the period, for the duration; it prints an
// activeResult as one JSON line and holds the connections until its
// standard input ends.
func runActive(args []string) int {
	fs := flag.NewFlagSet("ferrybench active", flag.ExitOnError)
	n := fs.Int("n", 0, "connections")
	size := fs.Int("size", 1024, "request and response size")
	dst := fs.String("dst", "", "destination address")
	fs.Parse(args)
	to, err := netip.ParseAddrPort(*dst)
	if err != nil || *n <= 0 || *size <= 0 {
		fmt.Fprintln(os.Stderr, "active: want -n > 0, -size > 0 and -dst ADDR:PORT")
		return 2
	}
	conns, err := openActive(*n, *size, to)
	defer closeAll(conns)
	if err != nil {
		fmt.Fprintln(os.Stderr, "active:", err)
		return 1
	}
	fmt.Println("ready")
	in := bufio.NewReader(os.Stdin)
	line, err := in.ReadString('\n')
	if err != nil {
		return 0 // released before running
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(line, "run ")), 10, 64)
	if err != nil || ns <= 0 {
		fmt.Fprintf(os.Stderr, "active: bad command %q\n", line)
		return 2
	}
	lat, el, err := activeLoop(conns, *size, activePeriod, time.Duration(ns))
	res := activeResult{N: len(lat), Elapsed: int64(el)}
	sorted := sortedCopy(lat)
	res.P50, res.P99 = int64(percentile(sorted, 50)), int64(percentile(sorted, 99))
	if err != nil {
		res.Error = err.Error()
	}
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	io.Copy(io.Discard, in)
	return 0
}

// openActive opens n connections to dst's echo mode, activeDialers at a
// time, each completing one exchange; on error it returns those it made.
func openActive(n, size int, dst netip.AddrPort) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	errs := make([]error, activeDialers)
	var wg sync.WaitGroup
	for w := range activeDialers {
		wg.Go(func() {
			buf := make([]byte, size)
			for i := w; i < n && errs[w] == nil; i += activeDialers {
				c, err := dialHere(context.Background(), clientPod, dst)
				if err != nil {
					errs[w] = fmt.Errorf("connection %d of %d: %w", i, n, err)
					return
				}
				conns[i] = c
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err = c.Write(header(modeEcho, uint64(size))); err == nil {
					if _, err = c.Write(buf); err == nil {
						_, err = io.ReadFull(c, buf)
					}
				}
				if err != nil {
					errs[w] = fmt.Errorf("connection %d of %d: %w", i, n, err)
				}
			}
		})
	}
	wg.Wait()
	var made []net.Conn
	for _, c := range conns {
		if c != nil {
			made = append(made, c)
		}
	}
	return made, errors.Join(errs...)
}

// activeLoop has each of conns (already in echo mode) send a size-byte
// request every period for d and read its response, the connections'
// first slots spread evenly over one period, and returns each exchange's
// latency, counted as openLoop counts it (from the send when the
// connection slept until its slot, from the slot when it was late), and the
// time from the first slot to the last response (about d, unless the path
// or this process fell behind).
func activeLoop(conns []net.Conn, size int, period, d time.Duration) ([]time.Duration, time.Duration, error) {
	lats := make([][]time.Duration, len(conns))
	errs := make([]error, len(conns))
	last := make([]time.Time, len(conns))
	wbuf := make([]byte, size) // only read from: shared by the writers
	start := time.Now().Add(10 * time.Millisecond)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			c.SetDeadline(start.Add(d + 30*time.Second))
			rbuf := make([]byte, size)
			first := start.Add(time.Duration(i) * period / time.Duration(len(conns)))
			paced(start, first, period, d, func(t0 time.Time) bool {
				if _, err := c.Write(wbuf); err != nil {
					errs[i] = err
					return false
				}
				if _, err := io.ReadFull(c, rbuf); err != nil {
					errs[i] = err
					return false
				}
				last[i] = time.Now()
				lats[i] = append(lats[i], last[i].Sub(t0))
				return true
			})
		})
	}
	wg.Wait()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return all, latest(last).Sub(start), firstOf(errs)
}

// firstOf returns the first of errs that is not nil, with how many are
// not, or nil.
func firstOf(errs []error) error {
	var first error
	n := 0
	for _, err := range errs {
		if err != nil {
			if first == nil {
				first = err
			}
			n++
		}
	}
	if first == nil {
		return nil
	}
	return fmt.Errorf("%d of %d connections failed, the first: %w", n, len(errs), first)
}
