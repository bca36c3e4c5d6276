package node

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testutil"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/tunnel"
)

// Addresses of the loopback "cluster" these tests run: node a holds the
// agent under test, node b is played by a tunnel.Server.
var (
	serverPod = netip.MustParseAddr("127.0.10.2") // foo/server on node a
	clientPod = netip.MustParseAddr("127.0.10.3") // foo/client on node a
	remotePod = netip.MustParseAddr("127.0.20.2") // foo/remote on node b
)

const baseManifests = `apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio.io/dataplane-mode: ambient}}
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
`

func id(sa string) certs.Identity {
	return certs.Identity{TrustDomain: "cluster.local", Namespace: "foo", ServiceAccount: sa}
}

// freePort returns a TCP port free on ip right now.
func freePort(t testing.TB, ip netip.Addr) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// echo serves "<client address>\n" then echoes lines back, on addr.
func echo(t testing.TB, addr netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", c.RemoteAddr())
				io.Copy(c, c)
			}()
		}
	}()
}

type harness struct {
	t         *testing.T
	dir       string
	cfg       Config
	agent     *Agent
	peerStore *certs.Store
	cancel    context.CancelFunc
	done      chan error
}

func logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func leveledLogger(t testing.TB) (*slog.Logger, *slog.LevelVar) {
	lv := new(slog.LevelVar)
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: lv})), lv
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// tryStartAgent starts an agent on ports free a moment ago and returns once
// it has bound them all (its readiness endpoint answers), or the error its
// Run stopped with.
func tryStartAgent(t *testing.T, dir string, log *slog.Logger, level *slog.LevelVar) (*harness, error) {
	hbone := freePort(t, serverPod)
	control := testutil.ControlAddrs(t, 3)
	cfg := Config{
		NodeName: "a", Manifests: filepath.Join(dir, "m"),
		CACert: filepath.Join(dir, "ca", "root-cert.pem"), CAKey: filepath.Join(dir, "ca", "root-key.pem"),
		TrustDomain: "cluster.local", SystemNamespace: "istio-system", Redirect: RedirectNone,
		OutboundAddr:  netip.AddrPortFrom(remotePod, freePort(t, remotePod)).String(),
		InboundAddr:   netip.AddrPortFrom(serverPod, freePort(t, serverPod)).String(),
		HBONEAddr:     netip.AddrPortFrom(serverPod, hbone).String(),
		AdminAddr:     control[0],
		MetricsAddr:   control[1],
		ReadinessAddr: control[2],
		DrainTimeout:  2 * time.Second,
	}
	a, err := New(cfg, Deps{Log: log, Level: level, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, dir: dir, cfg: cfg, agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- a.Run(ctx) }()
	for range 400 {
		select {
		case err := <-h.done:
			cancel()
			if err == nil {
				err = errors.New("agent stopped before it listened")
			}
			return nil, err
		default:
		}
		// Run binds every listener before it serves any.
		if resp, err := http.Get("http://" + cfg.ReadinessAddr + "/healthz/ready"); err == nil {
			resp.Body.Close()
			t.Cleanup(h.stop)
			return h, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(h.stop)
	t.Fatal("agent never listened")
	return nil, nil
}

// writeCAAndManifests writes a new local CA under dir/ca and manifests to
// dir/m/cluster.yaml.
func writeCAAndManifests(t *testing.T, dir, manifests string) {
	t.Helper()
	if err := certs.InitCA(filepath.Join(dir, "ca")); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "m"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "m", "cluster.yaml"), []byte(manifests), 0o644); err != nil {
		t.Fatal(err)
	}
}

// startAgent runs an agent for node a in --redirect none mode on loopback.
func startAgent(t *testing.T, manifests string) *harness {
	t.Helper()
	dir := t.TempDir()
	writeCAAndManifests(t, dir, manifests)
	log, level := leveledLogger(t)
	var h *harness
	// A port found free can be taken by another test process before the
	// agent binds it: start again on fresh ports when that happens.
	for attempt := 1; h == nil; attempt++ {
		var err error
		h, err = tryStartAgent(t, dir, log, level)
		if err != nil && (attempt == 5 || !strings.Contains(err.Error(), "address already in use")) {
			t.Fatal(err)
		}
		if err != nil {
			t.Logf("attempt %d: %v; retrying on other ports", attempt, err)
		}
	}
	cfg := h.cfg

	// The peer node's agent: a store from the same CA.
	ca, err := certs.LoadLocalCA(cfg.CACert, cfg.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	h.peerStore, err = certs.NewStore(certs.StoreConfig{TrustDomain: "cluster.local", Roots: roots}, ca, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	h.peerStore.SetIdentities([]certs.Identity{id("remote")})
	ctx, stopPeer := context.WithCancel(context.Background())
	peerDone := make(chan error, 1)
	go func() { peerDone <- h.peerStore.Run(ctx) }()
	t.Cleanup(func() { stopPeer(); <-peerDone })
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := h.peerStore.WaitReady(wctx, id("remote")); err != nil {
		t.Fatal(err)
	}
	h.waitReady()
	return h
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("agent Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		h.t.Error("agent did not stop")
	}
}

func (h *harness) waitReady() {
	h.t.Helper()
	var last string
	for range 400 {
		resp, err := http.Get("http://" + h.cfg.ReadinessAddr + "/healthz/ready")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = string(b)
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.t.Fatalf("agent never ready: %s", last)
}

func (h *harness) writeManifest(name, doc string) {
	h.t.Helper()
	p := filepath.Join(h.cfg.Manifests, name)
	if err := os.WriteFile(p+".tmp", []byte(doc), 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		h.t.Fatal(err)
	}
}

// hboneDial opens an HBONE stream to the agent as foo/remote on node b would.
func (h *harness) hboneDial(ctx context.Context, authority netip.AddrPort) (net.Conn, error) {
	client, err := tunnel.NewClient(tunnel.ClientConfig{
		TLS: func(src, want certs.Identity) (*tls.Config, error) { return h.peerStore.ClientConfig(src, want), nil },
	}, logger(h.t))
	if err != nil {
		return nil, err
	}
	h.t.Cleanup(func() { client.Close() })
	hb, _ := netip.ParseAddrPort(h.cfg.HBONEAddr)
	return client.Dial(ctx, tunnel.DialRequest{
		Src: id("remote"), Dst: id("server"), SrcAddr: netip.AddrPortFrom(remotePod, 40000),
		HBONEAddr: hb, Authority: authority,
	})
}

// echoConn starts an echo server on the server pod and opens an HBONE
// connection to it through the agent, its greeting read; the connection
// closes when the test ends. It returns the connection and the server's
// address.
func (h *harness) echoConn(t *testing.T) (net.Conn, netip.AddrPort) {
	t.Helper()
	app := netip.AddrPortFrom(serverPod, freePort(t, serverPod))
	echo(t, app)
	c, err := h.hboneDial(t.Context(), app)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	readLine(t, c) // the echo server's greeting
	return c, app
}

func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return strings.TrimSpace(line)
}

func TestAgentInboundHBONE(t *testing.T) {
	h := startAgent(t, baseManifests)
	c, app := h.echoConn(t)
	fmt.Fprintln(c, "hello through HBONE")
	if got := readLine(t, c); got != "hello through HBONE" {
		t.Fatalf("echo = %q", got)
	}
	conns := h.agent.connections()
	if len(conns) != 1 || conns[0].SourceID != id("remote").String() || conns[0].Protocol != "HBONE" {
		t.Fatalf("connections = %+v", conns)
	}

	// A policy allowing only foo/client refuses foo/remote: 401, and the open
	// connection is closed by re-authorization.
	h.writeManifest("policy.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: foo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/foo/sa/client"]}}]}]
