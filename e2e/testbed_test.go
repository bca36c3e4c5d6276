package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/netns"
	"github.com/ferrymesh/ferry/internal/testutil"
	"golang.org/x/sys/unix"
)

// testbed is one running scripts/testbed instance, as its testbed.json
// describes it.
type testbed struct {
	Prefix      string   `json:"prefix"`
	RunDir      string   `json:"run_dir"`
	Mesh        bool     `json:"mesh"`
	FabricNetns string   `json:"fabric_netns"`
	Manifests   string   `json:"manifests"`
	CACert      string   `json:"ca_cert"`
	Ferry       string   `json:"ferry"`
	Podapp      string   `json:"podapp"`
	Nodes       []tbNode `json:"nodes"`
	Pods        []tbPod  `json:"pods"`
}

type tbNode struct {
	Name     string `json:"name"`
	Netns    string `json:"netns"`
	IP       string `json:"ip"`
	PodCIDR  string `json:"pod_cidr"`
	PinDir   string `json:"pin_dir"`
	AgentLog string `json:"agent_log"`
}

type tbPod struct {
	Namespace      string `json:"namespace"`
	Name           string `json:"name"`
	ServiceAccount string `json:"service_account"`
	Node           string `json:"node"`
	IP             string `json:"ip"`
	Netns          string `json:"netns"`
	Enrolled       bool   `json:"enrolled"`
	Log            string `json:"log"`
}

// String returns "namespace/name".
func (p tbPod) String() string { return p.Namespace + "/" + p.Name }

// Principal returns the pod's SPIFFE identity in the default trust domain.
func (p tbPod) Principal() string {
	return "spiffe://cluster.local/ns/" + p.Namespace + "/sa/" + p.ServiceAccount
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
	spec   string   // the testbed spec (scripts/testbed help); required
	noMesh bool     // start no agents
	args   []string // more `testbed up` arguments
}

// startTestbed brings up a testbed with a fresh prefix and registers its
// teardown, which also checks that nothing of it is left behind.
func startTestbed(t testing.TB, bins binaries, o tbOptions) *testbed {
	t.Helper()
	prefix := fmt.Sprintf("ftb%06x", rand.N(1<<24))
	runDir := t.TempDir()
	specFile := filepath.Join(t.TempDir(), "spec")
	if err := os.WriteFile(specFile, []byte(o.spec), 0o644); err != nil {
		t.Fatal(err)
	}
	tbScript := script(t, "testbed")
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, runDir)
		}
		out, err := exec.Command(tbScript, "down", "--prefix", prefix).CombinedOutput()
		if err != nil {
			t.Errorf("testbed down: %v\n%s", err, out)
		}
		if left := leftovers(prefix); len(left) > 0 {
			t.Errorf("testbed %s left behind: %s", prefix, strings.Join(left, ", "))
		}
	})
	args := []string{"up", "--prefix", prefix, "--run-dir", runDir, "--spec", specFile, "--podapp", bins.podapp}
	if bins.ferry != "" {
		args = append(args, "--ferry", bins.ferry)
	}
	if o.noMesh {
		args = append(args, "--no-mesh")
	}
	args = append(args, o.args...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tbScript, args...)
	out, err := cmd.CombinedOutput()
	t.Logf("testbed %s:\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("testbed up: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(runDir, "testbed.json"))
	if err != nil {
		t.Fatal(err)
	}
	tb := new(testbed)
	if err := json.Unmarshal(b, tb); err != nil {
		t.Fatalf("testbed.json: %v", err)
	}
	return tb
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

// leftovers lists the network namespaces and BPF pins named after prefix.
func leftovers(prefix string) []string {
	var left []string
	out, _ := exec.Command("ip", "netns", "list").Output()
	for line := range strings.Lines(string(out)) {
		if name, _, _ := strings.Cut(strings.TrimSpace(line), " "); strings.HasPrefix(name, prefix+"-") {
			left = append(left, "netns "+name)
		}
	}
	pins, _ := filepath.Glob("/sys/fs/bpf/" + prefix + "-*")
	for _, p := range pins {
		left = append(left, "pin "+p)
	}
	return left
}

func (tb *testbed) pod(t testing.TB, name string) tbPod {
	t.Helper()
	for _, p := range tb.Pods {
		if p.String() == name {
			return p
		}
	}
	t.Fatalf("testbed has no pod %s", name)
	return tbPod{}
}

func (tb *testbed) node(t testing.TB, name string) tbNode {
	t.Helper()
	for _, n := range tb.Nodes {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("testbed has no node %s", name)
	return tbNode{}
}

// inNetns runs a command in the named network namespace (nsenter keeps the
// host's /sys, unlike ip netns exec) and returns its stdout; stderr goes into
// the error.
func inNetns(ctx context.Context, netns string, argv ...string) (string, error) {
	args := append([]string{"--net=/var/run/netns/" + netns, "--"}, argv...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), err
}

// get runs `podapp get url` in pod from and returns the status code (0 when
// no response came back) and the body. err reports a failed request.
func (tb *testbed) get(from tbPod, url string, timeout time.Duration) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	out, err := inNetns(ctx, from.Netns, tb.Podapp, "get", url, "--timeout", timeout.String(), "--expect-code", "-1")
	first, body, _ := strings.Cut(out, "\n")
	code, perr := strconv.Atoi(first)
	if perr != nil && err == nil {
		err = fmt.Errorf("podapp get %s: unexpected output %q", url, out)
	}
	return code, body, err
}

// mustGetIP fetches /ip of pod to from pod from and fails the test unless it
// answers 200 with from's address.
func (tb *testbed) mustGetIP(t testing.TB, from, to tbPod) {
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
func (tb *testbed) mustFail(t testing.TB, from, to tbPod) {
	t.Helper()
	code, body, err := tb.get(from, "http://"+to.IP+":8000/ip", 2*time.Second)
	if err == nil || code != 0 {
		t.Fatalf("%s → %s: got %d %q, want no response", from, to, code, strings.TrimSpace(body))
	}
	t.Logf("%s → %s failed as expected: %v", from, to, err)
}

// eventuallyGetIP retries mustGetIP's request for a bounded number of attempts,
// for state that settles asynchronously (an agent restart, a policy reload).
func (tb *testbed) eventuallyGetIP(t testing.TB, from, to tbPod) {
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

// testbedCmd runs scripts/testbed with args against tb.
func (tb *testbed) testbedCmd(t testing.TB, args ...string) {
	t.Helper()
	args = append(args, "--prefix", tb.Prefix)
	out, err := exec.Command(script(t, "testbed"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("testbed %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// --- metrics ---------------------------------------------------------------------

// metrics scrapes node's metrics endpoint.
func (tb *testbed) metrics(t testing.TB, node tbNode) testutil.Metrics {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := inNetns(ctx, node.Netns, tb.Podapp, "get", "http://"+node.IP+":15020/metrics", "--expect-code", "200")
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
func (tb *testbed) startCapture(t testing.TB) *capture {
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
	var c net.Conn
	err := netns.DoNamed(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
