package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// keepAliveGet sends GET /ip on an open HTTP/1.1 connection and returns the
// address the server saw.
func keepAliveGet(t testing.TB, c net.Conn, r *bufio.Reader) (string, error) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprint(c, "GET /ip HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b := make([]byte, 64)
	n, _ := resp.Body.Read(b)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return strings.TrimSpace(string(b[:n])), nil
}

// waitLog waits until path contains substr.
func waitLog(t testing.TB, path, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), substr) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	t.Fatalf("%s never logged %q:\n%s", path, substr, b)
}

// TestPrivilegedUpgrade replaces node1's agent the way a DaemonSet rolling
// update with maxSurge does: the new agent starts next to the old one (SO_REUSEPORT
// listeners, the pinned sk_lookup program, SOCKMAP entries swapped to the new
// sockets), then the old one gets SIGTERM and drains. A long-running connection
// keeps working through the swap and new connections work throughout.
func TestPrivilegedUpgrade(t *testing.T) {
	testutil.Privileged(t)
	bins := buildAll(t)
	tb := startTestbed(t, bins, tbOptions{spec: meshSpec})
	client, remote := tb.pod(t, "mesh/client"), tb.pod(t, "mesh/remote")
	node1 := tb.node(t, "node1")

	long, err := dialFrom(t.Context(), client.Netns, remote.IP+":8000")
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	lr := bufio.NewReader(long)
	if ip, err := keepAliveGet(t, long, lr); err != nil || ip != client.IP {
		t.Fatalf("long connection before the upgrade: %q %v", ip, err)
	}

	// The new agent, with the old one's command line.
	newLog := filepath.Join(tb.RunDir, "logs", "agent-node1-new.log")
	logf, err := os.Create(newLog)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + node1.Netns, "--"}, tb.AgentArgv(node1)...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	waitLog(t, newLog, "pod captured", 20*time.Second)

	// New connections now go to the new agent; the old one still runs.
	for range 3 {
		tb.mustGetIP(t, client, remote)
	}
	oldPid := readPid(t, filepath.Join(tb.RunDir, "pids", "agent-node1.pid"))
	if err := syscall.Kill(oldPid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitLog(t, node1.AgentLog, "draining", 10*time.Second)

	// During the old agent's drain: its connection keeps working, and new
	// connections are served by the new agent.
	for i := range 3 {
		if ip, err := keepAliveGet(t, long, lr); err != nil || ip != client.IP {
			t.Fatalf("long connection during the drain (request %d): %q %v", i, ip, err)
		}
		tb.mustGetIP(t, client, remote)
	}
	long.Close()
	deadline := time.Now().Add(20 * time.Second)
	for syscall.Kill(oldPid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the old agent did not exit after its last connection closed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitLog(t, node1.AgentLog, "agent stopped", 5*time.Second)
	tb.mustGetIP(t, client, remote)
	select {
	case err := <-exited:
		t.Fatalf("the new agent exited: %v", err)
	default:
	}
}

func readPid(t testing.TB, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestPrivilegedPolicy enforces policies the issue lists on the testbed: a
// DENY on a port, and an open connection closed when a new policy denies it.
// (ALLOW by principal, STRICT in a namespace and mesh-wide STRICT run in
// TestPrivilegedDemo.)
func TestPrivilegedPolicy(t *testing.T) {
	testutil.Privileged(t)
	bins := buildAll(t)
	tb := startTestbed(t, bins, tbOptions{spec: meshSpec})
	client, remote := tb.pod(t, "mesh/client"), tb.pod(t, "mesh/remote")
	write := func(name, doc string) {
		t.Helper()
		p := filepath.Join(tb.Manifests, name)
		if err := os.WriteFile(p+".tmp", []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			t.Fatal(err)
		}
	}
	denyPort := func(port string) string {
		return `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-port, namespace: mesh}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["` + port + `"]}}]}]
`
	}

	// A DENY on another port changes nothing.
	write("deny-port.yaml", denyPort("9000"))
	time.Sleep(2 * time.Second) // the agents poll manifests every second
	tb.mustGetIP(t, client, remote)

	// An open connection is closed once a DENY on its port arrives, and new
	// ones are refused.
	c, err := dialFrom(t.Context(), client.Netns, remote.IP+":8000")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if ip, err := keepAliveGet(t, c, r); err != nil || ip != client.IP {
		t.Fatalf("before the DENY: %q %v", ip, err)
	}
	write("deny-port.yaml", denyPort("8000"))
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	closed := false
	for ctx.Err() == nil {
		if _, err := keepAliveGet(t, c, r); err != nil {
			closed = true
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if !closed {
		t.Fatal("the open connection survived a DENY on its port")
	}
	tb.mustFail(t, client, remote)

	// Removing the policy restores access.
	write("deny-port.yaml", "")
	tb.eventuallyGetIP(t, client, remote)
}
