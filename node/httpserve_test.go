package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// attackEnv names the environment variable that turns this test binary into
// the attacker process of the data-plane HTTP tests (TestHTTPAttacker). The
// attacker runs in its own process so that /proc/self/fd and the heap of
// the test process count the servers' cost only.
const attackEnv = "FERRY_TEST_HTTP_ATTACK"

// attack is what the attacker process does, per address: Silent connections
// send nothing, Trickle ones send a request's headers one byte per
// TrickleEvery and never finish them, KeepAlive ones send one request, read
// the response and then idle.
type attack struct {
	Addrs                      []string
	Silent, Trickle, KeepAlive int
	TrickleEvery               time.Duration
}

// startAttack runs the attacker process against spec. It returns once every
// connection is made, and a function reporting how many the servers have
// closed so far (the attacker never closes one itself). The process is
// killed when the test ends.
func startAttack(t *testing.T, spec attack) (closed func() int) {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHTTPAttacker$", "-test.v")
	cmd.Env = append(os.Environ(), attackEnv+"="+string(b))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close() // the attacker exits when its stdin closes
		cmd.Wait()
	})
	var n atomic.Int64
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "attacker ready":
				ready <- nil
			case strings.HasPrefix(line, "attacker failed: "):
				ready <- fmt.Errorf("%s", line)
			case strings.HasPrefix(line, "attacker closed "):
				v, _ := strconv.Atoi(strings.TrimPrefix(line, "attacker closed "))
				n.Store(int64(v))
			}
		}
		ready <- io.ErrUnexpectedEOF
	}()
	if err := <-ready; err != nil {
		t.Fatalf("attacker: %v", err)
	}
	return func() int { return int(n.Load()) }
}

// TestHTTPAttacker is the attacker process of startAttack; it is skipped
// unless the test binary was started as one.
func TestHTTPAttacker(t *testing.T) {
	env := os.Getenv(attackEnv)
	if env == "" {
		t.Skip("the attacker process of the data-plane HTTP tests")
	}
	var spec attack
	if err := json.Unmarshal([]byte(env), &spec); err != nil {
		fmt.Printf("attacker failed: %v\n", err)
		return
	}
	var closed atomic.Int64
	stop := make(chan struct{})
	// hold waits for the server to close c, then counts it.
	hold := func(c net.Conn, r io.Reader) {
		io.Copy(io.Discard, r)
		closed.Add(1)
		c.Close()
	}
	var conns []net.Conn
	var mu sync.Mutex
	dial := make(chan func(), 64)
	var wg sync.WaitGroup
	var dialErr atomic.Value
	for range 32 {
		wg.Go(func() {
			for f := range dial {
				f()
			}
		})
	}
	connect := func(addr string, then func(net.Conn)) {
		dial <- func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				dialErr.Store(err)
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			then(c)
		}
	}
	for _, addr := range spec.Addrs {
		for range spec.Silent {
			connect(addr, func(c net.Conn) { go hold(c, c) })
		}
		for range spec.Trickle {
			connect(addr, func(c net.Conn) {
				c.Write([]byte("GET /metrics HTTP/1.1\r\nHost: node\r\nX-Slow: "))
				done := make(chan struct{})
				go func() { hold(c, c); close(done) }()
				go func() {
					tick := time.NewTicker(spec.TrickleEvery)
					defer tick.Stop()
					for {
						select {
						case <-stop:
							return
						case <-done:
							return
						case <-tick.C:
							c.Write([]byte("a"))
						}
					}
				}()
			})
		}
		for range spec.KeepAlive {
			connect(addr, func(c net.Conn) {
				c.Write([]byte("GET /healthz/ready HTTP/1.1\r\nHost: node\r\n\r\n"))
				br := bufio.NewReader(c)
				go func() {
					if resp, err := http.ReadResponse(br, nil); err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					hold(c, br)
				}()
			})
		}
	}
	close(dial)
	wg.Wait()
	if err, ok := dialErr.Load().(error); ok {
		fmt.Printf("attacker failed: %v\n", err)
		return
	}
	fmt.Println("attacker ready")
	go func() {
		last := int64(-1)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if n := closed.Load(); n != last {
				fmt.Printf("attacker closed %d\n", n)
				last = n
			}
		}
	}()
	io.Copy(io.Discard, os.Stdin)
	close(stop)
	mu.Lock()
	for _, c := range conns {
		c.Close()
	}
	mu.Unlock()
}

