package testbed_test

import (
	"bytes"
	"context"
	"io"
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
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	podapp := filepath.Join(t.TempDir(), "podapp")
	if out, err := exec.Command("go", "build", "-C", root, "-o", podapp, "./scripts/podapp").CombinedOutput(); err != nil {
		t.Fatalf("go build podapp: %v\n%s", err, out)
	}
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
