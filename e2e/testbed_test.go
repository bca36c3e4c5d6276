package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/testbed"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// bed is one testbed brought up for a test.
type bed struct {
	*testbed.Testbed
}

// binaries are the programs a testbed runs, built for one test.
type binaries struct {
	ferry, podapp string
}

func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func script(t testing.TB, name string) string {
	return filepath.Join(repoRoot(t), "scripts", name)
}

// build compiles the named main packages (paths relative to the repository)
// into a temporary directory and returns the binaries' paths in order.
func build(t testing.TB, pkgs ...string) []string {
	t.Helper()
	dir := t.TempDir()
	var out []string
	for _, pkg := range pkgs {
		bin := filepath.Join(dir, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Dir = repoRoot(t)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
		out = append(out, bin)
	}
	return out
}

// buildAll builds ferry and podapp, or takes prebuilt ones from $FERRY_BIN
// and $PODAPP_BIN.
func buildAll(t testing.TB) binaries {
	t.Helper()
	b := binaries{ferry: os.Getenv("FERRY_BIN"), podapp: os.Getenv("PODAPP_BIN")}
	if b.ferry == "" {
		b.ferry = build(t, "./cmd/ferry")[0]
	}
	if b.podapp == "" {
		b.podapp = build(t, "./scripts/podapp")[0]
	}
	return b
}

// tbOptions configure startTestbed.
type tbOptions struct {
	spec     string // the testbed spec (testbed.ParseSpec); required
	noMesh   bool   // start no agents
	logLevel string // the agents' --log-level; empty means info
	capture  string // the agents' --capture; empty means node
}

// startTestbed brings up a testbed with a fresh prefix and registers its
// teardown, which also checks that nothing of it is left behind.
func startTestbed(t testing.TB, bins binaries, o tbOptions) *bed {
	t.Helper()
	spec, err := testbed.ParseSpec(strings.NewReader(o.spec))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var log bytes.Buffer
	tb, err := testbed.Up(ctx, testbed.Config{RunDir: t.TempDir(), Spec: spec, NoMesh: o.noMesh,
		LogLevel: o.logLevel, Capture: o.capture, Ferry: bins.ferry, Podapp: bins.podapp, Log: &log})
	t.Logf("testbed up:\n%s", log.String())
	if err != nil {
		if tb != nil {
			dumpLogs(t, tb.RunDir)
		}
		t.Fatalf("testbed up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, tb.RunDir)
		}
		if err := tb.Down(false, nil); err != nil {
			t.Errorf("testbed down: %v", err)
		}
		if left := testbed.Leftovers(tb.Prefix); len(left) > 0 {
			t.Errorf("testbed %s left behind: %s", tb.Prefix, strings.Join(left, ", "))
		}
	})
	return &bed{tb}
}

// dumpLogs logs the tail of every log file in the run dir.
func dumpLogs(t testing.TB, runDir string) {
	files, _ := filepath.Glob(filepath.Join(runDir, "logs", "*.log"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || len(b) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		t.Logf("--- %s (tail):\n%s", filepath.Base(f), strings.Join(lines, "\n"))
	}
}

func (tb *bed) pod(t testing.TB, name string) testbed.Pod {
	t.Helper()
	p, ok := tb.Pod(name)
	if !ok {
		t.Fatalf("testbed has no pod %s", name)
	}
	return p
}

func (tb *bed) node(t testing.TB, name string) testbed.Node {
	t.Helper()
	n, ok := tb.Node(name)
	if !ok {
		t.Fatalf("testbed has no node %s", name)
	}
	return n
}

// get runs `podapp get url` in pod from and returns the status code (0 when
// no response came back) and the body. err reports a failed request.
func (tb *bed) get(from testbed.Pod, url string, timeout time.Duration) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	out, err := testbed.Run(ctx, from.Netns, tb.Podapp, "get", url, "--timeout", timeout.String(), "--expect-code", "-1")
	first, body, _ := strings.Cut(out, "\n")
	code, perr := strconv.Atoi(first)
	if perr != nil && err == nil {
		err = fmt.Errorf("podapp get %s: unexpected output %q", url, out)
	}
	return code, body, err
}

// mustGetIP fetches /ip of pod to from pod from and fails the test unless it
// answers 200 with from's address.
func (tb *bed) mustGetIP(t testing.TB, from, to testbed.Pod) {
	t.Helper()
	code, body, err := tb.get(from, "http://"+to.IP+":8000/ip", 5*time.Second)
	if err != nil || code != 200 {
		t.Fatalf("%s → %s /ip: code %d, err %v", from, to, code, err)
	}
	if got := strings.TrimSpace(body); got != from.IP {
		t.Fatalf("%s → %s /ip: server saw %s, want the client pod's IP %s", from, to, got, from.IP)
	}
}

