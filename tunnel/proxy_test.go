package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/tunnel/internal/sockio"
)

// serveProxy runs serve on a fresh loopback listener until the test ends.
func serveProxy(t *testing.T, serve func(context.Context, net.Listener) error) netip.AddrPort {
	t.Helper()
	return netip.MustParseAddrPort(testutil.Serve(t, serve))
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
		Routes: RouterFunc(func(src, dst, _ netip.AddrPort) (Route, error) {
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

// TestOutboundEarlyData: what a client wrote before the proxy read from it,
// its half-close included, rides with the CONNECT, arrives whole and is
// counted once; a client that waits for the server to speak first is
// carried as before.
func TestOutboundEarlyData(t *testing.T) {
	echoer := newBackend(t, echo)
	greeter := newBackend(t, func(c *net.TCPConn) {
		c.Write([]byte("hello: "))
		echo(c)
	})
	const early = "written, and half-closed, before the proxy read"
	// What the server's stream holds when it dials the echoer, before it
	// answers the CONNECT: the early bytes, if they came with it.
	var srv atomic.Pointer[Server]
	heldAtDial := make(chan int, 1)
	e := newEnv(t, func(s *ServerConfig, _ *ClientConfig) {
		dial := s.Dial
		s.Dial = func(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
			if dst == echoer.addr {
				heldAtDial <- serverHolds(srv.Load(), len(early))
			}
			return dial(ctx, src, dst)
		}
	})
	srv.Store(e.srv)
	dst := make(chan netip.AddrPort, 1)
	obs := &recordingObserver{}
	out, err := NewOutbound(OutboundConfig{
		Client: e.cli,
		Routes: RouterFunc(func(src, dst, _ netip.AddrPort) (Route, error) {
			return Route{Mode: HBONE, Src: idClient, Dst: idServer, HBONEAddr: e.hbone}, nil
		}),
		// The destination comes before routing and the proxy's first read.
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return <-dst, nil },
		Observer:    obs,
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := serveProxy(t, out.Serve)
	dial := func() *net.TCPConn {
		t.Helper()
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.TCPConn)
	}

	c := dial()
	c.Write([]byte(early))
	c.CloseWrite()
	dst <- echoer.addr
	if n := <-heldAtDial; n != len(early) {
		t.Fatalf("the server held %d bytes before it answered the CONNECT, want the %d early ones", n, len(early))
	}
	if got, err := io.ReadAll(c); err != nil || string(got) != early {
		t.Fatalf("early: got %q, %v", got, err)
	}

	late := "written after the server spoke"
	c = dial()
	dst <- greeter.addr
	hello := make([]byte, len("hello: "))
	if _, err := io.ReadFull(c, hello); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte(late))
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != late {
		t.Fatalf("late: got %q, %v", got, err)
	}

	// The proxy reports a close once both sockets are closed, after the
	// client has read its EOF.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		obs.mu.Lock()
		n := len(obs.closed)
		obs.mu.Unlock()
		if n == 2 || time.Now().After(deadline) {
			break
		}
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	recv, sent := len(early)+len(late), len(early)+len(hello)+len(late)
	if obs.recv != recv || obs.sent != sent || len(obs.closed) != 2 || obs.closed[0] != "ok" || obs.closed[1] != "ok" {
		t.Fatalf("observer: received %d (want %d), sent %d (want %d), closed %v", obs.recv, recv, obs.sent, sent, obs.closed)
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

// hboneOutbound serves an Outbound that tunnels every connection to dst.
func hboneOutbound(t *testing.T, e *env, dst netip.AddrPort, obs Observer) netip.AddrPort {
	t.Helper()
	out, err := NewOutbound(OutboundConfig{
		Client: e.cli,
		Routes: RouterFunc(func(src, _, _ netip.AddrPort) (Route, error) {
			return Route{Mode: HBONE, Src: idClient, Dst: idServer, HBONEAddr: e.hbone}, nil
		}),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return dst, nil },
		Observer:    obs,
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return serveProxy(t, out.Serve)
}

// TestSlowConsumer: a download through both proxies into an application
// that reads in small pieces with pauses arrives whole and in order, and
// every byte is counted once: the forwarding path queues what the full
// socket refuses and drains it in the background.
func TestSlowConsumer(t *testing.T) {
	e := newEnv(t)
	const size = 8 << 20
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(data)
	b := newBackend(t, func(c *net.TCPConn) {
		for p := data; len(p) > 0; {
			k := min(len(p), 1+len(p)%40_009)
			if _, err := c.Write(p[:k]); err != nil {
				return
			}
			p = p[k:]
		}
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
	obs := &recordingObserver{}
	addr := hboneOutbound(t, e, b.addr, obs)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	// The application reads nothing until the stream holds back more than
	// the sockets take: bytes the full socket refused, queued behind.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		held := heldBack(e.cli)
		if held >= 512<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream never held bytes back from the full socket: %d held", held)
		}
	}
	got := make([]byte, 0, size)
	buf := make([]byte, 3000)
	for i := 0; ; i++ {
		if i%100 == 0 {
			time.Sleep(20 * time.Millisecond) // let the sockets fill up
		}
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("received %d bytes, want the %d sent, in order", len(got), size)
	}
	c.Close()
	waitClosed(t, obs, 1)
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.closed) != 1 || obs.sent != size {
		t.Fatalf("observer: %d closed, %d bytes sent, want 1 and %d", len(obs.closed), obs.sent, size)
	}
}

// TestIdleConnectionGoroutines: a tunnelled connection holds one goroutine
// in each proxy while its TCP side is active (the one reading it), not one
// per direction, and none once that side has been idle for parkAfter: the
// socket is parked. Parked connections resume when bytes, a half-close or
// an abort arrive, and carry each across as before.
func TestIdleConnectionGoroutines(t *testing.T) {
	// Restored last, once the proxies have stopped.
	old := parkAfter
	t.Cleanup(func() { parkAfter = old })
	parkAfter = 100 * time.Millisecond
	e := newEnv(t)
	b := newBackend(t, echo) // one goroutine per connection
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, err := NewOutbound(OutboundConfig{
		Client: e.cli,
		Routes: RouterFunc(func(src, _, _ netip.AddrPort) (Route, error) {
			return Route{Mode: HBONE, Src: idClient, Dst: idServer, HBONEAddr: e.hbone}, nil
		}),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return b.addr, nil },
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := serveProxy(t, func(_ context.Context, ln net.Listener) error { return out.Serve(ctx, ln) })
	const n = 40
	// One connection first, so that the HBONE connection's own goroutines
	// exist before counting.
	warm, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer warm.Close()
	exchange(t, warm, "warm")
	time.Sleep(3 * parkAfter)
	before := settledGoroutines()
	conns := make([]net.Conn, n)
	for i := range conns {
		if conns[i], err = net.Dial("tcp", addr.String()); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
		exchange(t, conns[i], fmt.Sprint("hello ", i))
	}
	// Active: backend + Outbound + Server.
	if perConn := float64(settledGoroutines()-before) / n; perConn > 3 {
		t.Fatalf("%.2f goroutines per active tunnelled connection, want 3 (backend, outbound proxy, HBONE server)", perConn)
	}
	for round := range 2 {
		// Idle: only the backend's.
		time.Sleep(3 * parkAfter)
		if perConn := float64(settledGoroutines()-before) / n; perConn > 1 {
			t.Fatalf("round %d: %.2f goroutines per idle tunnelled connection, want 1 (the backend's)", round, perConn)
		}
		// Parked both ways, each connection still carries bytes.
		for i, c := range conns {
			exchange(t, c, fmt.Sprint("again ", round, i))
		}
	}
	time.Sleep(3 * parkAfter)
	// A parked client's half-close reaches the backend, whose echo ends.
	for _, c := range conns[:n/2] {
		c.(*net.TCPConn).CloseWrite()
		if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
			t.Fatalf("after half-close: %q, %v; want EOF", rest, err)
		}
	}
	// Ending the outbound proxy aborts the parked rest.
	cancel()
	for _, c := range conns[n/2:] {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read after the proxy ended: %v, want a reset or EOF", err)
		}
	}
}

// exchange writes msg on c and reads the echo.
func exchange(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo: %q, %v", got, err)
	}
}

// settledGoroutines is the goroutine count once it stopped changing.
func settledGoroutines() int {
	last := runtime.NumGoroutine()
	for range 50 {
		time.Sleep(20 * time.Millisecond)
		now := runtime.NumGoroutine()
		if now == last {
			return now
		}
		last = now
	}
	return last
}

// TestForwardBackpressure: a stream forwarded into a socket whose reader
// stalls queues what the socket refuses, in order, and delivers all of it
// once the reader resumes.
func TestForwardBackpressure(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, echo)
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	near, far := smallBufferPair(t)
	done := make(chan copyResult, 1)
	go func() { done <- (&pair{src: st, dst: near}).run(t.Context(), func(int) {}, func(int) {}) }()

	// Small messages, so the echo comes back as small frames that the read
	// loop writes to the socket itself until it is full.
	const msgs, size = 2000, 1000
	var sent bytes.Buffer
	src := rand.NewChaCha8([32]byte{3})
	msg := make([]byte, size)
	for range msgs {
		src.Read(msg)
		sent.Write(msg)
		if _, err := far.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	// Nobody reads far until the stream holds more than the sockets can:
	// bytes the full socket refused, queued behind (deliver.go, rule 3).
	c := st.c
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c.mu.Lock()
		held := st.recv.n
		c.mu.Unlock()
		if held >= 512<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream never held bytes back from the full socket: %d held", held)
		}
	}
	far.CloseWrite()
	got, err := io.ReadAll(far)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent.Bytes()) {
		t.Fatalf("received %d bytes, want the %d sent, in order", len(got), sent.Len())
	}
	if r := <-done; r.err != nil {
		t.Fatalf("pair: %v", r.err)
	}
}

