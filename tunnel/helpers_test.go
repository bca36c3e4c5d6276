package tunnel

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
)

var (
	idClient = certs.Identity{TrustDomain: "cluster.local", Namespace: "a", ServiceAccount: "client"}
	idServer = certs.Identity{TrustDomain: "cluster.local", Namespace: "b", ServiceAccount: "server"}
)

func testLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// env is one HBONE server on loopback plus a client pool, both using one CA.
type env struct {
	t       testing.TB
	ca      *certstest.CA
	store   *certs.Store
	srv     *Server
	cli     *Client
	hbone   netip.AddrPort
	dials   atomic.Int32 // upstream dials made by the server
	tcpDial atomic.Int32 // HBONE connections dialed by the client
	cancel  context.CancelFunc
	done    chan error
}

type envOpt func(*ServerConfig, *ClientConfig)

func newEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	ca := certstest.NewCA(t)
	store := ca.Store(t, idClient, idServer)
	e := &env{t: t, ca: ca, store: store, done: make(chan error, 1)}
	scfg := ServerConfig{
		TLS:          store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return idServer, nil }),
		Destinations: DestinationsFunc(func(a netip.Addr) bool { return a.IsLoopback() }),
		Authorizer:   AuthorizerFunc(func(context.Context, Request) error { return nil }),
		Dial: func(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
			e.dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		},
	}
	ccfg := ClientConfig{
		TLS: func(src, want certs.Identity) (*tls.Config, error) {
			return store.ClientConfig(src, want), nil
		},
		DialTCP: func(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			e.tcpDial.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		},
	}
	for _, o := range opts {
		o(&scfg, &ccfg)
	}
	srv, err := NewServer(scfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := NewClient(ccfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.srv, e.cli = srv, cli
	e.hbone = addrPort(ln.Addr())
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(e.stop)
	return e
}

// stop closes the client and stops the server, failing on a Serve error.
func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cli.Close()
	e.cancel()
	e.cancel = nil
	if err := <-e.done; err != nil {
		e.t.Errorf("Serve: %v", err)
	}
}

func (e *env) dial(ctx context.Context, authority netip.AddrPort) (*Stream, error) {
	return e.cli.Dial(ctx, DialRequest{
		Src: idClient, Dst: idServer,
		SrcAddr:   netip.MustParseAddrPort("127.0.0.1:40000"),
		HBONEAddr: e.hbone, Authority: authority,
	})
}

// backend is a loopback TCP server running handler per connection.
type backend struct {
	ln   net.Listener
	addr netip.AddrPort
	wg   sync.WaitGroup
	mu   sync.Mutex
	conn []net.Conn
}

func newBackend(t testing.TB, handler func(c *net.TCPConn)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln, addr: addrPort(ln.Addr())}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conn = append(b.conn, c)
			b.mu.Unlock()
			b.wg.Go(func() { handler(c.(*net.TCPConn)); c.Close() })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conn {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

// echo copies everything back and half-closes after the client's EOF.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
	io.Copy(io.Discard, c)
}

// run is pair.start, waiting for the result; recv and sent count bytes
// src→dst and dst→src.
func (p *pair) run(ctx context.Context, recv, sent func(int)) copyResult {
	h := &funcHooks{count: [2]func(int){recv, sent}, res: make(chan copyResult, 1)}
	p.start(ctx, h)
	return <-h.res
}

type funcHooks struct {
	count [2]func(int)
	res   chan copyResult
}

func (h *funcHooks) copied(dir, n int)  { h.count[dir](n) }
func (h *funcHooks) ended(r copyResult) { h.res <- r }

// writeUntilStopped writes chunk-sized buffers to w on a goroutine of its
// own until stop is called or a write fails; done closes when it has.
func writeUntilStopped(w io.Writer, chunk int) (stop func(), done <-chan struct{}) {
	quit, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		buf := make([]byte, chunk)
		for {
			select {
			case <-quit:
				return
			default:
			}
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}()
	return func() { close(quit) }, finished
}

// tcpPair returns both ends of a loopback TCP connection, closed when the
// test ends.
func tcpPair(t testing.TB) (near, far *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	near, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	far, err = ln.AcceptTCP()
	if err != nil {
		near.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { near.Close(); far.Close() })
	return near, far
}