// mustFail checks that from cannot reach to at all (no HTTP response).
func (tb *bed) mustFail(t testing.TB, from, to testbed.Pod) {
	t.Helper()
	code, body, err := tb.get(from, "http://"+to.IP+":8000/ip", 2*time.Second)
	if err == nil || code != 0 {
		t.Fatalf("%s → %s: got %d %q, want no response", from, to, code, strings.TrimSpace(body))
	}
	t.Logf("%s → %s failed as expected: %v", from, to, err)
}

// eventuallyGetIP retries mustGetIP's request for a bounded number of attempts,
// for state that settles asynchronously (an agent restart, a policy reload).
func (tb *bed) eventuallyGetIP(t testing.TB, from, to testbed.Pod) {
	t.Helper()
	var err error
	for range 40 {
		var code int
		var body string
		code, body, err = tb.get(from, "http://"+to.IP+":8000/ip", 2*time.Second)
		if err == nil && code == 200 && strings.TrimSpace(body) == from.IP {
			return
		}
		if err == nil {
			err = fmt.Errorf("code %d body %q", code, strings.TrimSpace(body))
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s → %s never succeeded: %v", from, to, err)
}

// startAgent starts node's agent and waits until it is ready.
func (tb *bed) startAgent(t testing.TB, node string) {
	t.Helper()
	if err := tb.StartAgent(node); err != nil {
		t.Fatal(err)
	}
	if err := tb.WaitReady(t.Context(), node, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// killAgent kills node's agent with SIGKILL, leaving its state behind.
func (tb *bed) killAgent(t testing.TB, node string) {
	t.Helper()
	if err := tb.StopAgent(node, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// --- metrics ---------------------------------------------------------------------

// metrics scrapes node's metrics endpoint.
func (tb *bed) metrics(t testing.TB, node testbed.Node) testutil.Metrics {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := testbed.Run(ctx, node.Netns, tb.Podapp, "get", "http://"+node.IP+":15020/metrics", "--expect-code", "200")
	if err != nil {
		t.Fatalf("scrape %s: %v", node.Name, err)
	}
	_, text, _ := strings.Cut(out, "\n")
	m, err := testutil.ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatalf("scrape %s: %v", node.Name, err)
	}
	return m
}

// --- fabric capture ------------------------------------------------------------

// capture is a tcpdump running in the fabric network namespace.
type capture struct {
	cmd  *exec.Cmd
	file string
	log  bytes.Buffer
	done chan error
}

// startCapture starts tcpdump in the fabric namespace (every bridge port: a
// capture on the bridge device itself would miss frames forwarded between
// ports) for TCP packets, bounded by
// a packet count and a time limit, and waits until it listens.
func (tb *bed) startCapture(t testing.TB) *capture {
	t.Helper()
	c := &capture{file: filepath.Join(t.TempDir(), "fabric.pcap"), done: make(chan error, 1)}
	// -Z root: the file is in a root-only temp dir; timeout bounds a forgotten capture.
	c.cmd = exec.Command("nsenter", "--net=/var/run/netns/"+tb.FabricNetns, "--",
		"timeout", "60", "tcpdump", "-i", "any", "-Q", "in", "-n", "-U", "--immediate-mode", "-s", "0", "-c", "20000", "-Z", "root", "-w", c.file, "tcp")
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	t.Cleanup(func() { c.cmd.Process.Kill(); <-c.done })
	listening := make(chan struct{})
	log := &c.log
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "listening on") {
				close(listening)
			}
		}
		io.Copy(io.Discard, stderr)
		c.done <- c.cmd.Wait()
		close(c.done)
	}()
	select {
	case <-listening:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done // the reader goroutine is done with log
		t.Fatalf("tcpdump did not start listening: %s", log.String())
	}
	return c
}

// stop ends the capture and returns the TCP packets it saw.
func (c *capture) stop(t testing.TB) []packet {
	t.Helper()
	time.Sleep(200 * time.Millisecond) // let the last segments of the exchange pass
	c.cmd.Process.Signal(unix.SIGINT)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("tcpdump did not exit")
	}
	b, err := os.ReadFile(c.file)
	if err != nil {
		t.Fatalf("read capture: %v", err)
	}
	t.Logf("fabric capture: %d bytes", len(b))
	pkts, err := parsePcap(b)
	if err != nil {
		t.Fatalf("parse capture: %v", err)
	}
	return pkts
}

// --- dialing from a pod's network namespace -------------------------------------

// dialFrom opens a TCP connection from inside the named network namespace;
// the connection is usable from any goroutine.
func dialFrom(ctx context.Context, ns, addr string) (net.Conn, error) {
	network := "tcp4"
	if strings.HasPrefix(addr, "[") {
		network = "tcp6" // [IPv6]:port, TestPrivilegedIPv6Refused
	}
	return testbed.Dial(ctx, ns, &net.Dialer{}, network, addr)
}