// smallBufferPair is tcpPair with 32 KiB for near's writes and far's reads.
// far's is set before the handshake: shrunk after it, below the window
// already advertised, far drops what the peer may still send, and loopback
// TCP at times then stalls for longer than a test waits.
func smallBufferPair(t *testing.T) (near, far *net.TCPConn) {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 32<<10)
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	near, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		near.Close()
		t.Fatal(err)
	}
	far = c.(*net.TCPConn)
	t.Cleanup(func() { near.Close(); far.Close() })
	near.SetWriteBuffer(32 << 10)
	return near, far
}

// When accepting fails for good while connections are being copied, Serve
// ends them and returns the accept error rather than waiting for clients
// that may never close.
func TestServeAcceptError(t *testing.T) {
	b := newBackend(t, echo)
	p, err := NewPlaintext(PlaintextConfig{
		Authorizer:   AuthorizerFunc(func(context.Context, Request) error { return nil }),
		Destinations: DestinationsFunc(func(a netip.Addr) bool { return a.IsLoopback() }),
		OriginalDst:  func(net.Conn) (netip.AddrPort, error) { return b.addr, nil },
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(context.Background(), ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchange(t, c, "hello")
	ln.Close() // Accept now fails with a permanent error; ctx lives on.
	// The proxy must end the live connection on its own: the client sees
	// it closed while still holding its side open.
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client read after the accept error: %v, want the connection ended", err)
	}
	if err := <-served; err == nil || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve = %v, want the accept error", err)
	}
}

// waitClosed waits, bounded, until obs has seen n connections end.
func waitClosed(t *testing.T, obs *recordingObserver, n int) []string {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		obs.mu.Lock()
		closed := slices.Clone(obs.closed)
		obs.mu.Unlock()
		if len(closed) >= n {
			return closed
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections ended, want %d", len(closed), n)
		}
	}
}

