package testbed_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testbed"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestPrivilegedUpDown brings up a two-node testbed without agents, checks
// that pods reach each other across nodes and that nothing is routed from
// the root namespace, and that Teardown removes everything, also when the
// run directory is gone (as after a killed run).
func TestPrivilegedUpDown(t *testing.T) {
	testutil.Privileged(t)
	podapp := buildPodapp(t)
	routesBefore, _ := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	spec, err := testbed.ParseSpec(strings.NewReader("pod a/one node1\npod a/two node2\n"))
	if err != nil {
		t.Fatal(err)
	}
	prefix := testbed.NewPrefix()
	t.Cleanup(func() {
		testbed.Teardown(prefix, "", false, nil)
	})
	var log bytes.Buffer
	tb, err := testbed.Up(t.Context(), testbed.Config{
		Prefix: prefix, RunDir: t.TempDir(), Spec: spec, NoMesh: true, Podapp: podapp, Log: &log,
	})
	t.Log(log.String())
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := testbed.Load(tb.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	one, _ := loaded.Pod("a/one")
	two, _ := loaded.Pod("a/two")
	if one.IP != "198.18.1.2" || two.IP != "198.18.2.2" || len(loaded.Nodes) != 2 {
		t.Fatalf("testbed.json: pods %+v %+v, %d nodes", one, two, len(loaded.Nodes))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+two.IP+":8000/ip", nil)
	resp, err := testbed.HTTPClient(one.Netns, 5*time.Second).Do(req)
	if err != nil {
		t.Fatalf("%s → %s: %v", one, two, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := strings.TrimSpace(string(body)); got != one.IP {
		t.Errorf("%s → %s /ip: %q, want %s", one, two, got, one.IP)
	}
	if routesAfter, _ := exec.Command("ip", "-4", "route", "show", "table", "all").Output(); !bytes.Equal(routesBefore, routesAfter) {
		t.Errorf("root netns routes changed:\n%s\nwas:\n%s", routesAfter, routesBefore)
	}
	if _, ok := tb.PodPID(one); !ok {
		t.Fatal("pod a/one's server is not running")
	}

	// As after a killed run: the run dir is gone, Teardown goes by prefix.
	pid, _ := tb.PodPID(one)
	if err := os.RemoveAll(tb.RunDir); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(testbed.Known(), prefix) {
		t.Errorf("Known() = %v, lacks %s", testbed.Known(), prefix)
	}
	if err := testbed.Teardown(prefix, testbed.RunDirOf(prefix), false, nil); err != nil {
		t.Fatal(err)
	}
	if left := testbed.Leftovers(prefix); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if _, err := os.Stat(filepath.Join(testbed.Registry, prefix)); err == nil {
		t.Error("registry entry left behind")
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("pod server %d still runs", pid)
	}
}

// TestPrivilegedDirectLayout brings up LayoutDirect and checks its shape:
// two node namespaces and nothing else, each with only lo and eth0 (the
// veth joining them), the pods' addresses on lo, the other node's pods
// routed via that node on eth0, and a pod reaching a pod on the other node
// from its own address. Down leaves nothing behind.
func TestPrivilegedDirectLayout(t *testing.T) {
	testutil.Privileged(t)
	podapp := buildPodapp(t)
	spec, err := testbed.ParseSpec(strings.NewReader("pod a/one node1\npod a/two node2\npod a/three node2\n"))
	if err != nil {
		t.Fatal(err)
	}
	prefix := testbed.NewPrefix()
	t.Cleanup(func() {
		testbed.Teardown(prefix, "", false, nil)
	})
	var log bytes.Buffer
	tb, err := testbed.Up(t.Context(), testbed.Config{
		Prefix: prefix, Spec: spec, Layout: testbed.LayoutDirect, NoMesh: true, Podapp: podapp, Log: &log,
	})
	t.Log(log.String())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := testbed.Leftovers(prefix), []string{"netns " + prefix + "-node1", "netns " + prefix + "-node2"}; !slices.Equal(got, want) {
		t.Errorf("namespaces %v, want %v", got, want)
	}
	if tb.FabricNetns != "" {
		t.Errorf("fabric netns %q in layout direct", tb.FabricNetns)
	}
	one, _ := tb.Pod("a/one")
	three, _ := tb.Pod("a/three")
	n1, _ := tb.Node("node1")
	if one.IP != "198.18.1.2" || three.IP != "198.18.2.3" || one.Netns != n1.Netns || one.NodeIface != "lo" {
		t.Fatalf("pods %+v %+v", one, three)
	}
	for _, n := range tb.Nodes {
		links, err := testbed.Run(t.Context(), n.Netns, "ip", "-o", "link", "show")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for line := range strings.Lines(links) {
			name, _, _ := strings.Cut(strings.Fields(line)[1], "@")
			names = append(names, strings.TrimSuffix(name, ":"))
		}
		if !slices.Equal(names, []string{"lo", "eth0"}) {
			t.Errorf("%s: links %v, want lo and eth0", n.Name, names)
		}
	}
	route, err := testbed.Run(t.Context(), one.Netns, "ip", "-4", "route", "get", three.IP, "from", one.IP)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(route, "via 198.18.0.2 dev eth0") {
		t.Errorf("route %s → %s: %s, want via 198.18.0.2 dev eth0", one, three, route)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(one.IP)}}
	c, err := testbed.Dial(ctx, one.Netns, d, "tcp4", three.IP+":8000")
	if err != nil {
		t.Fatalf("%s → %s: %v", one, three, err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /ip HTTP/1.0\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if got := strings.TrimSpace(string(body)); got != one.IP {
		t.Errorf("%s → %s /ip: %q, want %s", one, three, got, one.IP)
	}

	if err := tb.Down(false, nil); err != nil {
		t.Fatal(err)
	}
	if left := testbed.Leftovers(prefix); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if _, err := os.Stat(tb.RunDir); err == nil {
		t.Errorf("run dir %s left behind", tb.RunDir)
	}
}

// buildPodapp builds scripts/podapp into a temporary directory.
func buildPodapp(t *testing.T) string {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	podapp := filepath.Join(t.TempDir(), "podapp")
	if out, err := exec.Command("go", "build", "-C", root, "-o", podapp, "./scripts/podapp").CombinedOutput(); err != nil {
		t.Fatalf("go build podapp: %v\n%s", err, out)
	}
	return podapp
}
