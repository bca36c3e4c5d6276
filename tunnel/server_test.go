package tunnel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// Lock-order checks take a stack trace per lock: on for tests, off when
	// benchmarks run, so that they measure what ships.
	checkLocks = flag.Lookup("test.bench").Value.String() == ""
	goleak.VerifyTestMain(m)
}

func TestConnectEcho(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, echo)
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	msg := []byte("hello through HBONE")
	if _, err := st.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(st, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("got %q, want %q", got, msg)
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, st); err != nil || n != 0 {
		t.Fatalf("after CloseWrite: %d bytes, %v; want EOF", n, err)
	}
}

// TestHalfCloseClientToServer: the client's CloseWrite reaches the upstream
// as EOF while the upstream's response still flows back.
func TestHalfCloseClientToServer(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, func(c *net.TCPConn) {
		data, err := io.ReadAll(c) // until the client's half-close
		if err != nil {
			return
		}
		// Answer only after EOF: proves the EOF arrived with the write side open.
		c.Write([]byte("got " + string(data)))
		c.CloseWrite()
	})
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Write([]byte("request"))
	st.CloseWrite()
	resp, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if string(resp) != "got request" {
		t.Fatalf("response %q", resp)
	}
}

// TestHalfCloseServerToClient: the upstream's CloseWrite reaches the client
// as EOF while the client can still send.
func TestHalfCloseServerToClient(t *testing.T) {
	e := newEnv(t)
	got := make(chan string, 1)
	b := newBackend(t, func(c *net.TCPConn) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		data, _ := io.ReadAll(c)
		got <- string(data)
	})
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	banner, err := io.ReadAll(st)
	if err != nil || string(banner) != "banner" {
		t.Fatalf("banner %q, %v", banner, err)
	}
	if _, err := st.Write([]byte("still talking")); err != nil {
		t.Fatalf("write after server half-close: %v", err)
	}
	st.CloseWrite()
	if s := <-got; s != "still talking" {
		t.Fatalf("upstream got %q", s)
	}
}

// rawConnect opens a stream with arbitrary request headers on a pooled
// connection and returns the response status.
func rawConnect(t *testing.T, e *env, fields []hpack.HeaderField) int {
	t.Helper()
	key := poolKey{src: idClient, dst: idServer, srcIP: netip.MustParseAddr("127.0.0.1"), hbone: e.hbone}
	c, err := e.cli.conn(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	st, _, err := c.openStream(fields, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	err = st.awaitResponse(t.Context())
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	if err != nil {
		t.Fatal(err)
	}
	return 200
}

func TestStatusCodes(t *testing.T) {
	b := newBackend(t, echo)
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := addrPort(closed.Addr())
	closed.Close()
	deny := netip.MustParseAddrPort("127.0.0.9:9")

	e := newEnv(t, func(s *ServerConfig, _ *ClientConfig) {
		s.Destinations = DestinationsFunc(func(a netip.Addr) bool { return a.Is4() && a.IsLoopback() })
		s.Authorizer = AuthorizerFunc(func(_ context.Context, r Request) error {
			if r.Dst == deny {
				return errors.New("policy says no")
			}
			if r.Peer != idClient {
				return errors.New("wrong peer")
			}
			return nil
		})
	})
	connect := func(auth string) []hpack.HeaderField {
		return []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: auth}}
	}
	for _, tc := range []struct {
		name   string
		fields []hpack.HeaderField
		want   int
		dial   bool // the upstream is dialed
	}{
		{"ok", connect(b.addr.String()), 200, true},
		{"GET", []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"}, {Name: ":path", Value: "/"}, {Name: ":authority", Value: b.addr.String()}}, 400, false},
		{"hostname authority", connect("example.com:80"), 400, false},
		{"no port", connect("127.0.0.1"), 400, false},
		{"missing authority", []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}}, 400, false},
		{"not local", connect("[::1]:80"), 503, false},
		{"dial fails", connect(closedAddr.String()), 503, true},
		{"denied", connect(deny.String()), 401, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.dials.Load()
			if got := rawConnect(t, e, tc.fields); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
			if dialed := e.dials.Load() != before; dialed != tc.dial {
				t.Fatalf("upstream dialed %v, want %v", dialed, tc.dial)
			}
		})
	}
	// The client surfaces the status as *StatusError.
	_, err := e.dial(t.Context(), deny)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 401 {
		t.Fatalf("Dial to denied destination: %v", err)
	}
}