// TestTunnelLostAfterDownload: once the download half is done, losing the
// HBONE connection ends the proxied connection at once; it does not wait
// for the application, which is silent, to send.
func TestTunnelLostAfterDownload(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, func(c *net.TCPConn) { c.Write([]byte("banner")) })
	obs := &recordingObserver{}
	addr := hboneOutbound(t, e, b.addr, obs)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := io.ReadAll(c); err != nil || string(got) != "banner" {
		t.Fatalf("read %q, %v", got, err)
	}
	e.cli.Close()
	if closed := waitClosed(t, obs, 1); closed[0] != "error" {
		t.Fatalf("connection ended %q, want error", closed[0])
	}
}

// TestResetAfterEndReleasesUpstream: a client that finishes its side and
// then resets the stream (RST_STREAM NO_ERROR after END_STREAM, RFC 9113
// §8.1) is gone: the server ends the upstream connection although the
// upstream is silent, and counts the end as clean.
func TestResetAfterEndReleasesUpstream(t *testing.T) {
	obs := &recordingObserver{}
	e := newEnv(t, func(s *ServerConfig, _ *ClientConfig) { s.Observer = obs })
	got := make(chan string, 1)
	quiet := make(chan struct{})
	b := newBackend(t, func(c *net.TCPConn) {
		data, _ := io.ReadAll(c)
		got <- string(data)
		<-quiet // silent from now on: never writes, never closes
	})
	t.Cleanup(func() { close(quiet) })
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("request"))
	st.CloseWrite()
	if s := <-got; s != "request" {
		t.Fatalf("upstream got %q", s)
	}
	st.Close() // END_STREAM sent, none received: RST_STREAM(NO_ERROR)
	if closed := waitClosed(t, obs, 1); closed[0] != "ok" {
		t.Fatalf("connection ended %q, want ok", closed[0])
	}
	if n := len(e.srv.Connections()); n != 0 {
		t.Fatalf("%d connections still listed", n)
	}
}

