package adversarial

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/internal/h2peer"
	"github.com/ferrymesh/ferry/tunnel"
)

// TestHandshakeRefusesHostileClientCerts presents certificates that must not
// yield an identity to the agent's HBONE port. Each connection sends the
// HTTP/2 preface and a CONNECT in the flight right after the client's
// Finished; the server must fail the handshake (an alert, no SETTINGS) and
// the upstream must never see a connection, so no CONNECT was acted on.
func TestHandshakeRefusesHostileClientCerts(t *testing.T) {
	t.Parallel()
	a := startAgent(t, baseManifests)
	echo := startEcho(t, serverPod)
	remote := fooID("remote")
	other := certstest.NewCA(t) // a root the mesh does not trust
	withNUL := &url.URL{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/foo/sa/remote\x00.evil"}

	// The control: a valid certificate gets through the same procedure.
	if err := tryConnect(t, a, a.peerTLS(a.leaf(remote)), echo); err != nil {
		t.Fatalf("control (valid certificate): %v", err)
	}
	if n := echo.waitAccepted(1); n != 1 {
		t.Fatalf("control: upstream accepted %d connections, want 1", n)
	}
	echo.accepted.Store(0)
	rejectedBefore := a.mustScrape().Sum("ferry_tunnel_rejected_total", "reason", "handshake")
	refused := 0

	for _, tc := range []struct {
		name string
		cert func() *tls.Certificate // nil certificate: none sent
	}{
		{"other trust domain", func() *tls.Certificate {
			c := a.leaf(certs.Identity{}, certstest.URIs("spiffe://clusterset.local/ns/foo/sa/remote"))
			return &c
		}},
		{"untrusted root", func() *tls.Certificate { c := other.Leaf(t, remote); return &c }},
		{"expired", func() *tls.Certificate { c := a.leaf(remote, certstest.Expired()); return &c }},
		{"not yet valid", func() *tls.Certificate { c := a.leaf(remote, certstest.NotYetValid()); return &c }},
		{"no SAN", func() *tls.Certificate { c := a.leaf(remote, certstest.NoSAN()); return &c }},
		{"DNS SAN only", func() *tls.Certificate {
			c := a.leaf(remote, certstest.NoSAN(), certstest.DNSNames("remote.foo.svc.cluster.local"))
			return &c
		}},
		{"non-SPIFFE URI SAN", func() *tls.Certificate {
			c := a.leaf(remote, certstest.URIs("https://cluster.local/ns/foo/sa/remote"))
			return &c
		}},
		{"two SPIFFE SANs", func() *tls.Certificate {
			c := a.leaf(remote, certstest.URIs(remote.String(), fooID("client").String()))
			return &c
		}},
		{"NUL byte in SAN", func() *tls.Certificate { c := a.leaf(remote, certstest.NoSAN(), certstest.URL(withNUL)); return &c }},
		{"SPIFFE ID without ns/sa", func() *tls.Certificate {
			c := a.leaf(remote, certstest.URIs("spiffe://cluster.local/workload/remote"))
			return &c
		}},
		{"SPIFFE ID with a query", func() *tls.Certificate {
			c := a.leaf(remote, certstest.URIs("spiffe://cluster.local/ns/foo/sa/remote?admin=1"))
			return &c
		}},
		{"SPIFFE ID with dot segments", func() *tls.Certificate {
			c := a.leaf(remote, certstest.URIs("spiffe://cluster.local/ns/foo/sa/../../ns/kube-system/sa/admin"))
			return &c
		}},
		{"non-CA intermediate", func() *tls.Certificate { c := a.leaf(remote, certstest.NonCAIntermediate()); return &c }},
		{"server-auth only", func() *tls.Certificate {
			c := a.leaf(remote, certstest.ExtKeyUsage(x509.ExtKeyUsageServerAuth))
			return &c
		}},
		{"no client certificate", func() *tls.Certificate { return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := tc.cert()
			cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true}
			if cert != nil {
				cfg.Certificates = []tls.Certificate{*cert}
			}
			err := tryConnect(t, a, cfg, echo)
			if err == nil {
				t.Fatal("the agent answered a CONNECT: the certificate was accepted")
			}
			var settings errServerSpoke
			if errors.As(err, &settings) {
				t.Fatalf("the handshake completed (the server sent HTTP/2 frames): %v", err)
			}
			t.Logf("refused: %v", err)
			refused++
			if n := echo.accepted.Load(); n != 0 {
				t.Fatalf("upstream accepted %d connections", n)
			}
		})
	}
	if n := echo.waitAccepted(1); n != 0 {
		t.Fatalf("upstream accepted %d connections from refused clients", n)
	}
	// Each refusal is counted (reason "handshake").
	var counted float64
	for range 50 {
		if counted = a.mustScrape().Sum("ferry_tunnel_rejected_total", "reason", "handshake") - rejectedBefore; counted >= float64(refused) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if counted < float64(refused) {
		t.Errorf("ferry_tunnel_rejected_total{reason=\"handshake\"} grew by %v for %d refused handshakes", counted, refused)
	}
	if !a.alive() {
		t.Fatal("agent died")
	}
}

// errServerSpoke reports that the server sent HTTP/2 frames, which it only
// does after accepting the client's certificate.
type errServerSpoke struct{ err error }

func (e errServerSpoke) Error() string { return "server spoke HTTP/2 then: " + fmt.Sprint(e.err) }

// tryConnect runs TLS with cfg, sends the preface and a CONNECT to echo at
// once, and returns nil only for a 200 answer.
func tryConnect(t testing.TB, a *agent, cfg *tls.Config, echo *echoServer) error {
	ctx := ctxTimeout(t, 20*time.Second)
	tc, err := dialTLS(ctx, remotePod, a.hbone, cfg)
	if err != nil {
		return fmt.Errorf("client handshake: %w", err)
	}
	defer tc.Close()
	p, err := h2peer.Client(tc, bigWindow)
	if err == nil {
		err = p.Connect(1, echo.addr.String())
	}
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := p.ReadFrame()
	if err != nil {
		return fmt.Errorf("first read: %w", err)
	}
	if _, ok := f.(*http2.SettingsFrame); !ok {
		return errServerSpoke{fmt.Errorf("first frame %T", f)}
	}
	st, err := p.Status(1, 10*time.Second)
	if err != nil || st != 200 {
		return errServerSpoke{fmt.Errorf("status %d, %v", st, err)}
	}
	return nil
}

// TestClientRefusesImpostorServer: the agent's outbound path dials a peer
// node whose HBONE server presents a valid mesh certificate for the wrong
// identity. The agent must abort before sending a CONNECT; the client pod's
// connection closes without data. A control run with the right identity
// carries data, so the check is not vacuous.
func TestClientRefusesImpostorServer(t *testing.T) {
	t.Parallel()
	a := startAgent(t, baseManifests)
	peerAddr := netip.AddrPortFrom(remotePod, a.hbone.Port()) // where the agent dials node b's HBONE

	// serve accepts HBONE connections at peerAddr with srv until the
	// returned stop is called.
	serve := func(srv *tunnel.Server) (func(), *atomic.Int64) {
		l, err := net.Listen("tcp4", peerAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		ln := &countingListener{Listener: l}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx, ln) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("peer Serve: %v", err)
			}
		}, &ln.n
	}
	app := startEcho(t, netip.MustParseAddr("127.0.20.3"))
	peerServer := func(present certs.Identity, connects *int) *tunnel.Server {
		store := a.ca.Store(t, present)
		srv, err := tunnel.NewServer(tunnel.ServerConfig{
			TLS:          store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return present, nil }),
			Destinations: tunnel.DestinationsFunc(func(netip.Addr) bool { return true }),
			Authorizer: tunnel.AuthorizerFunc(func(context.Context, tunnel.Request) error {
				*connects++
				return nil
			}),
			Dial: func(ctx context.Context, _, _ netip.AddrPort) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp4", app.addr.String())
			},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return srv
	}
	dialThrough := func() ([]byte, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: clientPod.AsSlice()}, Timeout: 10 * time.Second}
		c, err := d.DialContext(t.Context(), "tcp4", a.outbound.String())
		if err != nil {
			return nil, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		if _, err := c.Write([]byte("hello")); err != nil {
			return nil, err
		}
		b := make([]byte, 5)
		n, err := io.ReadFull(c, b)
		return b[:n], err
	}

	// The impostor first, so no pooled connection from the control exists.
	var honest, impostor int
	stop, accepts := serve(peerServer(fooID("impostor"), &impostor))
	got, err := dialThrough()
	stop()
	if err == nil || len(got) != 0 {
		t.Fatalf("through an impostor peer: got %q, err %v; want the connection closed without data", got, err)
	}
	if accepts.Load() == 0 {
		t.Fatal("the agent never dialed the impostor: the check is vacuous")
	}
	if impostor != 0 {
		t.Fatalf("the impostor received %d CONNECTs", impostor)
	}

	stop, _ = serve(peerServer(fooID("remote"), &honest))
	defer stop()
	got2, err2 := dialThrough()
	if err2 != nil || string(got2) != "hello" || honest != 1 {
		t.Fatalf("control (right identity): got %q, err %v, CONNECTs %d", got2, err2, honest)
	}
	t.Logf("client connection through the impostor: %v", err)
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestClientRefusesForgedServerCerts: the peer node's HBONE server presents
// certificates that must not pass for foo/remote. The agent must abort the
// handshake before it sends the CONNECT (no HEADERS frame reaches the
// server). The control, with foo/remote's valid certificate, receives the
// CONNECT.
func TestClientRefusesForgedServerCerts(t *testing.T) {
	t.Parallel()
	a := startAgent(t, baseManifests)
	remote := fooID("remote")
	peerAddr := netip.AddrPortFrom(remotePod, a.hbone.Port())
	other := certstest.NewCA(t)
	// serve runs a raw TLS server with cert at peerAddr for one client
	// connection through the agent, and returns how many TCP connections
	// it accepted and how many HEADERS frames arrived.
	serve := func(cert tls.Certificate) (accepts, headers int) {
		ln, err := net.Listen("tcp4", peerAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var mu sync.Mutex
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				accepts++
				mu.Unlock()
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(10 * time.Second))
					tc := tls.Server(c, certstest.PeerConfig(cert))
					if tc.Handshake() != nil {
						return
					}
					if _, err := io.ReadFull(tc, make([]byte, len(http2.ClientPreface))); err != nil {
						return
					}
					fr := http2.NewFramer(tc, tc)
					fr.WriteSettings()
					for {
						f, err := fr.ReadFrame()
						if err != nil {
							return
						}
						if _, ok := f.(*http2.HeadersFrame); ok {
							mu.Lock()
							headers++
							mu.Unlock()
							return // enough: close, so the client gives up at once
						}
					}
				}()
			}
		}()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: clientPod.AsSlice()}, Timeout: 5 * time.Second}
		// The agent may reset the client's connection before connect returns.
		if c, err := d.DialContext(t.Context(), "tcp4", a.outbound.String()); err == nil {
			c.SetDeadline(time.Now().Add(15 * time.Second))
			c.Write([]byte("hello"))
			if n, _ := c.Read(make([]byte, 16)); n > 0 {
				t.Errorf("the client pod got %d bytes back", n)
			}
			c.Close()
		} else if !isClosedErr(err) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		return accepts, headers
	}
	if _, h := serve(a.leaf(remote)); h == 0 {
		t.Fatal("control: the honest server never received the CONNECT")
	}
	for _, tc := range []struct {
		name string
		cert tls.Certificate
	}{
		{"untrusted root", other.Leaf(t, remote)},
		{"expired", a.leaf(remote, certstest.Expired())},
		{"not yet valid", a.leaf(remote, certstest.NotYetValid())},
		{"other trust domain", a.leaf(certs.Identity{}, certstest.URIs("spiffe://clusterset.local/ns/foo/sa/remote"))},
		{"no SAN", a.leaf(remote, certstest.NoSAN())},
		{"DNS SAN only", a.leaf(remote, certstest.NoSAN(), certstest.DNSNames("remote.foo.svc.cluster.local"))},
		{"wrong identity", a.leaf(fooID("impostor"))},
		{"non-CA intermediate", a.leaf(remote, certstest.NonCAIntermediate())},
		{"client-auth only", a.leaf(remote, certstest.ExtKeyUsage(x509.ExtKeyUsageClientAuth))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			accepts, h := serve(tc.cert)
			if h != 0 {
				t.Fatalf("the agent sent a CONNECT to a server presenting %s", tc.name)
			}
			if accepts == 0 {
				t.Fatal("the agent never dialed the server: the check is vacuous")
			}
		})
	}
}
