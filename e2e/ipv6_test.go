package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testbed"
	"github.com/ferrymesh/ferry/internal/testutil"
)

const ipv6Spec = `namespace mesh istio.io/dataplane-mode=ambient
namespace plain
pod mesh/server node1 sa=server app=server
pod plain/peer node1 sa=peer app=peer
pod mesh/client node2 sa=client app=client
`

// TestPrivilegedIPv6Refused makes an enrolled pod dual-stack (IPv6 from
// 2001:2::/48, inside the testbed's namespaces only) and checks that Ferry,
// which carries IPv4 only, refuses its IPv6 TCP both ways instead of letting
// it bypass capture: a pod on the same node cannot reach it over IPv6, it
// cannot reach that pod over IPv6, and IPv4 still goes through HBONE. Both
// IPv6 paths work before the pod's IPv6 address is published and again after
// it is withdrawn, so the refusal is Ferry's and goes with the address.
func TestPrivilegedIPv6Refused(t *testing.T) {
	testutil.Privileged(t)
	bins := buildAll(t)
	tb := startTestbed(t, bins, tbOptions{spec: ipv6Spec})
	server, peer, client := tb.pod(t, "mesh/server"), tb.pod(t, "plain/peer"), tb.pod(t, "mesh/client")
	node1 := tb.node(t, "node1")
	const server6, peer6 = "2001:2:0:1::2", "2001:2:0:1::3"

	// IPv6 on node1 and its two pods (the testbed disables it everywhere):
	// a /128 per pod routed to its veth, fe80::1 on the node side as the
	// pods' gateway, no duplicate address detection.
	sh := func(netns string, cmds ...string) {
		t.Helper()
		for _, c := range cmds {
			if _, err := testbed.Run(t.Context(), netns, "sh", "-c", c); err != nil {
				t.Fatal(err)
			}
		}
	}
	sysctls := "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0"
	sh(node1.Netns, sysctls, "sysctl -qw net.ipv6.conf.all.forwarding=1")
	for _, p := range []struct {
		pod testbed.Pod
		ip  string
	}{{server, server6}, {peer, peer6}} {
		iface := hostIface(t, node1, p.pod)
		sh(node1.Netns,
			"sysctl -qw net.ipv6.conf."+iface+".disable_ipv6=0",
			"ip -6 addr add fe80::1/64 dev "+iface+" nodad",
			"ip -6 route add "+p.ip+"/128 dev "+iface)
		sh(p.pod.Netns, sysctls, "sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0",
			"ip -6 addr add "+p.ip+"/128 dev eth0 nodad",
			"ip -6 route add default via fe80::1 dev eth0")
	}
	listenIn(t, server.Netns, "["+server6+"]:8080")
	listenIn(t, peer.Netns, "["+peer6+"]:8080")
	dial := func(from testbed.Pod, addr string) error {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		c, err := dialFrom(ctx, from.Netns, addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "ok\n" {
			return fmt.Errorf("read %q: %v", b, err)
		}
		return nil
	}
	inbound, outbound := "["+server6+"]:8080", "["+peer6+"]:8080"
	bothWork := func(when string) {
		t.Helper()
		if err := dial(peer, inbound); err != nil {
			t.Fatalf("%s: %s → %s over IPv6: %v", when, peer, inbound, err)
		}
		if err := dial(server, outbound); err != nil {
			t.Fatalf("%s: %s → %s over IPv6: %v", when, server, outbound, err)
		}
	}
	bothWork("before the IPv6 address is published")

	// Publish the address in status.podIPs, as a dual-stack kubelet would.
	pods := filepath.Join(tb.Manifests, "10-pods.yaml")
	orig, err := os.ReadFile(pods)
	if err != nil {
		t.Fatal(err)
	}
	entry := "  - ip: " + server.IP + "\n"
	if strings.Count(string(orig), entry) != 1 {
		t.Fatalf("%s: want one podIPs entry %q:\n%s", pods, entry, orig)
	}
	writeAtomic(t, pods, strings.Replace(string(orig), entry, entry+"  - ip: "+server6+"\n", 1))
	status := func() string {
		out, err := testbed.Run(t.Context(), node1.Netns, tb.Ferry, "status")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	eventually(t, "node1 reports the refused IPv6 pod", func() bool {
		return strings.Contains(status(), "TCP refused (fail closed) for 1 enrolled pods")
	})
	t.Logf("node1$ ferry status\n%s", status())
	if !strings.Contains(status(), "From node:") {
		t.Error("ferry status does not say that the node's own traffic is not captured")
	}

	// IPv6 is refused both ways, at once (ICMPv6 administratively
	// prohibited), not after a timeout.
	if err := dial(peer, inbound); err == nil {
		t.Errorf("%s reached the enrolled pod at %s over IPv6", peer, inbound)
	} else {
		t.Logf("%s → %s refused as expected: %v", peer, inbound, err)
	}
	if err := dial(server, outbound); err == nil {
		t.Errorf("the enrolled pod reached %s over IPv6", outbound)
	} else {
		t.Logf("%s → %s refused as expected: %v", server, outbound, err)
	}
	// IPv4 still goes through HBONE: node1's agent terminates it from the client's address.
	tb.mustGetIP(t, client, server)
	eventually(t, "node1's access log shows the client's HBONE connection", func() bool {
		b, _ := os.ReadFile(node1.AgentLog)
		return strings.Contains(string(b), "direction=inbound mode=hbone src.addr="+client.IP+":")
	})

	// Withdrawing the address removes the refusal.
	writeAtomic(t, pods, string(orig))
	eventually(t, "node1 no longer refuses IPv6", func() bool {
		return strings.Contains(status(), "for 0 enrolled pods")
	})
	bothWork("after the IPv6 address is withdrawn")
}

// hostIface returns the node-side veth of pod (the interface of its /32 route).
func hostIface(t testing.TB, node testbed.Node, pod testbed.Pod) string {
	t.Helper()
	out, err := testbed.Run(t.Context(), node.Netns, "ip", "-4", "route", "show", pod.IP+"/32")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	for i := range f[:max(len(f)-1, 0)] {
		if f[i] == "dev" {
			return f[i+1]
		}
	}
	t.Fatalf("no route to %s on %s: %q", pod.IP, node.Name, out)
	return ""
}

func writeAtomic(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// listenIn serves "ok\n" to every connection on addr in the named network
// namespace until the test ends.
func listenIn(t testing.TB, netns, addr string) {
	t.Helper()
	ln := listenInNetns(t, netns, "tcp6", addr)
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("ok\n"))
			c.Close()
		}
	}()
}
