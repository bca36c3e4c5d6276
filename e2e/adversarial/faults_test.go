package adversarial

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/tunnel"
)

// hboneClient is the production HBONE client, presenting foo/remote's
// certificate from the agent's CA and dialing from remotePod.
func hboneClient(t testing.TB, a *agent) *tunnel.Client {
	t.Helper()
	store := a.ca.Store(t, fooID("remote"))
	c, err := tunnel.NewClient(tunnel.ClientConfig{
		TLS: func(src, want certs.Identity) (*tls.Config, error) { return store.ClientConfig(src, want), nil },
		DialTCP: func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			return d.DialContext(ctx, "tcp4", dst.String())
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialStream(ctx context.Context, c *tunnel.Client, a *agent, dst netip.AddrPort) (*tunnel.Stream, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return c.Dial(ctx, tunnel.DialRequest{
		Src: fooID("remote"), Dst: fooID("server"), SrcAddr: netip.AddrPortFrom(remotePod, 40000),
		HBONEAddr: a.hbone, Authority: dst,
	})
}

// echoOnce writes msg and reads it back.
func echoOnce(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != msg {
		return errors.New("echo mismatch")
	}
	return nil
}

// TestAgentKilledMidStream kills the agent with SIGKILL under an open
// tunnel: the tunnel breaks at once, new connections are refused while it
// is down (fail closed), and a restarted agent serves again.
func TestAgentKilledMidStream(t *testing.T) {
	t.Parallel()
	a := startAgent(t, baseManifests)
	echo := startEcho(t, serverPod)
	cl := hboneClient(t, a)
	s, err := dialStream(t.Context(), cl, a, echo.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := echoOnce(s, "before"); err != nil {
		t.Fatal(err)
	}
	a.kill()
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Read(make([]byte, 1)); err == nil {
		t.Fatal("the tunnel still read data after the agent died")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the tunnel did not notice the agent died within 10s")
	}
	if _, err := dialStream(t.Context(), cl, a, echo.addr); err == nil {
		t.Fatal("a new tunnel opened while the agent was dead")
	}
	a.start()
	var s2 *tunnel.Stream
	for range 50 {
		if s2, err = dialStream(t.Context(), cl, a, echo.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	defer s2.Close()
	if err := echoOnce(s2, "after"); err != nil {
		t.Fatal(err)
	}
}

// TestInventorySourceGone removes the manifests directory, then brings it
// back with a corrupt file: the agent keeps its last good inventory and
// policy throughout (client allowed, remote denied) and stays ready.
func TestInventorySourceGone(t *testing.T) {
	t.Parallel()
	a := startAgent(t, baseManifests)
	a.writeManifest("policy.yaml", onlyClientPolicy)
	echo := startEcho(t, serverPod)
	a.waitPolicy(t, echo)
	mdir := filepath.Join(a.dir, "m")
	keep := filepath.Join(a.dir, "m.saved")

	check := func(stage string) {
		t.Helper()
		time.Sleep(2500 * time.Millisecond) // more than two reload intervals
		client := dialAs(t, a, "client", echo)
		remote := dialAs(t, a, "remote", echo)
		if client != 200 || remote != 401 {
			t.Fatalf("%s: foo/client got %d, foo/remote got %d; want 200 and 401 (the last good policy)", stage, client, remote)
		}
		resp, err := http.Get("http://" + a.ready.String() + "/healthz/ready")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: readiness %d", stage, resp.StatusCode)
		}
	}
	if err := os.Rename(mdir, keep); err != nil {
		t.Fatal(err)
	}
	check("manifests directory gone")

	if err := os.Mkdir(mdir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(keep, "policy.yaml"))
	a.writeManifest("policy.yaml", string(b))
	a.writeManifest("cluster.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: [broken\n")
	check("corrupt cluster.yaml")
	if n := a.mustScrape().Sum("ferry_inventory_rejected_objects"); n < 1 {
		t.Errorf("ferry_inventory_rejected_objects = %v with a corrupt manifest, want ≥1", n)
	}
}

// dialAs opens a CONNECT to echo as foo/<sa> and returns the status.
func dialAs(t testing.TB, a *agent, sa string, echo *echoServer) int {
	t.Helper()
	src := remotePod
	if sa == "client" {
		src = clientPod
	}
	p, err := dialH2(t.Context(), src, a.hbone, a.peerTLS(a.leaf(fooID(sa))))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Connect(1, echo.addr.String())
	st, err := p.Status(1, 10*time.Second)
	if err != nil {
		t.Fatalf("CONNECT as %s: %v", sa, err)
	}
	return st
}

// TestDestinationGoneMidStream ends open tunnels from the destination side:
// the application closes its sockets, then the pod leaves the inventory.
// Each tunnel ends cleanly (EOF or a reset, never a hang), the agent lists
// no connection afterwards, and the closes are counted.
func TestDestinationGoneMidStream(t *testing.T) {
	t.Parallel()
	a := startAgent(t, baseManifests)
	echo := startEcho(t, serverPod)
	cl := hboneClient(t, a)
	closedTotal := func() float64 {
		return a.mustScrape().Sum("istio_tcp_connections_closed_total", "reporter", "destination")
	}
	open := func(n int) []*tunnel.Stream {
		var ss []*tunnel.Stream
		for range n {
			s, err := dialStream(t.Context(), cl, a, echo.addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			if err := echoOnce(s, "hi"); err != nil {
				t.Fatal(err)
			}
			ss = append(ss, s)
		}
		return ss
	}
	ended := func(stage string, ss []*tunnel.Stream) {
		t.Helper()
		for _, s := range ss {
			s.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := s.Read(make([]byte, 1))
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("%s: a tunnel stayed open 10s after its destination went away", stage)
			}
			if err == nil {
				t.Fatalf("%s: a tunnel read data after its destination went away", stage)
			}
			s.Close()
		}
		for range 100 {
			if len(connections(t, a)) == 0 {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("%s: the agent still lists %d connections", stage, len(connections(t, a)))
	}

	before := closedTotal()
	ss := open(5)
	if n := echo.closeAll(); n != 5 {
		t.Fatalf("closed %d upstream sockets, want 5", n)
	}
	ended("application closed", ss)
	if d := closedTotal() - before; d < 5 {
		t.Errorf("application closed: closed_total grew by %v, want 5", d)
	}

	before = closedTotal()
	ss = open(5)
	a.writeManifest("cluster.yaml", strings.Replace(baseManifests,
		"metadata: {name: server, namespace: foo, labels: {app: server}}\nspec: {nodeName: a, serviceAccountName: server}\nstatus: {podIP: 127.0.10.2}\n",
		"metadata: {name: server, namespace: foo, labels: {app: server}}\nspec: {nodeName: a, serviceAccountName: server}\nstatus: {podIP: 127.0.10.99}\n", 1))
	ended("pod deleted", ss)
	if d := closedTotal() - before; d < 5 {
		t.Errorf("pod deleted: closed_total grew by %v, want 5", d)
	}
}

type connDump struct {
	Src   string `json:"src"`
	Dst   string `json:"dst"`
	SrcID string `json:"srcIdentity"`
}

// connections reads the agent's /connections.
func connections(t testing.TB, a *agent) []connDump {
	t.Helper()
	resp, err := http.Get("http://" + a.admin.String() + "/connections")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []connDump
	if err := jsonDecode(resp.Body, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