func TestAuthorityMismatch(t *testing.T) {
	b := newBackend(t, echo)
	e := newEnv(t, func(s *ServerConfig, _ *ClientConfig) { s.CheckAuthority = true })
	// The HBONE listener is 127.0.0.1; an authority on 127.0.0.2 is a mismatch.
	other := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), b.addr.Port())
	_, err := e.dial(t.Context(), other)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 400 {
		t.Fatalf("mismatched authority: %v, want 400", err)
	}
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatalf("matching authority: %v", err)
	}
	st.Close()
}

func TestIdentityChecks(t *testing.T) {
	b := newBackend(t, echo)
	otherCA := certstest.NewCA(t)
	otherStore := otherCA.Store(t, idClient)
	for _, name := range []string{"good client", "wrong server identity", "wrong trust domain", "untrusted client", "expired client", "untrusted server"} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			want := idServer
			switch name {
			case "good client":
				// The control: a valid certificate, presented as the bad
				// ones below are, is accepted.
				cert := e.ca.Leaf(t, idClient)
				e.cli.cfg.TLS = func(_, w certs.Identity) (*tls.Config, error) { return certstest.PeerConfig(cert), nil }
			case "wrong server identity":
				want = certs.Identity{TrustDomain: "cluster.local", Namespace: "b", ServiceAccount: "other"}
			case "wrong trust domain":
				cert := e.ca.Leaf(t, certs.Identity{TrustDomain: "evil.local", Namespace: "a", ServiceAccount: "client"})
				e.cli.cfg.TLS = func(_, w certs.Identity) (*tls.Config, error) { return certstest.PeerConfig(cert), nil }
			case "untrusted client":
				cert := otherCA.Leaf(t, idClient)
				e.cli.cfg.TLS = func(_, w certs.Identity) (*tls.Config, error) { return certstest.PeerConfig(cert), nil }
			case "expired client":
				cert := e.ca.Leaf(t, idClient, certstest.Expired())
				e.cli.cfg.TLS = func(_, w certs.Identity) (*tls.Config, error) { return certstest.PeerConfig(cert), nil }
			case "untrusted server":
				e.cli.cfg.TLS = func(s, w certs.Identity) (*tls.Config, error) { return otherStore.ClientConfig(s, w), nil }
			}
			st, err := e.cli.Dial(t.Context(), DialRequest{Src: idClient, Dst: want, HBONEAddr: e.hbone, Authority: b.addr})
			if name == "good client" {
				if err != nil {
					t.Fatalf("Dial with a good certificate: %v", err)
				}
				st.Close()
				return
			}
			if err == nil {
				t.Fatal("Dial succeeded")
			}
			if e.dials.Load() != 0 {
				t.Fatal("server dialed upstream")
			}
			t.Log(err)
		})
	}
}

func TestPoolReuseAndLimit(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, echo)
	var streams []*Stream
	defer func() {
		for _, s := range streams {
			s.Close()
		}
	}()
	for range 100 {
		st, err := e.dial(t.Context(), b.addr)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	if n := e.tcpDial.Load(); n != 1 {
		t.Fatalf("100 streams used %d connections, want 1", n)
	}
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	streams = append(streams, st)
	if n := e.tcpDial.Load(); n != 2 {
		t.Fatalf("101 streams used %d connections, want 2", n)
	}
	// Closing a stream frees its slot on the first connection.
	streams[0].Close()
	st, err = e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	streams = append(streams, st)
	if n := e.tcpDial.Load(); n != 2 {
		t.Fatalf("after a slot freed: %d connections, want 2", n)
	}
	// A different source IP is a different pool key.
	st, err = e.cli.Dial(t.Context(), DialRequest{Src: idClient, Dst: idServer, SrcAddr: netip.MustParseAddrPort("127.0.0.2:1"), HBONEAddr: e.hbone, Authority: b.addr})
	if err != nil {
		t.Fatal(err)
	}
	streams = append(streams, st)
	if n := e.tcpDial.Load(); n != 3 {
		t.Fatalf("new source IP: %d connections, want 3", n)
	}
}