// dataPlaneServers serves the agent's metrics and readiness handlers as Run
// does, with cfg's limits, on loopback, until the test ends.
func dataPlaneServers(t *testing.T, cfg Config) (a *Agent, metricsAddr, readyAddr string) {
	t.Helper()
	testutil.System(t) // the attackers are processes of their own
	a = &Agent{cfg: cfg, metrics: NewMetrics("test"), ready: newReadiness()}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	serve := func(name string, h http.Handler) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			if err := a.serveDataPlaneHTTP(ctx, name, ln, h); err != nil {
				t.Errorf("%s server: %v", name, err)
			}
			ln.Close()
		})
		return ln.Addr().String()
	}
	metricsAddr, readyAddr = serve("metrics", a.metricsHandler()), serve("readiness", a.readinessHandler())
	t.Cleanup(func() { cancel(); wg.Wait() })
	return a, metricsAddr, readyAddr
}

// checkAnswers fails t unless /metrics, /stats/prometheus and /healthz/ready
// answer a new client in full.
func checkAnswers(t *testing.T, metricsAddr, readyAddr string) {
	t.Helper()
	// A generous deadline only so that a broken server fails the test
	// instead of hanging it; nothing asserts how long a request takes.
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for _, c := range []struct{ url, want string }{
		{"http://" + metricsAddr + "/metrics", `istio_build{component="ztunnel",tag="test"} 1`},
		{"http://" + metricsAddr + "/stats/prometheus", `istio_build{component="ztunnel",tag="test"} 1`},
		{"http://" + readyAddr + "/healthz/ready", "ready"},
	} {
		resp, err := client.Get(c.url)
		if err != nil {
			t.Errorf("GET %s: %v", c.url, err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), c.want) {
			t.Errorf("GET %s: %d %q, %v; want 200 with %q", c.url, resp.StatusCode, body, err, c.want)
		}
	}
}

// usage is what the test process holds: descriptors, goroutines and
// in-use heap and stack bytes (after a GC).
type usage struct{ fds, goroutines, mem int }

func measure() usage {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds, _ := os.ReadDir("/proc/self/fd")
	return usage{fds: len(fds), goroutines: runtime.NumGoroutine(), mem: int(ms.HeapInuse + ms.StackInuse)}
}

