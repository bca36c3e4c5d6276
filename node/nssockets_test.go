package node

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/redirect"
)

// TestPrivilegedDialInPodNamespace dials out of a pod-shaped namespace the
// way --capture pod does: the socket made there by nsSockets, marked, bound
// to the pod's address; the peer sees the pod.
func TestPrivilegedDialInPodNamespace(t *testing.T) {
	testutil.Privileged(t)
	pod, peer := testutil.NewNetNS(t), testutil.NewNetNS(t)
	run := func(ns *testutil.NetNS, args ...string) {
		t.Helper()
		if err := ns.Do(func() error {
			out, err := exec.Command("ip", args...).CombinedOutput()
			if err != nil {
				return errors.New(strings.TrimSpace(string(out)))
			}
			return nil
		}); err != nil {
			t.Fatalf("ip %v: %v", args, err)
		}
	}
	run(pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1", "netns", peer.Path())
	run(pod, "addr", "add", "198.18.0.10/24", "dev", "eth0")
	run(pod, "link", "set", "eth0", "up")
	run(peer, "addr", "add", "198.18.0.20/24", "dev", "eth1")
	run(peer, "link", "set", "eth1", "up")
	var ln net.Listener
	if err := peer.Do(func() (err error) { ln, err = net.Listen("tcp4", "198.18.0.20:9999"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	socks, err := startNSSockets()
	if err != nil {
		t.Fatal(err)
	}
	defer socks.stop()
	fd, err := socks.socket(pod)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := redirect.DialSocket(ctx, fd, netip.MustParseAddr("198.18.0.10"), netip.MustParseAddrPort("198.18.0.20:9999"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if got := a.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != netip.MustParseAddr("198.18.0.10") {
		t.Errorf("peer saw %v, want the pod's address", got)
	}
}