`)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); err == nil {
		// ReadAll returns nil at EOF: the connection was closed, as wanted.
	} else if !isClosed(err) {
		t.Fatalf("open connection not closed by the new policy: %v", err)
	}
	// The one denial so far: the open connection's, by re-authorization.
	if body, want := scrape(t, h.cfg.MetricsAddr), `ferry_authz_decisions_total{direction="inbound",reason="",result="deny"} 1`; !strings.Contains(body, want) {
		t.Fatalf("metrics lack %s:\n%s", want, grep(body, "ferry_authz_decisions_total"))
	}
	_, err := h.hboneDial(t.Context(), app)
	var se *tunnel.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Fatalf("dial after deny policy: err = %v, want 401", err)
	}
}

func isClosed(err error) bool {
	var re *tunnel.StreamResetError
	return errors.As(err, &re) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

func TestAgentInboundRefusals(t *testing.T) {
	h := startAgent(t, baseManifests)
	for _, tc := range []struct {
		name      string
		authority netip.AddrPort
		want      int
	}{
		{"pod on another node", netip.AddrPortFrom(remotePod, 80), http.StatusBadRequest}, // authority IP ≠ local IP
		{"nothing listening", netip.AddrPortFrom(serverPod, freePort(t, serverPod)), http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.hboneDial(t.Context(), tc.authority)
			var se *tunnel.StatusError
			if !errors.As(err, &se) || se.Code != tc.want {
				t.Fatalf("err = %v, want status %d", err, tc.want)
			}
		})
	}
	body := scrape(t, h.cfg.MetricsAddr)
	for _, want := range []string{`ferry_tunnel_rejected_total{reason="bad request"} 1`, `ferry_tunnel_rejected_total{reason="upstream unavailable"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, grep(body, "ferry_tunnel_rejected_total"))
		}
	}
}