// waitFor polls cond until it holds, for a minute at most (less if the
// test's deadline is nearer); it reports whether cond held. The minute is
// only there so that a broken server fails the test instead of hanging it.
func waitFor(t *testing.T, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	if d, ok := t.Deadline(); ok && d.Add(-5*time.Second).Before(deadline) {
		deadline = d.Add(-5 * time.Second)
	}
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func shedTotal(a *Agent, server string) int {
	n := 0
	for _, reason := range []string{shedIdle, shedBusy} {
		var m dto.Metric
		a.metrics.HTTPShed.WithLabelValues(server, reason).Write(&m)
		n += int(m.GetCounter().GetValue())
	}
	return n
}

// TestDataPlaneHTTPCap connects 1000 idle, slowloris and keep-alive clients
// to each of the metrics and readiness servers, with timeouts too long to
// matter: the cap alone must keep the servers' descriptors, goroutines and
// memory bounded (the clients' connections beyond it are shed, oldest
// first), and /metrics and /healthz/ready must answer new clients while
// the clients hold their connections.
func TestDataPlaneHTTPCap(t *testing.T) {
	const perServer, maxConns = 1000, 64
	a, metricsAddr, readyAddr := dataPlaneServers(t, Config{
		HTTPReadTimeout: time.Hour, HTTPWriteTimeout: time.Hour, HTTPIdleTimeout: time.Hour, HTTPMaxConns: maxConns,
	})
	checkAnswers(t, metricsAddr, readyAddr) // starts the poller and the handlers' lazy state
	before := measure()

	closed := startAttack(t, attack{
		Addrs:  []string{metricsAddr, readyAddr},
		Silent: perServer / 3, Trickle: perServer / 3, KeepAlive: perServer - 2*(perServer/3),
		TrickleEvery: 100 * time.Millisecond,
	})
	// Every connection made has been accepted once perServer-maxConns of
	// each server's have been shed.
	if !waitFor(t, func() bool {
		return shedTotal(a, "metrics") >= perServer-maxConns && shedTotal(a, "readiness") >= perServer-maxConns
	}) {
		t.Fatalf("shed %d metrics and %d readiness connections, want %d each", shedTotal(a, "metrics"), shedTotal(a, "readiness"), perServer-maxConns)
	}
	// The shed connections' descriptors close as their goroutines notice.
	const slack = 16
	var held usage
	if !waitFor(t, func() bool {
		held = measure()
		return held.fds <= before.fds+2*maxConns+slack && held.goroutines <= before.goroutines+2*maxConns+slack
	}) {
		t.Errorf("with %d clients held: %d descriptors and %d goroutines, started with %d and %d; want at most %d more of each",
			2*perServer, held.fds, held.goroutines, before.fds, before.goroutines, 2*maxConns+slack)
	}
	// A connection costs a goroutine, its buffers and at most
	// httpMaxHeaderBytes+4 KiB of headers: allow 64 KiB, and 4 MiB besides.
	if grew, limit := held.mem-before.mem, 2*maxConns*(64<<10)+(4<<20); grew > limit {
		t.Errorf("with %d clients held, heap and stacks grew by %d bytes, want at most %d", 2*perServer, grew, limit)
	}
	t.Logf("%d clients held: +%d descriptors, +%d goroutines, %+d bytes of heap and stacks; the attacker saw %d closed",
		2*perServer, held.fds-before.fds, held.goroutines-before.goroutines, held.mem-before.mem, closed())
	if got := closed(); got < 2*(perServer-maxConns) {
		// The attacker reports closes every 20 ms: wait for it.
		if !waitFor(t, func() bool { return closed() >= 2*(perServer-maxConns) }) {
			t.Errorf("the attacker saw %d connections closed, want at least %d", closed(), 2*(perServer-maxConns))
		}
	}
	checkAnswers(t, metricsAddr, readyAddr)
}

// TestDataPlaneHTTPTimeouts connects idle, slowloris and keep-alive clients
// to both servers, under the cap, with short timeouts from the Config: the
// servers must close every one of them (none shed by the cap) while still
// answering new clients, and give their descriptors back.
func TestDataPlaneHTTPTimeouts(t *testing.T) {
	const perServer = 300
	a, metricsAddr, readyAddr := dataPlaneServers(t, Config{
		HTTPReadTimeout: 300 * time.Millisecond, HTTPWriteTimeout: time.Second, HTTPIdleTimeout: 300 * time.Millisecond,
		HTTPMaxConns: 4 * perServer,
	})
	checkAnswers(t, metricsAddr, readyAddr)
	before := measure()

	closed := startAttack(t, attack{
		Addrs:  []string{metricsAddr, readyAddr},
		Silent: perServer / 3, Trickle: perServer / 3, KeepAlive: perServer - 2*(perServer/3),
		// Far more often than the read timeout: only the timeout on
		// the whole header closes these.
		TrickleEvery: 20 * time.Millisecond,
	})
	checkAnswers(t, metricsAddr, readyAddr)
	if !waitFor(t, func() bool { return closed() == 2*perServer }) {
		t.Fatalf("the servers closed %d of %d connections", closed(), 2*perServer)
	}
	if m, r := shedTotal(a, "metrics"), shedTotal(a, "readiness"); m != 0 || r != 0 {
		t.Errorf("shed %d metrics and %d readiness connections under the cap, want none", m, r)
	}
	var after usage
	if !waitFor(t, func() bool { after = measure(); return after.fds <= before.fds+4 }) {
		t.Errorf("%d descriptors after the timeouts closed every client, %d before", after.fds, before.fds)
	}
	checkAnswers(t, metricsAddr, readyAddr)
}

// TestShedListenerPrefersIdle checks the choice of connection to shed at
// the cap: the oldest one not in a handler, else the oldest of all; the new
// connection is always kept.
func TestShedListenerPrefersIdle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	l := newShedListener(ln, 2, func(r string) { reasons = append(reasons, r) })
	defer l.Close()
	accept := func() *shedConn {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		sc, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sc.Close() })
		return sc.(*shedConn)
	}
	isOpen := func(c *shedConn) bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return c.elem != nil
	}
	c1, c2 := accept(), accept()
	c1.busy.Add(1) // c1 is in a handler, c2 idle
	c3 := accept()
	if !isOpen(c1) || isOpen(c2) || !isOpen(c3) {
		t.Errorf("at the cap with the oldest busy: open %v %v %v, want the idle c2 shed", isOpen(c1), isOpen(c2), isOpen(c3))
	}
	c3.busy.Add(1) // both busy: the oldest goes
	c4 := accept()
	if isOpen(c1) || !isOpen(c3) || !isOpen(c4) {
		t.Errorf("at the cap with all busy: open %v %v %v, want the oldest, c1, shed", isOpen(c1), isOpen(c3), isOpen(c4))
	}
	if want := []string{shedIdle, shedBusy}; strings.Join(reasons, ",") != strings.Join(want, ",") {
		t.Errorf("shed reasons %q, want %q", reasons, want)
	}
	if _, err := c1.Conn.Read(make([]byte, 1)); err == nil {
		t.Error("a shed connection is still readable")
	}
	if n := l.open(); n != 2 {
		t.Errorf("%d open, want 2", n)
	}
}

// TestServeMetrics checks the metrics endpoint of `ferry ca serve`: reg at
// /metrics, nothing else.
func TestServeMetrics(t *testing.T) {
	m := NewMetrics("test")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeMetrics(ctx, ln, m.Registry) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeMetrics: %v", err)
		}
	}()
	for path, want := range map[string]int{"/metrics": http.StatusOK, "/debug/pprof/": http.StatusNotFound} {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || (want == http.StatusOK && !strings.Contains(string(body), "istio_build")) {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}
