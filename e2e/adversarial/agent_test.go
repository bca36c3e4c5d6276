package adversarial

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// ferry builds the agent binary once per test process (or takes
// $FERRY_BIN); TestMain removes the build directory.
var ferry struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if ferry.dir != "" {
		os.RemoveAll(ferry.dir)
	}
	os.Exit(code)
}

// ferryBinary returns the path of the ferry binary under test.
func ferryBinary(t testing.TB) string {
	t.Helper()
	testutil.System(t) // every test that needs the binary runs agents
	ferry.once.Do(func() {
		if ferry.bin = os.Getenv("FERRY_BIN"); ferry.bin != "" {
			return
		}
		if ferry.dir, ferry.err = os.MkdirTemp("", "ferry-adversarial-"); ferry.err != nil {
			return
		}
		ferry.bin = filepath.Join(ferry.dir, "ferry")
		cmd := exec.Command("go", "build", "-o", ferry.bin, "./cmd/ferry")
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			ferry.err = fmt.Errorf("go build ./cmd/ferry: %w\n%s", err, out)
		}
	})
	if ferry.err != nil {
		t.Fatal(ferry.err)
	}
	return ferry.bin
}

// The loopback "cluster": node a runs the agent under test; node b is played
// by the test.
var (
	serverPod = netip.MustParseAddr("127.0.10.2") // foo/server, node a
	clientPod = netip.MustParseAddr("127.0.10.3") // foo/client, node a
	remotePod = netip.MustParseAddr("127.0.20.2") // foo/remote, node b
)

const baseManifests = `apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bar}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: foo, labels: {app: server}}
spec: {nodeName: a, serviceAccountName: server}
status: {podIP: 127.0.10.2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: foo, labels: {app: client}}
spec: {nodeName: a, serviceAccountName: client}
status: {podIP: 127.0.10.3}
---
apiVersion: v1
kind: Pod
metadata: {name: remote, namespace: foo, labels: {app: remote}}
spec: {nodeName: b, serviceAccountName: remote}
status: {podIP: 127.0.20.2}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: bar, labels: {app: legacy}}
spec: {nodeName: b, serviceAccountName: legacy}
status: {podIP: 127.0.30.9}
`

