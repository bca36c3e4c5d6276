package adversarial

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/certs/istioca"
	"github.com/ferrymesh/ferry/tunnel"
)

// nodeAuth authenticates one token as node a's agent and says every
// foo/* service account has a pod on node a.
type nodeAuth struct{ token string }

func (n nodeAuth) Authenticate(_ context.Context, token string) (istioca.Caller, error) {
	if token != n.token {
		return istioca.Caller{}, fmt.Errorf("unknown token")
	}
	return istioca.Caller{Identity: certs.Identity{TrustDomain: certs.DefaultTrustDomain, Namespace: "istio-system", ServiceAccount: "ferry"}, Node: "a"}, nil
}

func (nodeAuth) ServiceAccountOnNode(_ context.Context, node, ns, _ string) (bool, error) {
	return node == "a" && ns == "foo", nil
}

// caService is an Istio-protocol CA (istioca.Server) that a test can stop
// and start again on the same address.
type caService struct {
	t      testing.TB
	addr   string
	srv    *istioca.Server
	cancel context.CancelFunc
	done   chan error
}

func (c *caService) start() {
	c.t.Helper()
	ln, err := net.Listen("tcp4", c.addr)
	if err != nil {
		c.t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel, c.done = cancel, make(chan error, 1)
	go func() { c.done <- c.srv.Serve(ctx, ln) }()
}

func (c *caService) stop() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	c.cancel = nil
	if err := <-c.done; err != nil {
		c.t.Errorf("CA Serve: %v", err)
	}
}

// TestCAUnavailable takes the CA away from a running agent: identities it
// already holds keep working, a new pod's identity fails closed (its
// traffic is refused, never sent under another identity), and the new pod
// works once the CA is back.
func TestCAUnavailable(t *testing.T) {
	t.Parallel()
	a := newAgent(t, baseManifests)
	srv, err := istioca.NewServer(istioca.ServerConfig{
		TrustDomain: certs.DefaultTrustDomain,
		NodeAgents:  []certs.Identity{{TrustDomain: certs.DefaultTrustDomain, Namespace: "istio-system", ServiceAccount: "ferry"}},
		ServerNames: []string{"127.0.0.1"},
	}, a.ca.Issuer(), nodeAuth{token: "node-a-token"}, certstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ca := &caService{t: t, addr: "127.0.0.1:0", srv: srv}
	ca.start()
	t.Cleanup(ca.stop)
	root, token := filepath.Join(a.dir, "root.pem"), filepath.Join(a.dir, "token")
	os.WriteFile(root, a.ca.RootPEM(), 0o644)
	os.WriteFile(token, []byte("node-a-token"), 0o600)
	a.caArgs = []string{"--ca-addr", ca.addr, "--ca-root", root, "--ca-token-file", token}
	a.start()

	// Node b: an HBONE server with foo/remote's identity that records who
	// connects, in front of an echo application.
	app := startEcho(t, netip.MustParseAddr("127.0.20.3"))
	var mu sync.Mutex
	var peers []certs.Identity
	store := a.ca.Store(t, fooID("remote"))
	peer, err := tunnel.NewServer(tunnel.ServerConfig{
		TLS:          store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return fooID("remote"), nil }),
		Destinations: tunnel.DestinationsFunc(func(netip.Addr) bool { return true }),
		Authorizer: tunnel.AuthorizerFunc(func(_ context.Context, r tunnel.Request) error {
			mu.Lock()
			defer mu.Unlock()
			peers = append(peers, r.Peer)
			return nil
		}),
		Dial: func(ctx context.Context, _, _ netip.AddrPort) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp4", app.addr.String())
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(remotePod, a.hbone.Port()).String())
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(context.Background())
	pdone := make(chan error, 1)
	go func() { pdone <- peer.Serve(pctx, ln) }()
	t.Cleanup(func() { pcancel(); <-pdone })
	seen := func(id certs.Identity) int {
		mu.Lock()
		defer mu.Unlock()
		return countOf(peers, id)
	}
	// outbound sends through the agent from src and returns the echo.
	outbound := func(src netip.Addr) error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 5 * time.Second}
		c, err := d.DialContext(t.Context(), "tcp4", a.outbound.String())
		if err != nil {
			return err
		}
		defer c.Close()
		return echoOnce(c, "via CA")
	}

	echo := startEcho(t, serverPod)
	if err := outbound(clientPod); err != nil {
		t.Fatalf("before the outage: foo/client outbound: %v", err)
	}
	ca.stop()

	// Identities the agent holds keep working, both ways.
	if err := outbound(clientPod); err != nil {
		t.Errorf("CA down: foo/client outbound: %v", err)
	}
	if st := dialAs(t, a, "remote", echo); st != 200 {
		t.Errorf("CA down: inbound HBONE to foo/server: status %d", st)
	}

	// A new pod arrives; its identity cannot be issued.
	newPod := netip.MustParseAddr("127.0.10.5")
	a.writeManifest("new.yaml", `apiVersion: v1
kind: Pod
metadata: {name: newpod, namespace: foo, labels: {app: newpod}}
spec: {nodeName: a, serviceAccountName: newsa}
status: {podIP: 127.0.10.5}
`)
	for range 40 {
		if a.mustScrape().Sum("ferry_certs_ca_requests_total", "result", "error") > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := a.mustScrape().Sum("ferry_certs_ca_requests_total", "result", "error"); n == 0 {
		t.Fatal("the agent never tried the CA for the new identity")
	}
	for range 3 {
		err := outbound(newPod)
		if err == nil {
			t.Fatal("CA down: the new pod's traffic went through without its certificate")
		}
		if err != io.EOF && !isClosedErr(err) {
			t.Logf("new pod refused: %v", err)
		}
	}
	mu.Lock()
	others := len(peers) - countOf(peers, fooID("client"))
	mu.Unlock()
	if others != 0 {
		t.Fatalf("CA down: the peer received %d CONNECTs from identities other than foo/client", others)
	}

	// The CA comes back: the new pod gets its identity and works.
	ca.start()
	var last error
	for range 120 {
		if last = outbound(newPod); last == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if last != nil {
		t.Fatalf("CA back: the new pod never worked: %v", last)
	}
	if seen(fooID("newsa")) == 0 {
		t.Fatal("CA back: the peer never saw foo/newsa")
	}
}

func countOf(ids []certs.Identity, id certs.Identity) int {
	n := 0
	for _, x := range ids {
		if x == id {
			n++
		}
	}
	return n
}
