package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
)

// memListener is an in-memory net.Listener whose connections are net.Pipe
// ends, so tests can run inside a synctest bubble.
type memListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newMemListener() *memListener {
	return &memListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *memListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 15008} }

func (l *memListener) Dial(ctx context.Context) (net.Conn, error) {
	a, b := net.Pipe()
	select {
	case l.conns <- b:
		return a, nil
	case <-l.closed:
		return nil, errors.New("connection refused")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// bubbleEnv is an HBONE server and client over memListener with echo
// upstreams. Certificates are checked only for the SPIFFE identity: the
// bubble's clock (year 2000) predates them.
type bubbleEnv struct {
	srv    *Server
	cli    *Client
	ln     *memListener
	cancel context.CancelFunc
	done   chan error
}

func newBubbleEnv(t *testing.T, ca *certstest.CA, mutate func(*ServerConfig, *ClientConfig)) *bubbleEnv {
	ln := newMemListener()
	var wg sync.WaitGroup
	scfg := ServerConfig{
		TLS:          certstest.PeerConfig(ca.Leaf(t, idServer)),
		Destinations: DestinationsFunc(func(netip.Addr) bool { return true }),
		Authorizer:   AuthorizerFunc(func(context.Context, Request) error { return nil }),
		Dial: func(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
			a, b := net.Pipe()
			wg.Go(func() { io.Copy(b, b); b.Close() })
			return a, nil
		},
	}
	clientCfg := certstest.PeerConfig(ca.Leaf(t, idClient))
	ccfg := ClientConfig{
		TLS: func(src, want certs.Identity) (*tls.Config, error) { return clientCfg, nil },
		DialTCP: func(ctx context.Context, _ netip.Addr, _ netip.AddrPort) (net.Conn, error) {
			return ln.Dial(ctx)
		},
	}
	if mutate != nil {
		mutate(&scfg, &ccfg)
	}
	srv, err := NewServer(scfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := NewClient(ccfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &bubbleEnv{srv: srv, cli: cli, ln: ln, cancel: cancel, done: make(chan error, 1)}
	go func() { e.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cli.Close()
		cancel()
		if err := <-e.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		wg.Wait()
	})
	return e
}

// closeErr is what c was closed with, nil while it is open.
func closeErr(c *h2conn) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

func (e *bubbleEnv) dial(ctx context.Context) (*Stream, error) {
	return e.cli.Dial(ctx, DialRequest{Src: idClient, Dst: idServer,
		HBONEAddr: netip.MustParseAddrPort("127.0.0.1:15008"), Authority: netip.MustParseAddrPort("127.0.0.1:80")})
}

func TestIdleEviction(t *testing.T) {
	ca := certstest.NewCA(t)
	synctest.Test(t, func(t *testing.T) {
		e := newBubbleEnv(t, ca, func(_ *ServerConfig, c *ClientConfig) { c.IdleTimeout = time.Minute })
		st, err := e.dial(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		// An open stream keeps the connection, however long.
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		if n := e.cli.Conns(); n != 1 {
			t.Fatalf("%d connections with a stream open, want 1", n)
		}
		st.Close()
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if n := e.cli.Conns(); n != 1 {
			t.Fatalf("%d connections before the idle timeout, want 1", n)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := e.cli.Conns(); n != 0 {
			t.Fatalf("%d connections after the idle timeout, want 0", n)
		}
		// The pool dials again when needed.
		st, err = e.dial(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
	})
}

// TestKeepaliveTimeout: a server that completes TLS and then goes silent is
// detected by PINGs and the client's connection closes.
func TestKeepaliveTimeout(t *testing.T) {
	ca := certstest.NewCA(t)
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		srvTLS := tls.Server(b, certstest.PeerConfig(ca.Leaf(t, idServer)))
		go func() {
			srvTLS.Handshake()
			io.Copy(io.Discard, srvTLS) // reads everything, never answers
		}()
		cli, err := NewClient(ClientConfig{
			TLS: func(certs.Identity, certs.Identity) (*tls.Config, error) {
				return certstest.PeerConfig(ca.Leaf(t, idClient)), nil
			},
			DialTCP:           func(context.Context, netip.Addr, netip.AddrPort) (net.Conn, error) { return a, nil },
			KeepaliveInterval: 10 * time.Second,
			KeepaliveTimeout:  20 * time.Second,
		}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		key := poolKey{src: idClient, dst: idServer, hbone: netip.MustParseAddrPort("127.0.0.1:15008")}
		c, err := cli.conn(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		c.unreserve()
		time.Sleep(25 * time.Second) // PING sent at 10 s, unanswered
		synctest.Wait()
		if n := cli.Conns(); n != 1 {
			t.Fatalf("%d connections before the PING timeout, want 1", n)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if n := cli.Conns(); n != 0 {
			t.Fatalf("%d connections to a silent peer, want 0", n)
		}
		if err := closeErr(c); !errors.Is(err, errPingTimeout) {
			t.Fatalf("connection closed by %v, want the PING timeout", err)
		}
	})
}

// TestConcurrentStreamLimit: the server refuses streams beyond its limit and
// the client pool opens another connection instead.
func TestConcurrentStreamLimit(t *testing.T) {
	ca := certstest.NewCA(t)
	synctest.Test(t, func(t *testing.T) {
		e := newBubbleEnv(t, ca, func(s *ServerConfig, _ *ClientConfig) { s.MaxConcurrentStreams = 2 })
		var streams []*Stream
		for range 5 {
			st, err := e.dial(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			streams = append(streams, st)
		}
		if n := e.cli.Conns(); n != 3 {
			t.Fatalf("5 streams at 2 per connection used %d connections, want 3", n)
		}
		for _, st := range streams {
			st.Close()
		}
	})
}

func TestContinuationFlood(t *testing.T) {
	e := newEnv(t)
	p := dialFramePeer(t, e)
	p.headersBlock(1, false, false, p.Encode(field(":method", "CONNECT")))
	go func() {
		for range 1000 {
			if p.WriteContinuation(1, false, nil) != nil {
				return
			}
		}
	}()
	if code := p.waitGoAway(); code != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", code)
	}
}

func TestOversizedHeaders(t *testing.T) {
	e := newEnv(t)
	p := dialFramePeer(t, e)
	fields := []hpack.HeaderField{field(":method", "CONNECT")}
	big := make([]byte, 8<<10)
	for i := range big {
		big[i] = 'a' + byte(i%26)
	}
	for i := range 3 {
		fields = append(fields, field("x-big"+string(rune('a'+i)), string(big)))
	}
	block := p.Encode(fields...)
	p.headersBlock(1, false, false, block[:16384])
	go p.WriteContinuation(1, true, block[16384:])
	if code := p.waitGoAway(); code != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", code)
	}
}

// TestRapidReset: a client that opens and resets streams in a loop is cut
// off with GOAWAY.
func TestRapidReset(t *testing.T) {
	gate := make(chan struct{})
	defer close(gate)
	e := newEnv(t, func(s *ServerConfig, _ *ClientConfig) {
		s.Authorizer = AuthorizerFunc(func(ctx context.Context, r Request) error {
			select {
			case <-gate:
			case <-ctx.Done():
			}
			return errors.New("slow no")
		})
	})
	p := dialFramePeer(t, e)
	go func() {
		for id := uint32(1); id < 4000; id += 2 {
			if p.Connect(id, "127.0.0.1:80") != nil || p.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				return
			}
		}
	}()
	if code := p.waitGoAway(); code != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", code)
	}
}

// TestFirstStreamTimeout: a client that connects but never opens a stream
// is disconnected.
func TestFirstStreamTimeout(t *testing.T) {
	ca := certstest.NewCA(t)
	synctest.Test(t, func(t *testing.T) {
		e := newBubbleEnv(t, ca, func(s *ServerConfig, _ *ClientConfig) { s.FirstStreamTimeout = 10 * time.Second })
		key := poolKey{src: idClient, dst: idServer, hbone: netip.MustParseAddrPort("127.0.0.1:15008")}
		c, err := e.cli.conn(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		c.unreserve()
		synctest.Wait()
		var served *h2conn
		e.srv.mu.Lock()
		for sc := range e.srv.conns {
			served = sc
		}
		e.srv.mu.Unlock()
		if served == nil {
			t.Fatal("the server holds no connection")
		}
		time.Sleep(9 * time.Second)
		synctest.Wait()
		if n := e.cli.Conns(); n != 1 {
			t.Fatalf("%d connections before the timeout, want 1", n)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := e.cli.Conns(); n != 0 {
			t.Fatalf("%d connections after the first-stream timeout, want 0", n)
		}
		if err := closeErr(served); err == nil || !strings.Contains(err.Error(), "no stream opened") {
			t.Fatalf("server closed the connection with %v, want the first-stream timeout", err)
		}
	})
}

// TestDialCancelUnwinds: a Dial whose context ends while the server is
// still deciding returns at once, and the server's handler unwinds (goleak
// checks no goroutine is left).
func TestDialCancelUnwinds(t *testing.T) {
	ca := certstest.NewCA(t)
	synctest.Test(t, func(t *testing.T) {
		unwound := make(chan struct{})
		e := newBubbleEnv(t, ca, func(s *ServerConfig, _ *ClientConfig) {
			s.Authorizer = AuthorizerFunc(func(ctx context.Context, r Request) error {
				<-ctx.Done() // a policy lookup that never finishes
				close(unwound)
				return ctx.Err()
			})
		})
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := e.dial(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Dial: %v, want deadline exceeded", err)
		}
		synctest.Wait()
		select {
		case <-unwound:
		default:
			t.Fatal("server handler still waiting after the client gave up")
		}
	})
}
