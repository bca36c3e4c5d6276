package adversarial

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/internal/h2peer"
	"github.com/ferrymesh/ferry/tunnel"
)

// fuzzServer is a tunnel.Server on loopback that records what it
// authorized and dialed; upstream connections go nowhere (net.Pipe).
type fuzzServer struct {
	addr netip.AddrPort
	cert tls.Certificate

	mu         sync.Mutex
	authorized []netip.AddrPort
	dialed     []netip.AddrPort
}

func (s *fuzzServer) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authorized, s.dialed = nil, nil
}

func startFuzzServer(t testing.TB) *fuzzServer {
	t.Helper()
	ca := certstest.NewCA(t)
	server, peer := fooID("server"), fooID("remote")
	// Not ca.Store: its logger writes to t, and a *testing.F must not be
	// used once fuzzing starts.
	store, err := certs.NewStore(ca.StoreConfig(), ca.Issuer(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	sdone := make(chan error, 1)
	go func() { sdone <- store.Run(sctx) }()
	t.Cleanup(func() { scancel(); <-sdone })
	store.SetIdentities([]certs.Identity{server})
	wctx, wcancel := context.WithTimeout(sctx, time.Minute)
	defer wcancel()
	if err := store.WaitReady(wctx, server); err != nil {
		t.Fatal(err)
	}
	fs := &fuzzServer{cert: ca.Leaf(t, peer)}
	srv, err := tunnel.NewServer(tunnel.ServerConfig{
		TLS:            store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return server, nil }),
		TrustDomain:    certs.DefaultTrustDomain,
		Destinations:   tunnel.DestinationsFunc(func(ip netip.Addr) bool { return ip == serverPod }),
		CheckAuthority: true,
		Authorizer: tunnel.AuthorizerFunc(func(_ context.Context, r tunnel.Request) error {
			fs.mu.Lock()
			defer fs.mu.Unlock()
			fs.authorized = append(fs.authorized, r.Dst)
			if r.Peer != peer {
				return errors.New("wrong peer")
			}
			return nil
		}),
		Dial: func(_ context.Context, _, dst netip.AddrPort) (net.Conn, error) {
			fs.mu.Lock()
			fs.dialed = append(fs.dialed, dst)
			fs.mu.Unlock()
			a, b := net.Pipe()
			b.Close()
			return a, nil
		},
		HandshakeTimeout: 5 * time.Second, FirstStreamTimeout: 5 * time.Second,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(serverPod, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	fs.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return fs
}

// FuzzHBONERequest sends an arbitrary header block (split into HEADERS and
// CONTINUATION frames as the input says) as a request on a fresh mTLS
// connection. The server must answer within a bound without crashing, and
// a 200 must mean that exactly the authorized destination, a local one, was
// dialed.
func FuzzHBONERequest(f *testing.F) {
	enc := func(fields ...string) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		for i := 0; i+1 < len(fields); i += 2 {
			e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return b.Bytes()
	}
	good := serverPod.String() + ":8080"
	// Seeds: a valid CONNECT; method and authority abuse; duplicates;
	// forged headers; an HPACK dynamic-table reference; a truncated block.
	f.Add(enc(":method", "CONNECT", ":authority", good), uint8(0))
	f.Add(enc(":method", "CONNECT", ":authority", good, "forwarded", `for="127.0.10.3:1"`, "baggage", "k8s.namespace.name=kube-system"), uint8(3))
	f.Add(enc(":method", "GET", ":authority", good, ":path", "/", ":scheme", "https"), uint8(0))
	f.Add(enc(":method", "CONNECT", ":authority", "127.0.20.2:8080"), uint8(0))
	f.Add(enc(":method", "CONNECT", ":authority", good, ":authority", "127.0.20.2:8080"), uint8(1))
	f.Add(enc(":authority", good, ":method", "CONNECT", ":method", "GET"), uint8(0))
	f.Add(enc(":method", "CONNECT", ":authority", "[::ffff:127.0.10.2]:8080"), uint8(0))
	f.Add(enc(":method", "CONNECT", ":authority", serverPod.String()+":0"), uint8(0))
	f.Add(append(enc(":method", "CONNECT", ":authority", good, "x", "yyyy"), 0x80|62, 0x80|62), uint8(2))
	f.Add(enc(":method", "CONNECT", ":authority", good)[:5], uint8(0))
	fs := startFuzzServer(f)
	f.Fuzz(func(t *testing.T, block []byte, split uint8) {
		if len(block) > 64<<10 {
			return
		}
		fs.reset()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tc, err := dialTLS(ctx, remotePod, fs.addr, certstest.PeerConfig(fs.cert))
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer tc.Close()
		p, err := h2peer.Client(tc, bigWindow)
		if err != nil {
			t.Fatal(err)
		}
		// Split the block into 1 + split%8 fragments.
		parts := int(split%8) + 1
		size := (len(block) + parts - 1) / parts
		err = p.WriteFrames(func(fr *http2.Framer) error {
			first := block[:min(size, len(block))]
			rest := block[len(first):]
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndHeaders: len(rest) == 0}); err != nil {
				return err
			}
			for len(rest) > 0 {
				frag := rest[:min(size, len(rest))]
				rest = rest[len(frag):]
				if err := fr.WriteContinuation(1, len(rest) == 0, frag); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return // the server closed on us mid-write: acceptable
		}
		st, err := p.Status(1, 8*time.Second)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("no answer within 8s")
		}
		if st != 200 {
			return
		}
		fs.mu.Lock()
		defer fs.mu.Unlock()
		if len(fs.authorized) != 1 || len(fs.dialed) != 1 || fs.authorized[0] != fs.dialed[0] || fs.dialed[0].Addr() != serverPod {
			t.Fatalf("200 with authorized %v, dialed %v", fs.authorized, fs.dialed)
		}
		// The reference: a 200 needs a well-formed request (RFC 9113 §8.3)
		// whose single :authority is what was dialed.
		var methods, authorities []string
		regular, misplaced := false, false
		dec := hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
			switch {
			case hf.Name == ":method":
				methods = append(methods, hf.Value)
			case hf.Name == ":authority":
				authorities = append(authorities, hf.Value)
			case len(hf.Name) > 0 && hf.Name[0] != ':':
				regular = true
				return
			}
			if regular {
				misplaced = true
			}
		})
		if _, err := dec.Write(block); err != nil {
			t.Fatalf("200 for a header block that does not decode: %v", err)
		}
		if len(methods) != 1 || methods[0] != "CONNECT" || len(authorities) != 1 || misplaced ||
			!sameAddrPort(authorities[0], fs.dialed[0]) {
			t.Fatalf("200 for :method %q, :authority %q (pseudo-header after a regular one: %v); dialed %v",
				methods, authorities, misplaced, fs.dialed[0])
		}
	})
}

// sameAddrPort reports whether authority is ip:port for ap, an
// IPv4-mapped IPv6 form of ap's address included.
func sameAddrPort(authority string, ap netip.AddrPort) bool {
	a, err := netip.ParseAddrPort(authority)
	return err == nil && netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) == ap
}