func TestAgentOutboundHBONE(t *testing.T) {
	h := startAgent(t, baseManifests)
	// Node b's agent: an HBONE server with foo/remote's identity, at the
	// remote pod's address and the mesh's HBONE port, delivering to an echo
	// server.
	app := netip.AddrPortFrom(netip.MustParseAddr("127.0.20.3"), freePort(t, netip.MustParseAddr("127.0.20.3")))
	echo(t, app)
	hb, _ := netip.ParseAddrPort(h.cfg.HBONEAddr)
	peer, err := tunnel.NewServer(tunnel.ServerConfig{
		TLS:          h.peerStore.ServerConfig(func(netip.Addr) (certs.Identity, error) { return id("remote"), nil }),
		Destinations: tunnel.DestinationsFunc(func(netip.Addr) bool { return true }),
		Authorizer: tunnel.AuthorizerFunc(func(_ context.Context, r tunnel.Request) error {
			if r.Peer != id("client") {
				return fmt.Errorf("peer %s", r.Peer)
			}
			return nil
		}),
		Dial: func(ctx context.Context, _, _ netip.AddrPort) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", app.String())
		},
	}, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(remotePod, hb.Port()).String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- peer.Serve(ctx, ln) }()
	defer func() { cancel(); <-served }()

	// foo/client dials foo/remote: the agent's outbound listener is bound at
	// that address, standing in for capture.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: clientPod.AsSlice()}}
	c, err := d.DialContext(t.Context(), "tcp", h.cfg.OutboundAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	readLine(t, c)
	fmt.Fprintln(c, "hello outbound")
	if got := readLine(t, c); got != "hello outbound" {
		t.Fatalf("echo = %q", got)
	}
	c.Close()

	// From an address that is no enrolled pod of this node: refused (fail closed).
	d = net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 99, 9)}}
	if c2, err := d.DialContext(t.Context(), "tcp", h.cfg.OutboundAddr); err == nil {
		// The agent may accept and then reset, or reset during the dial.
		defer c2.Close()
		c2.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c2.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("unknown source not refused: n=%d err=%v", n, err)
		}
	}
	// Refused by the routing decision, which counts it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		body := scrape(t, h.cfg.MetricsAddr)
		if strings.Contains(body, `ferry_tunnel_rejected_total{reason="policy"} 1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the refusal was not counted:\n%s", grep(body, "ferry_tunnel_rejected_total"))
		}
	}

	// The metrics say it: one outbound mTLS connection reported by the source.
	body := scrape(t, h.cfg.MetricsAddr)
	want := `istio_tcp_connections_opened_total{connection_security_policy="mutual_tls",destination_app="remote"`
	if !strings.Contains(body, want) || !strings.Contains(body, `reporter="source"`) ||
		!strings.Contains(body, `source_principal="spiffe://cluster.local/ns/foo/sa/client"`) {
		t.Fatalf("metrics lack the outbound connection:\n%s", grep(body, "istio_tcp_connections_opened_total"))
	}
}

func scrape(t testing.TB, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grep(s, substr string) string {
	var out []string
	for l := range strings.Lines(s) {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}