func TestOneDialPerKey(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, echo)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	streams := make(chan *Stream, 50)
	for range 50 {
		wg.Go(func() {
			st, err := e.dial(t.Context(), b.addr)
			if err != nil {
				errs <- err
				return
			}
			streams <- st
		})
	}
	wg.Wait()
	close(errs)
	close(streams)
	for err := range errs {
		t.Error(err)
	}
	for st := range streams {
		st.Close()
	}
	if n := e.tcpDial.Load(); n != 1 {
		t.Fatalf("50 concurrent dials opened %d connections, want 1", n)
	}
}

func TestReauthorize(t *testing.T) {
	var mu sync.Mutex
	allowed := true
	policy := func(r Request) error {
		mu.Lock()
		defer mu.Unlock()
		if !allowed {
			return errors.New("revoked")
		}
		return nil
	}
	e := newEnv(t, func(s *ServerConfig, _ *ClientConfig) {
		s.Authorizer = AuthorizerFunc(func(_ context.Context, r Request) error { return policy(r) })
	})
	b := newBackend(t, echo)
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Write([]byte("x"))
	io.ReadFull(st, make([]byte, 1))
	conns := e.srv.Connections()
	if len(conns) != 1 || conns[0].SrcIdentity != idClient || conns[0].Dst != b.addr || conns[0].BytesReceived != 1 {
		t.Fatalf("Connections() = %+v", conns)
	}
	if n := e.srv.Reauthorize(policy); n != 0 {
		t.Fatalf("Reauthorize closed %d connections under the same policy", n)
	}
	mu.Lock()
	allowed = false
	mu.Unlock()
	if n := e.srv.Reauthorize(policy); n != 1 {
		t.Fatalf("Reauthorize closed %d, want 1", n)
	}
	if _, err := io.ReadAll(st); err == nil {
		t.Fatal("stream still readable after its connection was revoked")
	}
}

// TestLargeTransfer moves 48 MiB each way at once, beyond every window, and
// checks both checksums.
func TestLargeTransfer(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, echo)
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const size = 48 << 20
	src := rand.NewChaCha8([32]byte{1})
	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 100_003)
		for n := 0; n < size; {
			k := min(len(buf), size-n)
			src.Read(buf[:k])
			sent.Write(buf[:k])
			if _, err := st.Write(buf[:k]); err != nil {
				errc <- err
				return
			}
			n += k
		}
		errc <- st.CloseWrite()
	}()
	got := sha256.New()
	n, err := io.Copy(got, st)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Fatalf("echoed %d bytes, checksum match %v", n, bytes.Equal(got.Sum(nil), sent.Sum(nil)))
	}
}

// TestSlowReaderDoesNotBlockOthers: a stream whose reader stops must not
// stall another stream on the same connection.
func TestSlowReaderDoesNotBlockOthers(t *testing.T) {
	e := newEnv(t)
	flood := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	b := newBackend(t, echo)
	slow, err := e.dial(t.Context(), flood.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	// The flood fills the slow stream's whole window (never read).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		slow.c.mu.Lock()
		held := slow.recv.n
		slow.c.mu.Unlock()
		if held >= streamWindow {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slow stream holds %d bytes, never its whole %d-byte window", held, streamWindow)
		}
	}
	fast, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	if e.tcpDial.Load() != 1 {
		t.Fatal("streams not on one connection")
	}
	msg := bytes.Repeat([]byte("z"), 1<<20)
	go fast.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(fast, got); err != nil {
		t.Fatal(err)
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, echo)
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Write([]byte("x"))
	io.ReadFull(st, make([]byte, 1))
	e.cancel()
	if err := <-e.done; err != nil {
		t.Fatal(err)
	}
	e.cancel = nil
	e.cli.Close()
	if _, err := st.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Fatalf("read on a stream of a stopped server: %v", err)
	}
	if len(e.srv.Connections()) != 0 {
		t.Fatal("connections left in the registry")
	}
}

func TestDrain(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, echo)
	st, err := e.dial(t.Context(), b.addr)
	if err != nil {
		t.Fatal(err)
	}
	drained := make(chan error, 1)
	go func() { drained <- e.srv.Drain(t.Context()) }()
	// The drain has begun once the client holds the server's GOAWAY.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st.c.mu.Lock()
		away := st.c.goingAway
		st.c.mu.Unlock()
		if away {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client never got the draining server's GOAWAY")
		}
	}
	// The open stream keeps working during the drain, which waits for it.
	st.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(st, buf); err != nil {
		t.Fatalf("stream during drain: %v", err)
	}
	select {
	case err := <-drained:
		t.Fatalf("Drain returned with a stream open: %v", err)
	default:
	}
	st.CloseWrite()
	io.ReadAll(st)
	st.Close()
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	// The drained connection takes no new stream and the listener is
	// closed: the next dial opens a connection, which is refused.
	if _, err := e.dial(t.Context(), b.addr); !errors.Is(err, syscall.ECONNREFUSED) || e.tcpDial.Load() != 2 {
		t.Fatalf("dial after drain: %v after %d connection(s), want a second one refused", err, e.tcpDial.Load())
	}
}

// TestConcurrentLargeWrites: streams writing large frames at once on one
// connection, mixed with small ones, arrive whole: each frame's records
// are sealed under the write lock and written after it, and the socket
// writes must keep the order crypto/tls sealed them in (a record out of
// order fails the peer's decryption and the whole connection).
func TestConcurrentLargeWrites(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, echo)
	const streams, size = 8, 6 << 20
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Go(func() {
			st, err := e.dial(t.Context(), b.addr)
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			data := make([]byte, size)
			rand.NewChaCha8([32]byte{byte(i)}).Read(data)
			go func() {
				// Sizes from a few bytes (buffered) to beyond a frame (sealed).
				for p, k := data, 1; len(p) > 0; k = k*7%300_007 + 1 {
					k = min(k, len(p))
					if _, err := st.Write(p[:k]); err != nil {
						return
					}
					p = p[k:]
				}
				st.CloseWrite()
			}()
			got, err := io.ReadAll(st)
			if err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
				return
			}
			if !bytes.Equal(got, data) {
				errs <- fmt.Errorf("stream %d: echoed %d bytes, not the %d sent", i, len(got), size)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := e.tcpDial.Load(); n != 1 {
		t.Errorf("%d HBONE connections, want the streams to share one", n)
	}
}

// TestEarlyDataWithinWindow: early data rides with the HEADERS when the
// server's window takes it; when it does not, it follows the response,
// within the window the server grants.
func TestEarlyDataWithinWindow(t *testing.T) {
	ca := certstest.NewCA(t)
	store := ca.Store(t, idClient, idServer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := NewClient(ClientConfig{TLS: func(src, want certs.Identity) (*tls.Config, error) {
		return store.ClientConfig(src, want), nil
	}}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	dial := func(early string) <-chan error {
		errc := make(chan error, 1)
		go func() {
			st, err := cli.Dial(context.Background(), DialRequest{Src: idClient, Dst: idServer,
				HBONEAddr: addrPort(ln.Addr()), Authority: netip.MustParseAddrPort("127.0.0.1:80"), Early: []byte(early)})
			if err == nil {
				t.Cleanup(func() { st.Close() })
			}
			errc <- err
		}()
		return errc
	}

	first := dial("ab")
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	tc := tls.Server(nc, store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return idServer, nil }))
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(tc, preface[:]); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	respond := func(id uint32) {
		hb.Reset()
		enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	// next returns the next HEADERS or DATA frame of a stream as a string.
	next := func() string {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				return fmt.Sprintf("HEADERS %d", f.StreamID)
			case *http2.DataFrame:
				return fmt.Sprintf("DATA %d %s", f.StreamID, f.Data())
			}
		}
	}
	// The client opens before it has the server's settings: the default
	// window takes "ab" with the HEADERS.
	if got := next(); got != "HEADERS 1" {
		t.Fatalf("first frame %q", got)
	}
	if got := next(); got != "DATA 1 ab" {
		t.Fatalf("early data: %q", got)
	}
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 4}); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && sf.IsAck() {
			break
		}
	}
	respond(1)
	if err := <-first; err != nil {
		t.Fatal(err)
	}

	// Now a stream's window is 4 bytes (2 already used by stream 1 do
	// not count): 10 bytes wait for the response and go out as the
	// window allows.
	second := dial("0123456789")
	if got := next(); got != "HEADERS 3" {
		t.Fatalf("second stream: %q", got)
	}
	respond(3)
	if got := next(); got != "DATA 3 0123" {
		t.Fatalf("within the window: %q", got)
	}
	if err := fr.WriteWindowUpdate(3, 6); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "DATA 3 456789" {
		t.Fatalf("after WINDOW_UPDATE: %q", got)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}
