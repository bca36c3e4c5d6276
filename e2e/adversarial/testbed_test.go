package adversarial

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/internal/h2peer"
	"github.com/ferrymesh/ferry/internal/testbed"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// bed is one testbed brought up for a test.
type bed struct {
	*testbed.Testbed
}

// podAddr is pod's address with port.
func podAddr(p testbed.Pod, port uint16) string {
	return netip.AddrPortFrom(netip.MustParseAddr(p.IP), port).String()
}

func (tb *bed) pod(t testing.TB, name string) testbed.Pod {
	t.Helper()
	p, ok := tb.Pod(name)
	if !ok {
		t.Fatalf("testbed has no pod %s", name)
	}
	return p
}

func (tb *bed) nodeNetns(name string) (netns, ip, pin string) {
	n, _ := tb.Node(name)
	return n.Netns, n.IP, n.PinDir
}

// startTestbed brings up a testbed from spec with a fresh prefix and tears
// it down when the test ends, failing if anything named after the prefix
// is left behind.
func startTestbed(t *testing.T, spec string) *bed {
	t.Helper()
	podapp := filepath.Join(t.TempDir(), "podapp")
	build := exec.Command("go", "build", "-o", podapp, "./scripts/podapp")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build podapp: %v\n%s", err, out)
	}
	s, err := testbed.ParseSpec(strings.NewReader(spec))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var log bytes.Buffer
	tb, err := testbed.Up(ctx, testbed.Config{RunDir: t.TempDir(), Spec: s, Ferry: ferryBinary(t), Podapp: podapp, Log: &log})
	if err != nil {
		t.Fatalf("testbed up: %v\n%s", err, log.String())
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range tb.Nodes {
				t.Logf("--- %s (tail):\n%s", filepath.Base(n.AgentLog), tail(n.AgentLog, 40))
			}
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

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// dialFrom opens a TCP connection from inside a network namespace; the
// connection works from any goroutine.
func dialFrom(ctx context.Context, netns, addr string, timeout time.Duration) (net.Conn, error) {
	return dialFromAddr(ctx, netns, "", addr, timeout)
}

// dialFromAddr is dialFrom with the socket bound to src when it is not
// empty.
func dialFromAddr(ctx context.Context, ns, src, addr string, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	return testbed.Dial(ctx, ns, d, "tcp4", addr)
}

// httpGetFrom sends GET url from netns over a fresh connection and returns
// the status and body.
func httpGetFrom(ctx context.Context, netns, url string, timeout time.Duration) (int, string, error) {
	c := http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return dialFrom(ctx, netns, addr, timeout)
		},
	}}
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

// scrapeNode reads a node agent's metrics from inside the node.
func (tb *bed) scrapeNode(t testing.TB, node string) testutil.Metrics {
	t.Helper()
	netns, ip, _ := tb.nodeNetns(node)
	st, body, err := httpGetFrom(t.Context(), netns, "http://"+ip+":15020/metrics", 10*time.Second)
	if err != nil || st != 200 {
		t.Fatalf("scrape %s: %d %v", node, st, err)
	}
	s, err := testutil.ParseMetrics(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// kernelObjects lists what Ferry owns in a node: policy rules, routes in
// non-main tables, and BPF pins.
func (tb *bed) kernelObjects(t testing.TB, node string) []string {
	t.Helper()
	netns, _, pin := tb.nodeNetns(node)
	var out []string
	rules, err := testbed.Run(t.Context(), netns, "ip", "-4", "rule", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(rules), "\n") {
		if p, _, _ := strings.Cut(l, ":"); p != "0" && p != "32766" && p != "32767" {
			out = append(out, "rule "+strings.Join(strings.Fields(l), " "))
		}
	}
	routes, err := testbed.Run(t.Context(), netns, "ip", "-4", "route", "show", "table", "all")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(routes), "\n") {
		if strings.Contains(l, "table ") && !strings.Contains(l, "table local") && !strings.Contains(l, "table main") {
			out = append(out, "route "+strings.Join(strings.Fields(l), " "))
		}
	}
	filepath.WalkDir(pin, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != pin {
			out = append(out, "pin "+strings.TrimPrefix(p, pin))
		}
		return nil
	})
	slices.Sort(out)
	return out
}

// podGet fetches url from a pod (one HTTP/1.0 request on its own
// connection) and returns the status and body.
func podGet(t testing.TB, from testbed.Pod, url string) (int, string, error) {
	t.Helper()
	return httpGetFrom(t.Context(), from.Netns, url, 3*time.Second)
}

// testbedLeaf signs a certificate for id with the testbed's CA.
func testbedLeaf(t testing.TB, tb *bed, id certs.Identity) tls.Certificate {
	t.Helper()
	ca, err := certs.LoadLocalCA(filepath.Join(tb.RunDir, "ca", "root-cert.pem"), filepath.Join(tb.RunDir, "ca", "root-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := certs.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Sign(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatalf("sign %s: %v", id, err)
	}
	c := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// hboneFrom opens TLS to dst:15008 from a pod's namespace and starts an
// HTTP/2 peer on it.
func hboneFrom(t testing.TB, from testbed.Pod, dst testbed.Pod, cert tls.Certificate) (*h2peer.Peer, error) {
	t.Helper()
	c, err := dialFrom(t.Context(), from.Netns, podAddr(dst, 15008), 5*time.Second)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true,
		Certificates: []tls.Certificate{cert}}
	tc := tls.Client(c, cfg)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	p, err := h2peer.Client(tc, bigWindow)
	if err != nil {
		c.Close()
		return nil, err
	}
	// TLS 1.3: the server checks our certificate after our Finished; its
	// SETTINGS prove it accepted.
	if _, err := p.WaitSettings(10 * time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return p, nil
}

const advSpec = `
namespace mesh istio.io/dataplane-mode=ambient
namespace plain
pod mesh/client node1 sa=client
pod mesh/server node2 sa=server
pod plain/legacy node1 sa=legacy
pod plain/attacker node2 sa=attacker
pod mesh/mallory node1 sa=mallory
`

// TestPrivilegedAdversarialTestbed attacks a two-node testbed with eBPF
// capture: hostile certificates and CONNECTs on the real 15008 path, the
// admin endpoint from pods, and SIGKILL of an agent under traffic.
func TestPrivilegedAdversarialTestbed(t *testing.T) {
	testutil.Privileged(t)
	tb := startTestbed(t, advSpec)
	client, server := tb.pod(t, "mesh/client"), tb.pod(t, "mesh/server")
	legacy, attacker := tb.pod(t, "plain/legacy"), tb.pod(t, "plain/attacker")
	td := certs.DefaultTrustDomain
	meshID := func(sa string) certs.Identity {
		return certs.Identity{TrustDomain: td, Namespace: "mesh", ServiceAccount: sa}
	}
	// Sanity: the mesh works.
	if st, body, err := podGet(t, client, "http://"+podAddr(server, 8000)+"/ip"); err != nil || st != 200 || strings.TrimSpace(body) != client.IP {
		t.Fatalf("mesh/client → mesh/server: %d %q %v", st, body, err)
	}

	t.Run("identity on 15008", func(t *testing.T) {
		// From a pod outside the mesh, straight at the captured HBONE port.
		foreign := testbedLeaf(t, tb, certs.Identity{TrustDomain: "clusterset.local", Namespace: "mesh", ServiceAccount: "client"})
		other := certstest.NewCA(t).Leaf(t, meshID("client"))
		for name, cert := range map[string]tls.Certificate{"other trust domain": foreign, "untrusted root": other} {
			if p, err := hboneFrom(t, attacker, server, cert); err == nil {
				p.Close()
				t.Errorf("%s: the handshake on %s:15008 succeeded", name, server.IP)
			} else {
				t.Logf("%s: refused: %v", name, err)
			}
		}
		// Control: a valid certificate is accepted on the same path.
		p, err := hboneFrom(t, attacker, server, testbedLeaf(t, tb, meshID("client")))
		if err != nil {
			t.Fatalf("control: %v", err)
		}
		p.Close()
	})

	t.Run("tunnel abuse", func(t *testing.T) {
		p, err := hboneFrom(t, attacker, server, testbedLeaf(t, tb, meshID("client")))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		before := tb.scrapeNode(t, "node2")
		_, node2IP, _ := tb.nodeNetns("node2")
		id := uint32(1)
		refused := 0
		for _, tc := range []struct {
			name      string
			authority string
			want      int
		}{
			{"pod on another node", podAddr(client, 8000), 400},
			{"node address", node2IP + ":15000", 400},
			{"agent outbound port", podAddr(server, 15001), 503},
			{"agent inbound port", podAddr(server, 15006), 503},
			{"agent HBONE port", podAddr(server, 15008), 503},
			{"agent admin port", podAddr(server, 15000), 503},
			{"agent metrics port", podAddr(server, 15020), 503},
			{"agent readiness port", podAddr(server, 15021), 503},
			{"malformed", "server.mesh:8000", 400},
		} {
			p.Connect(id, tc.authority)
			st, err := p.Status(id, 10*time.Second)
			id += 2
			if err != nil || st != tc.want {
				t.Errorf("%s (%s): status %d, %v; want %d", tc.name, tc.authority, st, err, tc.want)
				continue
			}
			refused++
		}
		p.Connect(id, podAddr(server, 8000))
		if st, err := p.Status(id, 10*time.Second); st != 200 {
			t.Errorf("good CONNECT after the abuse: %d %v", st, err)
		}
		after := tb.scrapeNode(t, "node2")
		grew := after.Sum("ferry_tunnel_rejected_total") - before.Sum("ferry_tunnel_rejected_total")
		t.Logf("%d refusals; ferry_tunnel_rejected_total +%v (%v upstream unavailable)", refused, grew,
			after.Sum("ferry_tunnel_rejected_total", "reason", "upstream unavailable")-before.Sum("ferry_tunnel_rejected_total", "reason", "upstream unavailable"))
		if grew < float64(refused) {
			t.Errorf("node2 ferry_tunnel_rejected_total grew by %v for %d refusals", grew, refused)
		}
	})

	t.Run("admin unreachable from pods", func(t *testing.T) {
		_, node1IP, _ := tb.nodeNetns("node1")
		for _, from := range []testbed.Pod{client, legacy} {
			for _, target := range []string{node1IP + ":15000", "127.0.0.1:15000", podAddr(from, 15000), podAddr(server, 15000)} {
				st, body, err := podGet(t, from, "http://"+target+"/config_dump")
				if err == nil {
					t.Errorf("%s/%s reached %s/config_dump: %d %.80q", from.Namespace, from.Name, target, st, body)
				} else {
					t.Logf("%s/%s → %s: %v", from.Namespace, from.Name, target, err)
				}
			}
		}
	})

	t.Run("HTTP/2 abuse spares other pods", func(t *testing.T) {
		// A pod holding a stolen mesh/client certificate attacks node2's
		// agent through the real capture path: streams held beyond the
		// advertised limit and a rapid reset, while mesh/client's own
		// requests must keep succeeding and node2's agent stays in budget.
		cert := testbedLeaf(t, tb, meshID("client"))
		base := usageOf(tb.scrapeNode(t, "node2"))
		var peers []*h2peer.Peer
		defer func() {
			for _, p := range peers {
				p.Close()
			}
		}()
		held, refused := 0, 0
		for range 3 {
			p, err := hboneFrom(t, attacker, server, cert)
			if err != nil {
				t.Fatal(err)
			}
			peers = append(peers, p)
			for i := range 150 {
				p.Connect(uint32(2*i+1), podAddr(server, 8000))
			}
			for n := 0; n < 150; {
				ev := p.Next(time.Now().Add(20*time.Second), false)
				switch {
				case ev.Err != nil && ev.Stream == 0:
					t.Fatalf("attacker connection: %v", ev.Err)
				case ev.Err != nil || (ev.Status != 0 && ev.Status != 200):
					refused++
					n++
				case ev.Status == 200:
					held++
					n++
				}
			}
		}
		for range 3 {
			p, err := hboneFrom(t, attacker, server, cert)
			if err != nil {
				t.Fatal(err)
			}
			peers = append(peers, p)
			block := p.Encode(h2peer.ConnectFields(podAddr(server, 8000))...)
			p.WriteFrames(func(fr *http2.Framer) error {
				for i := range 1000 {
					id := uint32(2*i + 1)
					if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}); err != nil {
						return err
					}
					if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
						return err
					}
				}
				return nil
			})
		}
		during := usageOf(tb.scrapeNode(t, "node2"))
		for i := range 10 {
			if st, body, err := podGet(t, client, "http://"+podAddr(server, 8000)+"/ip"); err != nil || st != 200 || strings.TrimSpace(body) != client.IP {
				t.Fatalf("mesh/client request %d during the attack: %d %q %v", i, st, body, err)
			}
		}
		t.Logf("node2 agent: baseline %v; holding %d attacker streams (%d refused) plus 3000 reset: %v", base, held, refused, during)
		if held > 3*100 {
			t.Errorf("node2 accepted %d streams on 3 connections", held)
		}
		if g := during.goroutines - base.goroutines; g > budgetGoroutines {
			t.Errorf("node2 agent: %+.0f goroutines, budget %d", g, budgetGoroutines)
		}
		if h := during.heapInuse - base.heapInuse; h > budgetHeap {
			t.Errorf("node2 agent: %+.1f MiB heap, budget %d MiB", h/(1<<20), budgetHeap>>20)
		}
		for _, p := range peers {
			p.Close()
		}
		peers = nil
		var after usage
		for range 100 {
			if after = usageOf(tb.scrapeNode(t, "node2")); after.goroutines <= base.goroutines+settleG && after.fds <= base.fds+settleF {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Errorf("node2 agent after the attack: %v, baseline %v", after, base)
	})

	t.Run("outbound source IP spoofing", func(t *testing.T) {
		// mesh/mallory, enrolled on mesh/client's node, sends with
		// mesh/client's address to borrow its identity. The agent answers
		// the real mesh/client, so the connection never completes, and
		// node2 sees no new connection from mesh/client's principal.
		mallory := tb.pod(t, "mesh/mallory")
		if _, err := testbed.Run(t.Context(), mallory.Netns, "ip", "addr", "add", client.IP+"/32", "dev", "eth0"); err != nil {
			t.Fatal(err)
		}
		defer testbed.Run(context.Background(), mallory.Netns, "ip", "addr", "del", client.IP+"/32", "dev", "eth0")
		fromClient := func() float64 {
			return tb.scrapeNode(t, "node2").Sum("istio_tcp_connections_opened_total", "reporter", "destination",
				"source_principal", "spiffe://cluster.local/ns/mesh/sa/client")
		}
		before := fromClient()
		for range 3 {
			c, err := dialFromAddr(t.Context(), mallory.Netns, client.IP, podAddr(server, 8000), 3*time.Second)
			if err == nil {
				c.SetDeadline(time.Now().Add(3 * time.Second))
				fmt.Fprintf(c, "GET /ip HTTP/1.0\r\n\r\n")
				n, rerr := c.Read(make([]byte, 64))
				c.Close()
				if n > 0 {
					t.Fatalf("mesh/mallory, spoofing mesh/client's address, got an answer")
				}
				err = fmt.Errorf("connected, then %w", rerr)
			}
			t.Logf("spoofed connection failed: %v", err)
		}
		if after := fromClient(); after != before {
			t.Fatalf("node2 counted %v new connections from mesh/client's principal during the spoofing", after-before)
		}
		// Without the spoofed address mallory is itself.
		testbed.Run(t.Context(), mallory.Netns, "ip", "addr", "del", client.IP+"/32", "dev", "eth0")
		if st, body, err := podGet(t, mallory, "http://"+podAddr(server, 8000)+"/ip"); err != nil || st != 200 || strings.TrimSpace(body) != mallory.IP {
			t.Fatalf("mesh/mallory as itself: %d %q %v", st, body, err)
		}
	})

	t.Run("plaintext has no identity", func(t *testing.T) {
		// Only mesh/client's identity may reach mesh/server. plain/legacy
		// speaks plaintext from outside the mesh and carries no identity,
		// whatever its address; mesh/client still gets through.
		policy := filepath.Join(tb.RunDir, "manifests", "zz-only-client.yaml")
		doc := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: mesh}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/mesh/sa/client"]}}]}]
`
		if err := os.WriteFile(policy, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		defer func() {
			os.Remove(policy)
			for range 40 { // wait for the agents to drop the policy
				if st, _, err := podGet(t, legacy, "http://"+podAddr(server, 8000)+"/ip"); err == nil && st == 200 {
					return
				}
				time.Sleep(250 * time.Millisecond)
			}
			t.Error("the policy was never dropped")
		}()
		before := tb.scrapeNode(t, "node2")
		denied := false
		for range 40 {
			if _, _, err := podGet(t, legacy, "http://"+podAddr(server, 8000)+"/ip"); err != nil {
				denied = true
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if !denied {
			t.Fatal("plain/legacy still reaches mesh/server under a principal-only policy")
		}
		if st, body, err := podGet(t, client, "http://"+podAddr(server, 8000)+"/ip"); err != nil || st != 200 || strings.TrimSpace(body) != client.IP {
			t.Fatalf("mesh/client under the policy: %d %q %v", st, body, err)
		}
		after := tb.scrapeNode(t, "node2")
		d := after.Sum("ferry_authz_decisions_total", "direction", "inbound-plaintext", "result", "deny") -
			before.Sum("ferry_authz_decisions_total", "direction", "inbound-plaintext", "result", "deny")
		if d < 1 {
			t.Errorf("node2 counted %v plaintext denials", d)
		}
	})

	t.Run("bounded churn", func(t *testing.T) {
		// 15 s of new connections mesh/client → mesh/server (cross node) and
		// plain/legacy → mesh/server (plaintext capture), 4 at a time, about
		// 200 per second (the machine is shared): every
		// request answers, and afterwards both agents are back at their
		// baseline and the kernel objects are what they were.
		base1, base2 := usageOf(tb.scrapeNode(t, "node1")), usageOf(tb.scrapeNode(t, "node2"))
		objs1, objs2 := tb.kernelObjects(t, "node1"), tb.kernelObjects(t, "node2")
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		var ok, failed atomic.Int64
		var wg sync.WaitGroup
		for i := range 4 {
			from := client
			if i%2 == 1 {
				from = legacy
			}
			wg.Go(func() {
				for ctx.Err() == nil {
					st, body, err := httpGetFrom(ctx, from.Netns, "http://"+podAddr(server, 8000)+"/ip", 5*time.Second)
					switch {
					case ctx.Err() != nil:
					case err != nil || st != 200 || strings.TrimSpace(body) != from.IP:
						failed.Add(1)
						t.Errorf("%s/%s → mesh/server: %d %q %v", from.Namespace, from.Name, st, body, err)
					default:
						ok.Add(1)
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
		wg.Wait()
		t.Logf("churn: %d requests on fresh connections in 15 s (%d failed)", ok.Load(), failed.Load())
		for _, n := range []struct {
			node string
			base usage
			objs []string
		}{{"node1", base1, objs1}, {"node2", base2, objs2}} {
			var u usage
			for range 100 {
				if u = usageOf(tb.scrapeNode(t, n.node)); u.goroutines <= n.base.goroutines+settleG && u.fds <= n.base.fds+settleF {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if u.goroutines > n.base.goroutines+settleG || u.fds > n.base.fds+settleF {
				t.Errorf("%s agent after the churn: %v, baseline %v", n.node, u, n.base)
			}
			if got := tb.kernelObjects(t, n.node); !slices.Equal(got, n.objs) {
				t.Errorf("%s kernel objects changed by the churn:\nbefore %q\nafter  %q", n.node, n.objs, got)
			}
		}
	})

	t.Run("agent SIGKILL under traffic", func(t *testing.T) {
		mapEntries := func() float64 { return tb.scrapeNode(t, "node1").Sum("ferry_bpf_enrolled_pods_map_entries") }
		entries := mapEntries()
		objects := tb.kernelObjects(t, "node1")
		if len(objects) == 0 {
			t.Fatal("node1 has no Ferry kernel objects to compare")
		}
		t.Logf("node1 kernel objects before the kill: %d (%s)", len(objects), strings.Join(objects, "; "))
		c, err := dialFrom(t.Context(), client.Netns, podAddr(server, 8000), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /bytes?n=%d HTTP/1.0\r\n\r\n", 1<<30)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		if _, err := io.CopyN(io.Discard, br, 1<<20); err != nil {
			t.Fatalf("download before the kill: %v", err)
		}
		if err := tb.StopAgent("node1", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// Fail closed: the capture rules and BPF objects stay while the agent is dead.
		if dead := tb.kernelObjects(t, "node1"); !slices.Equal(dead, objects) {
			t.Errorf("kernel objects changed when the agent died:\nbefore %q\nwhile dead %q", objects, dead)
		}
		// The stream stops: whatever was buffered drains, then an error.
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		n, err := io.Copy(io.Discard, br)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Logf("download stalled after the kill (%d more bytes), as a dead proxy leaves it", n)
		} else {
			t.Logf("download ended after the kill: %d more bytes, %v", n, err)
		}
		if n >= 1<<30-1<<20 {
			t.Fatal("the download completed without the agent: traffic bypassed it")
		}
		// Fail closed: enrolled pods' new connections go nowhere.
		if st, _, err := podGet(t, client, "http://"+podAddr(server, 8000)+"/ip"); err == nil {
			t.Fatalf("mesh/client reached mesh/server with node1's agent dead: %d", st)
		}
		if st, _, err := podGet(t, legacy, "http://"+podAddr(client, 8000)+"/ip"); err == nil {
			t.Fatalf("plain/legacy reached mesh/client with node1's agent dead: %d", st)
		}
		if err := tb.StartAgent("node1"); err != nil {
			t.Fatal(err)
		}
		if err := tb.WaitReady(t.Context(), "node1", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		var st int
		var body string
		for range 40 {
			if st, body, err = podGet(t, client, "http://"+podAddr(server, 8000)+"/ip"); err == nil && st == 200 {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if st != 200 || strings.TrimSpace(body) != client.IP {
			t.Fatalf("after restart: %d %q %v", st, body, err)
		}
		if got := tb.kernelObjects(t, "node1"); !slices.Equal(got, objects) {
			t.Errorf("kernel objects changed across SIGKILL and restart:\nbefore %q\nafter  %q", objects, got)
		}
		if got := mapEntries(); got != entries || entries == 0 {
			t.Errorf("enrolled-pods map entries: %v before SIGKILL, %v after restart", entries, got)
		}
	})
}