// TestCancelAfterEndResetsUpstream: a peer that cancels the stream
// (RST_STREAM CANCEL) after its END_STREAM ends the connection as failed,
// and the upstream sees a reset, not an orderly close: its next write
// fails at once.
func TestCancelAfterEndResetsUpstream(t *testing.T) {
	obs := &recordingObserver{}
	e := newEnv(t, func(s *ServerConfig, _ *ClientConfig) { s.Observer = obs })
	read := make(chan struct{})
	wrote := make(chan error, 1)
	closed := make(chan struct{})
	b := newBackend(t, func(c *net.TCPConn) {
		io.ReadAll(c)
		close(read)
		<-closed
		_, err := c.Write([]byte("late"))
		wrote <- err
	})
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("request"))
	st.CloseWrite()
	<-read
	st.abort()
	if got := waitClosed(t, obs, 1); got[0] == "ok" {
		t.Fatalf("connection ended %q after a CANCEL, want a failure", got[0])
	}
	close(closed)
	if err := <-wrote; err == nil {
		t.Fatal("upstream wrote after the proxy closed its side: closed in order, not reset")
	}
}

// TestResetAfterEndDeliversInFull: the peer sends its whole request, then
// RST_STREAM(NO_ERROR) because it wants no more of the answer (RFC 9113
// §8.1), while the upstream is still talking and has not read all of the
// request yet. The request must still arrive in full: closing the upstream
// socket with the upstream's bytes unread would reset it and throw away
// what was still queued for it, so the server settles the socket first.
func TestResetAfterEndDeliversInFull(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("settling reads the socket's unacknowledged bytes (SIOCOUTQ), on Linux only")
	}
	const size, tail = 8 << 20, 256 << 10
	upstream := make(chan *net.TCPConn, 1)
	e := newEnv(t, func(s *ServerConfig, _ *ClientConfig) {
		s.Dial = func(ctx context.Context, _, dst netip.AddrPort) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", dst.String())
			if err == nil {
				c.(*net.TCPConn).SetWriteBuffer(1 << 20) // room for the tail
				upstream <- c.(*net.TCPConn)
			}
			return c, err
		}
	})
	paused := make(chan struct{})
	release := sync.OnceFunc(func() { close(paused) })
	got := make(chan int64, 1)
	b := newBackend(t, func(c *net.TCPConn) {
		c.SetReadBuffer(32 << 10)                        // less than the tail
		stopNoise, noise := writeUntilStopped(c, 32<<10) // talks until it has read the request
		n, _ := io.CopyN(io.Discard, c, size-tail)
		<-paused // the tail waits in the sockets
		m, _ := io.Copy(io.Discard, c)
		stopNoise()
		<-noise
		c.CloseWrite()
		got <- n + m
	})
	t.Cleanup(release) // before the backend's cleanup waits for it
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	up := <-upstream
	var srv *Stream
	e.srv.mu.Lock()
	for c := range e.srv.conns {
		c.mu.Lock()
		for _, s := range c.streams {
			srv = s
		}
		c.mu.Unlock()
	}
	e.srv.mu.Unlock()
	if srv == nil {
		t.Fatal("the server holds no stream")
	}
	if _, err := st.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	st.Close() // END_STREAM sent, none received: RST_STREAM(NO_ERROR)
	// The server has the reset and has handed the whole request to the
	// upstream socket, which holds bytes the paused upstream has not
	// acknowledged: closing the socket now would lose them.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		srv.c.mu.Lock()
		reset, handed := srv.wreset != nil, srv.fwd.to == nil && srv.recvDone && srv.recv.n == 0
		srv.c.mu.Unlock()
		if !isOpen(up) {
			t.Fatal("the server closed the upstream socket before the upstream read the request")
		}
		unacked := sockio.Unacked(up)
		if reset && handed && unacked > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reset %v, request handed to the socket %v, %d bytes unacknowledged", reset, handed, unacked)
		}
	}
	release()
	select {
	case n := <-got:
		if n != size {
			t.Fatalf("upstream read %d bytes of a %d-byte request", n, size)
		}
	case <-time.After(time.Minute):
		t.Fatal("upstream never finished reading")
	}
}

// serverHolds waits until one of s's streams has received n bytes not yet
// read, for 10 s at most, and returns the most a stream held.
func serverHolds(s *Server, n int) int {
	most := 0
	for deadline := time.Now().Add(10 * time.Second); most < n && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		s.mu.Lock()
		for c := range s.conns {
			c.mu.Lock()
			for _, st := range c.streams {
				most = max(most, st.recv.n)
			}
			c.mu.Unlock()
		}
		s.mu.Unlock()
	}
	return most
}

// isOpen reports whether c has not been closed.
func isOpen(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	return err == nil && rc.Control(func(uintptr) {}) == nil
}

// heldBack is what the client's streams proxied into sockets hold queued,
// the sockets not having taken it.
func heldBack(cli *Client) int {
	cli.mu.Lock()
	var conns []*h2conn
	for _, p := range cli.pools {
		conns = append(conns, p.conns...)
	}
	cli.mu.Unlock()
	n := 0
	for _, c := range conns {
		c.mu.Lock()
		for _, s := range c.streams {
			if s.fwd.sink.Valid() {
				n += s.recv.n
			}
		}
		c.mu.Unlock()
	}
	return n
}