// onlyClientPolicy allows foo/server to be reached only by foo/client's
// identity.
const onlyClientPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: foo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/foo/sa/client"]}}]}]
`

func fooID(sa string) certs.Identity {
	return certs.Identity{TrustDomain: certs.DefaultTrustDomain, Namespace: "foo", ServiceAccount: sa}
}

// agent is one `ferry agent --redirect none` process on loopback.
type agent struct {
	t        testing.TB
	ca       *certstest.CA
	dir      string
	caArgs   []string // how the agent gets certificates: a local CA or --ca-addr
	log      string
	cmd      *exec.Cmd
	done     chan error
	hbone    netip.AddrPort // on serverPod
	outbound netip.AddrPort // on remotePod: stands in for capture of traffic to it
	inbound  netip.AddrPort // on serverPod
	admin    netip.AddrPort
	metrics  netip.AddrPort
	ready    netip.AddrPort
}

// freePort returns a TCP port free on ip right now.
//
// Ports come from below the kernel's ephemeral range (32768 and up by
// default), so the many client sockets these tests open cannot take a port
// between this check and the agent's bind.
func freePort(t testing.TB, ip netip.Addr) uint16 {
	t.Helper()
	for range 100 {
		port := uint16(20000 + rand.N(12000))
		ln, err := net.Listen("tcp4", netip.AddrPortFrom(ip, port).String())
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}

// startAgent runs an agent for node a with the given manifests, its CA
// minted by certstest, and waits until it is ready. It stops the agent (and
// checks it exits cleanly) when the test ends.
func startAgent(t testing.TB, manifests string) *agent {
	t.Helper()
	a := newAgent(t, manifests)
	caCert, caKey := a.ca.WriteFiles(t, a.dir)
	a.caArgs = []string{"--ca-cert", caCert, "--ca-key", caKey}
	a.start()
	return a
}

// newAgent prepares an agent's CA, manifests and addresses without
// starting it.
func newAgent(t testing.TB, manifests string) *agent {
	t.Helper()
	a := &agent{t: t, ca: certstest.NewCA(t), dir: t.TempDir()}
	if err := os.MkdirAll(filepath.Join(a.dir, "m"), 0o755); err != nil {
		t.Fatal(err)
	}
	a.writeManifest("cluster.yaml", manifests)
	port := func(ip netip.Addr) netip.AddrPort { return netip.AddrPortFrom(ip, freePort(t, ip)) }
	a.hbone, a.outbound, a.inbound = port(serverPod), port(remotePod), port(serverPod)
	control := testutil.ControlAddrs(t, 3)
	a.admin, a.metrics, a.ready = netip.MustParseAddrPort(control[0]), netip.MustParseAddrPort(control[1]), netip.MustParseAddrPort(control[2])
	return a
}

// start runs the agent process (again, after kill) and waits until it is
// ready.
func (a *agent) start() {
	t := a.t
	t.Helper()
	a.log = filepath.Join(a.dir, fmt.Sprintf("agent-%d.log", time.Now().UnixNano()))
	logf, err := os.Create(a.log)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"agent", "--node", "a", "--manifests", filepath.Join(a.dir, "m")}, a.caArgs...)
	a.cmd = exec.Command(ferryBinary(t), append(args, "--redirect", "none", "--log-level", "info",
		"--hbone-addr", a.hbone.String(), "--outbound-addr", a.outbound.String(), "--inbound-addr", a.inbound.String(),
		"--admin-addr", a.admin.String(), "--metrics-addr", a.metrics.String(), "--readiness-addr", a.ready.String(),
		"--drain-timeout", "1s")...)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	logf.Close()
	cmd, done := a.cmd, make(chan error, 1)
	a.done = done
	go func() { done <- cmd.Wait() }()
	t.Cleanup(a.stop)
	a.waitReady()
}

// stop ends the agent with SIGTERM and fails the test if it does not exit
// cleanly; on failure it logs the agent's log tail.
func (a *agent) stop() {
	if a.cmd == nil {
		return
	}
	cmd := a.cmd
	a.cmd = nil
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.done:
		if err != nil {
			a.t.Errorf("agent exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-a.done
		a.t.Errorf("agent did not exit within 20s of SIGTERM")
	}
	if a.t.Failed() {
		a.dumpLog()
	}
}

// kill ends the agent with SIGKILL.
func (a *agent) kill() {
	if a.cmd == nil {
		return
	}
	a.cmd.Process.Kill()
	<-a.done
	a.cmd = nil
}

func (a *agent) dumpLog() {
	b, _ := os.ReadFile(a.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 80 {
		lines = lines[len(lines)-80:]
	}
	a.t.Logf("--- agent log (tail):\n%s", strings.Join(lines, "\n"))
}

// alive reports whether the agent process is still running.
func (a *agent) alive() bool {
	select {
	case err := <-a.done:
		a.done <- err
		return false
	default:
		return a.cmd != nil
	}
}

func (a *agent) waitReady() {
	a.t.Helper()
	var last string
	for range 600 {
		if !a.alive() {
			a.dumpLog()
			a.t.Fatal("agent exited before it was ready")
		}
		resp, err := http.Get("http://" + a.ready.String() + "/healthz/ready")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = strings.TrimSpace(string(b))
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.dumpLog()
	a.t.Fatalf("agent never ready: %s", last)
}

// writeManifest atomically writes one inventory file.
func (a *agent) writeManifest(name, doc string) {
	a.t.Helper()
	p := filepath.Join(a.dir, "m", name)
	if err := os.WriteFile(p+".tmp", []byte(doc), 0o644); err != nil {
		a.t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		a.t.Fatal(err)
	}
}

// leaf mints a client or server certificate for id from the agent's CA.
func (a *agent) leaf(id certs.Identity, opts ...certstest.LeafOption) tls.Certificate {
	a.t.Helper()
	return a.ca.Leaf(a.t, id, opts...)
}

// peerTLS is a TLS configuration for a peer presenting cert that verifies
// the agent as foo/server, as a well-behaved peer agent would.
func (a *agent) peerTLS(cert tls.Certificate) *tls.Config {
	c := certstest.PeerConfig(cert)
	c.InsecureSkipVerify = true // the server's identity is checked by the tests that care
	return c
}

// --- metrics -----------------------------------------------------------------

// scrape reads the agent's metrics endpoint.
func (a *agent) scrape() (testutil.Metrics, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + a.metrics.String() + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("metrics: status %d", resp.StatusCode)
	}
	return testutil.ParseMetrics(resp.Body)
}

func (a *agent) mustScrape() testutil.Metrics {
	a.t.Helper()
	s, err := a.scrape()
	if err != nil {
		a.t.Fatalf("scrape: %v", err)
	}
	return s
}

// usage is the agent's resource use at one moment.
type usage struct {
	goroutines, heapInuse, fds, rss float64
}

func (u usage) String() string {
	return fmt.Sprintf("goroutines=%.0f heap_inuse=%.1fMiB fds=%.0f rss=%.1fMiB",
		u.goroutines, u.heapInuse/(1<<20), u.fds, u.rss/(1<<20))
}

func usageOf(s testutil.Metrics) usage {
	return usage{
		goroutines: s.Sum("go_goroutines"),
		heapInuse:  s.Sum("go_memstats_heap_inuse_bytes"),
		fds:        s.Sum("process_open_fds"),
		rss:        s.Sum("process_resident_memory_bytes"),
	}
}

func (a *agent) usage() usage {
	a.t.Helper()
	return usageOf(a.mustScrape())
}

// monitor samples the agent's usage every interval until stopped and keeps
// the peak of each figure.
type monitor struct {
	mu   sync.Mutex
	peak usage
	n    int
	stop chan struct{}
	done chan struct{}
}

func (a *agent) monitor(interval time.Duration) *monitor {
	m := &monitor{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for {
			if s, err := a.scrape(); err == nil {
				u := usageOf(s)
				m.mu.Lock()
				m.peak = usage{max(m.peak.goroutines, u.goroutines), max(m.peak.heapInuse, u.heapInuse),
					max(m.peak.fds, u.fds), max(m.peak.rss, u.rss)}
				m.n++
				m.mu.Unlock()
			}
			select {
			case <-m.stop:
				return
			case <-tk.C:
			}
		}
	}()
	return m
}

// Stop ends sampling and returns the peak usage and the number of samples.
func (m *monitor) Stop() (usage, int) {
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.peak, m.n
}

// settle waits until the agent's goroutines and fds are back within slack
// of base, for at most limit, and returns the last usage seen.
func (a *agent) settle(base usage, slackG, slackFD float64, limit time.Duration) (usage, bool) {
	a.t.Helper()
	start := time.Now()
	deadline := start.Add(limit)
	for {
		u := a.usage()
		if u.goroutines <= base.goroutines+slackG && u.fds <= base.fds+slackFD {
			if d := time.Since(start); d > 2*time.Second {
				a.t.Logf("settled after %v", d.Round(100*time.Millisecond))
			}
			return u, true
		}
		if time.Now().After(deadline) {
			a.logGoroutines()
			return u, false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// logGoroutines logs the agent's goroutine profile from its admin
// endpoint (/debug/pprof/goroutine?debug=1), to explain a leak.
func (a *agent) logGoroutines() {
	resp, err := http.Get("http://" + a.admin.String() + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		a.t.Logf("goroutine profile: %v", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	a.t.Logf("agent goroutines:\n%s", b)
}

// --- upstream applications ---------------------------------------------------

// echoServer is a pod application: it echoes every byte back and counts
// accepted connections.
type echoServer struct {
	addr     netip.AddrPort
	accepted atomic.Int64
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// startEcho serves echo on a fresh port of ip until the test ends.
func startEcho(t testing.TB, ip netip.Addr) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{addr: ln.Addr().(*net.TCPAddr).AddrPort(), conns: map[net.Conn]struct{}{}}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		e.closeAll()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			e.mu.Lock()
			e.conns[c] = struct{}{}
			e.mu.Unlock()
			wg.Go(func() {
				io.Copy(c, c)
				c.Close()
				e.mu.Lock()
				delete(e.conns, c)
				e.mu.Unlock()
			})
		}
	})
	return e
}

// waitAccepted waits up to a second for the accept count to reach n (the
// agent answers 200 once its dial completed, which can be before Accept
// returns here) and returns the count.
func (e *echoServer) waitAccepted(n int64) int64 {
	for range 100 {
		if e.accepted.Load() >= n {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return e.accepted.Load()
}

// closeAll closes every open connection: the pod going away mid-stream.
func (e *echoServer) closeAll() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := len(e.conns)
	for c := range e.conns {
		c.Close()
	}
	return n
}

// isClosedErr reports errors that mean the peer closed or reset the
// connection.
func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || strings.Contains(fmt.Sprint(err), "tls:")
}

// ctxTimeout returns a context bounded by d and the test's own.
func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }
