package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
)

// serveProxy runs serve on a fresh loopback listener until the test ends.
func serveProxy(t *testing.T, serve func(context.Context, net.Listener) error) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return addrPort(ln.Addr())
}

// roundTrip sends msg through conn, half-closes and returns the reply.
func roundTrip(t *testing.T, addr netip.AddrPort, msg string) (string, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		return "", err // a refused connection may be reset before connect returns
	}
	defer c.Close()
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

type recordingObserver struct {
	mu     sync.Mutex
	opened []ConnInfo
	closed []string
	recv   int
	sent   int
}

func (o *recordingObserver) Opened(ci ConnInfo) ConnObserver {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.opened = append(o.opened, ci)
	return o
}
func (o *recordingObserver) Received(n int) { o.mu.Lock(); o.recv += n; o.mu.Unlock() }
func (o *recordingObserver) Sent(n int)     { o.mu.Lock(); o.sent += n; o.mu.Unlock() }
func (o *recordingObserver) Closed(result, reason string) {
	o.mu.Lock()
	o.closed = append(o.closed, result)
	o.mu.Unlock()
}

func TestOutbound(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, echo)
	mode := HBONE
	var mu sync.Mutex
	obs := &recordingObserver{}
	out, err := NewOutbound(OutboundConfig{
		Client: e.cli,
		Routes: RouterFunc(func(src, dst netip.AddrPort) (Route, error) {
			mu.Lock()
			defer mu.Unlock()
			switch mode {
			case HBONE:
				return Route{Mode: HBONE, Src: idClient, Dst: idServer, HBONEAddr: e.hbone}, nil
			case Passthrough:
				return Route{Mode: Passthrough}, nil
			}
			return Route{}, errors.New("no route")
		}),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return b.addr, nil },
		Observer:    obs,
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := serveProxy(t, out.Serve)

	for _, m := range []Mode{HBONE, Passthrough} {
		mu.Lock()
		mode = m
		mu.Unlock()
		got, err := roundTrip(t, addr, "via "+m.String())
		if err != nil || got != "via "+m.String() {
			t.Fatalf("%v: got %q, %v", m, got, err)
		}
	}
	if e.dials.Load() != 1 {
		t.Fatalf("HBONE server dialed %d upstreams, want 1 (passthrough must not tunnel)", e.dials.Load())
	}
	mu.Lock()
	mode = Deny
	mu.Unlock()
	if got, err := roundTrip(t, addr, "nope"); err == nil && got != "" {
		t.Fatalf("denied route carried data: %q", got)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.opened) != 3 || obs.recv != len("via hbone")+len("via passthrough") || obs.sent != obs.recv {
		t.Fatalf("observer: %d opened, %d received, %d sent", len(obs.opened), obs.recv, obs.sent)
	}
	if obs.opened[0].SrcIdentity != idClient || obs.opened[0].Mode != "hbone" {
		t.Fatalf("first connection %+v", obs.opened[0])
	}
}

func TestPlaintext(t *testing.T) {
	b := newBackend(t, echo)
	var mu sync.Mutex
	strict := false
	var dialed int
	p, err := NewPlaintext(PlaintextConfig{
		Authorizer: AuthorizerFunc(func(_ context.Context, r Request) error {
			mu.Lock()
			defer mu.Unlock()
			if !r.Plaintext || !r.Peer.IsZero() {
				return errors.New("not a plaintext request")
			}
			if strict {
				return errors.New("STRICT")
			}
			return nil
		}),
		Destinations: DestinationsFunc(func(a netip.Addr) bool { return a.IsLoopback() }),
		OriginalDst:  func(net.Conn) (netip.AddrPort, error) { return b.addr, nil },
		Dial: func(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
			mu.Lock()
			dialed++
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		},
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := serveProxy(t, p.Serve)
	if got, err := roundTrip(t, addr, "permissive"); err != nil || got != "permissive" {
		t.Fatalf("PERMISSIVE: %q, %v", got, err)
	}
	mu.Lock()
	strict = true
	mu.Unlock()
	if got, _ := roundTrip(t, addr, "strict"); got != "" {
		t.Fatalf("STRICT carried %q", got)
	}
	if dialed != 1 {
		t.Fatalf("dialed %d upstreams, want 1", dialed)
	}
}

func TestRequestHeaders(t *testing.T) {
	got := map[string]string{}
	for _, f := range requestHeaders(DialRequest{
		SrcAddr:   netip.MustParseAddrPort("[fd00::1]:4000"),
		Authority: netip.MustParseAddrPort("[fd00::2]:8080"),
		Baggage:   "k8s.namespace.name=a",
	}) {
		got[f.Name] = f.Value
	}
	want := map[string]string{
		":method":    "CONNECT",
		":authority": "[fd00::2]:8080",
		"forwarded":  `for="[fd00::1]:4000"`,
		"baggage":    "k8s.namespace.name=a",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if tp := got["traceparent"]; len(tp) != 55 || tp[:3] != "00-" || tp[52:] != "-00" {
		t.Errorf("traceparent %q is not W3C-shaped", tp)
	}
}
