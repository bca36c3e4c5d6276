package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/internal/h2peer"
)

// The tests in this file drive header blocks at Ferry's HTTP/2 code frame by
// frame: every error in a HEADERS or CONTINUATION frame must end the
// connection with GOAWAY, since the HPACK state the two sides share is lost
// (RFC 9113 §4.3), and a stream ID is never opened twice (RFC 9113 §5.1.1).

// ioGuard bounds a raw peer's reads and writes so that a server that never
// answers fails the test instead of hanging it. It is not a timing assertion.
const ioGuard = 30 * time.Second

// framePeer is an h2peer.Peer that fails the test where a write or a wait
// fails, and bounds every wait by ioGuard.
type framePeer struct {
	*h2peer.Peer
	t *testing.T
}

func newFramePeer(t *testing.T, nc net.Conn) *framePeer {
	nc.SetDeadline(time.Now().Add(ioGuard))
	return &framePeer{Peer: h2peer.New(nc), t: t}
}

// dialFramePeer opens a raw client connection to e's server and sends the
// preface and SETTINGS.
func dialFramePeer(t *testing.T, e *env) *framePeer {
	t.Helper()
	tc, err := tls.Dial("tcp", e.hbone.String(), e.store.ClientConfig(idClient, idServer))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	p := newFramePeer(t, tc)
	p.must(p.WritePreface())
	p.must(p.WriteSettings())
	return p
}

func (p *framePeer) must(err error) {
	p.t.Helper()
	if err != nil {
		p.t.Fatal(err)
	}
}

// headers sends fields on stream id as one HEADERS frame.
func (p *framePeer) headers(id uint32, end bool, fields ...hpack.HeaderField) {
	p.t.Helper()
	p.must(p.WriteHeaders(id, end, fields...))
}

// headersBlock sends a HEADERS frame carrying block.
func (p *framePeer) headersBlock(id uint32, end, endHeaders bool, block []byte) {
	p.t.Helper()
	p.must(p.WriteHeaderBlock(id, end, endHeaders, block))
}

func (p *framePeer) continuation(id uint32, endHeaders bool, frag []byte) {
	p.t.Helper()
	p.must(p.WriteContinuation(id, endHeaders, frag))
}

func (p *framePeer) raw(typ http2.FrameType, flags http2.Flags, id uint32, payload []byte) {
	p.t.Helper()
	p.must(p.WriteRawFrame(typ, flags, id, payload))
}

func (p *framePeer) rst(id uint32, code http2.ErrCode) {
	p.t.Helper()
	p.must(p.WriteRSTStream(id, code))
}

// answer reads until the other side answers stream id: with a header
// block (its :status) or with RST_STREAM (0 and the code).
func (p *framePeer) answer(id uint32) (status int, rst http2.ErrCode) {
	p.t.Helper()
	st, err := p.Status(id, ioGuard)
	var reset h2peer.ResetError
	if errors.As(err, &reset) {
		return 0, reset.Code
	}
	if err != nil {
		p.t.Fatalf("waiting for stream %d: %v", id, err)
	}
	return st, 0
}

// waitGoAway reads until GOAWAY and returns its code.
func (p *framePeer) waitGoAway() http2.ErrCode {
	p.t.Helper()
	code, err := p.WaitGoAway(ioGuard)
	p.must(err)
	return code
}

// goAway reads until GOAWAY and then checks that the other side closes
// the connection; it returns the GOAWAY's code.
func (p *framePeer) goAway() http2.ErrCode {
	p.t.Helper()
	code := p.waitGoAway()
	if err := p.WaitClosed(ioGuard); err != nil {
		p.t.Errorf("after GOAWAY %v: %v, want the connection closed (EOF)", code, err)
	}
	p.Close()
	return code
}

// roundTrip sends msg on stream id and reads it back from an echo upstream.
func (p *framePeer) roundTrip(id uint32, msg string) {
	p.t.Helper()
	p.must(p.RoundTrip(id, []byte(msg), ioGuard))
}

// hpackInt appends v as an HPACK integer with an n-bit prefix, the bits
// above the prefix taken from first (RFC 7541 §5.1).
func hpackInt(b []byte, first byte, n uint, v uint64) []byte {
	max := uint64(1)<<n - 1
	if v < max {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(max))
	for v -= max; v >= 128; v >>= 7 {
		b = append(b, byte(v&0x7f)|0x80)
	}
	return append(b, byte(v))
}

// waitServerIdle waits until e's server holds no connection.
func waitServerIdle(t *testing.T, e *env) {
	t.Helper()
	for {
		e.srv.mu.Lock()
		n, idle := len(e.srv.conns), e.srv.idle
		e.srv.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-idle:
		case <-time.After(ioGuard):
			t.Fatalf("the server still holds %d connections", n)
		}
	}
}

func field(name, value string) hpack.HeaderField { return hpack.HeaderField{Name: name, Value: value} }

// TestServerHeaderBlockErrors: each bad header block, or a header block on
// a stream that can't take one, ends the connection with GOAWAY and the
// code RFC 9113 gives; the server then closes it, and serves a good
// CONNECT on a fresh connection.
func TestServerHeaderBlockErrors(t *testing.T) {
	b := newBackend(t, echo)
	// hold is a destination whose authorization never ends: a stream to it
	// stays open, unanswered, for as long as the connection.
	hold := netip.MustParseAddrPort("127.0.0.1:9")
	e := newEnv(t, func(s *ServerConfig, _ *ClientConfig) {
		s.MaxConcurrentStreams = 1
		s.Authorizer = AuthorizerFunc(func(ctx context.Context, r Request) error {
			if r.Dst == hold {
				<-ctx.Done()
				return ctx.Err()
			}
			return nil
		})
	})
	good := []hpack.HeaderField{field(":method", "CONNECT"), field(":authority", b.addr.String())}
	held := []hpack.HeaderField{field(":method", "CONNECT"), field(":authority", hold.String())}
	// half returns the first and second half of a good request's block.
	half := func(p *framePeer) ([]byte, []byte) {
		blk := p.Encode(good...)
		return blk[:len(blk)/2], blk[len(blk)/2:]
	}
	ran := 0
	for _, tc := range []struct {
		name string
		send func(p *framePeer)
		want http2.ErrCode
	}{
		// HPACK decoding fails (RFC 7541; RFC 9113 §4.3: COMPRESSION_ERROR).
		{"HPACK index beyond the tables", func(p *framePeer) {
			p.headersBlock(1, false, true, []byte{0x80 | 0x7e})
		}, http2.ErrCodeCompression},
		{"HPACK index 0", func(p *framePeer) {
			p.headersBlock(1, false, true, []byte{0x80})
		}, http2.ErrCodeCompression},
		{"HPACK block ends inside a field", func(p *framePeer) {
			blk := p.Encode(good...)
			p.headersBlock(1, false, true, blk[:len(blk)-3])
		}, http2.ErrCodeCompression},
		{"HPACK table size above SETTINGS_HEADER_TABLE_SIZE", func(p *framePeer) {
			p.headersBlock(1, false, true, append(hpackInt(nil, 0x20, 5, 4097), p.Encode(good...)...))
		}, http2.ErrCodeCompression},
		{"HPACK table size update after a field", func(p *framePeer) {
			p.headersBlock(1, false, true, hpackInt(p.Encode(good...), 0x20, 5, 0))
		}, http2.ErrCodeCompression},
		{"HPACK string longer than the limit", func(p *framePeer) {
			blk := append(p.Encode(good...), 0x40, 1, 'x')
			blk = hpackInt(blk, 0, 7, 20000)
			p.headersBlock(1, false, true, append(blk, "aaaa"...))
		}, http2.ErrCodeCompression},
		{"HPACK error in a CONTINUATION", func(p *framePeer) {
			first, _ := half(p)
			p.headersBlock(1, false, false, first)
			p.continuation(1, true, []byte{0x80 | 0x7e})
		}, http2.ErrCodeCompression},
		{"HPACK error in trailers", func(p *framePeer) {
			p.headers(1, false, held...)
			p.headersBlock(1, true, true, []byte{0x80 | 0x7e})
		}, http2.ErrCodeCompression},
		{"HPACK error on a stream refused for the stream limit", func(p *framePeer) {
			p.headers(1, false, held...)
			p.headersBlock(3, false, true, []byte{0x80 | 0x7e})
		}, http2.ErrCodeCompression},
		// The block decodes, to more than SETTINGS_MAX_HEADER_LIST_SIZE.
		{"header list too large", func(p *framePeer) {
			blk := p.Encode(append(good, field("x-big", strings.Repeat("a", 4000)))...)
			// The newest dynamic entry (x-big) is index 62: 4 more copies.
			p.headersBlock(1, false, true, append(blk, bytes.Repeat([]byte{0x80 | 62}, 4)...))
		}, http2.ErrCodeProtocol},
		{"header block over 16 KiB in one HEADERS frame", func(p *framePeer) {
			blk := p.Encode(good...)
			blk = append(blk, bytes.Repeat([]byte{0x80 | 2}, maxHeaderListSize)...) // :method GET, over and over
			p.headersBlock(1, false, true, blk)
		}, http2.ErrCodeEnhanceYourCalm},
		// Header blocks are contiguous (RFC 9113 §6.2, §6.10).
		{"CONTINUATION without HEADERS", func(p *framePeer) {
			p.continuation(1, true, p.Encode(good...))
		}, http2.ErrCodeProtocol},
		{"CONTINUATION after END_HEADERS", func(p *framePeer) {
			p.headers(1, false, held...)
			p.continuation(1, true, p.Encode(field("x-a", "b")))
		}, http2.ErrCodeProtocol},
		{"CONTINUATION on another stream", func(p *framePeer) {
			first, rest := half(p)
			p.headersBlock(1, false, false, first)
			p.continuation(3, true, rest)
		}, http2.ErrCodeProtocol},
		{"DATA inside a header block", func(p *framePeer) {
			first, _ := half(p)
			p.headersBlock(1, false, false, first)
			p.raw(http2.FrameData, 0, 1, []byte("x"))
		}, http2.ErrCodeProtocol},
		{"HEADERS inside a header block", func(p *framePeer) {
			first, _ := half(p)
			p.headersBlock(1, false, false, first)
			p.headers(3, false, good...)
		}, http2.ErrCodeProtocol},
		{"PING inside a header block", func(p *framePeer) {
			first, _ := half(p)
			p.headersBlock(1, false, false, first)
			p.raw(http2.FramePing, 0, 0, make([]byte, 8))
		}, http2.ErrCodeProtocol},
		{"unknown frame inside a header block", func(p *framePeer) {
			first, _ := half(p)
			p.headersBlock(1, false, false, first)
			p.raw(0xfa, 0, 1, nil)
		}, http2.ErrCodeProtocol},
		// Malformed HEADERS frames.
		{"padding longer than the frame", func(p *framePeer) {
			p.raw(http2.FrameHeaders, http2.FlagHeadersPadded|http2.FlagHeadersEndHeaders, 1, append([]byte{200}, p.Encode(good...)...))
		}, http2.ErrCodeProtocol},
		{"priority fields cut short", func(p *framePeer) {
			p.raw(http2.FrameHeaders, http2.FlagHeadersPriority|http2.FlagHeadersEndHeaders, 1, []byte{0, 0})
		}, http2.ErrCodeFrameSize},
		{"HEADERS on stream 0", func(p *framePeer) {
			p.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 0, p.Encode(good...))
		}, http2.ErrCodeProtocol},
		{"HEADERS on an even stream", func(p *framePeer) {
			p.headers(2, false, good...)
		}, http2.ErrCodeProtocol},
		// A stream ID is never opened twice, nor below one already opened
		// (RFC 9113 §5.1.1).
		{"reopen a stream the client reset", func(p *framePeer) {
			p.headers(1, false, held...)
			p.rst(1, http2.ErrCodeCancel)
			p.headers(1, false, good...)
		}, http2.ErrCodeProtocol},
		{"reopen a stream the server refused", func(p *framePeer) {
			p.headers(1, false, held...)
			p.headers(3, false, good...)
			if _, code := p.answer(3); code != http2.ErrCodeRefusedStream {
				p.t.Fatalf("stream over the limit: RST_STREAM %v, want REFUSED_STREAM", code)
			}
			p.headers(3, false, good...)
		}, http2.ErrCodeProtocol},
		{"reopen a finished stream", func(p *framePeer) {
			p.headers(1, true, field(":method", "CONNECT")) // no :authority: 400
			if st, _ := p.answer(1); st != 400 {
				p.t.Fatalf("CONNECT without :authority: status %d, want 400", st)
			}
			p.headers(1, false, good...)
		}, http2.ErrCodeProtocol},
		{"stream ID below one opened", func(p *framePeer) {
			p.headers(5, false, held...)
			p.headers(3, false, good...)
		}, http2.ErrCodeProtocol},
		// A second header block on an open stream is trailers (RFC 9113 §8.1).
		{"trailers without END_STREAM", func(p *framePeer) {
			p.headers(1, false, held...)
			p.headers(1, false, field("x-trailer", "v"))
		}, http2.ErrCodeProtocol},
		{"pseudo-header in trailers", func(p *framePeer) {
			p.headers(1, false, held...)
			p.headers(1, true, field(":method", "CONNECT"))
		}, http2.ErrCodeProtocol},
		{"HEADERS after END_STREAM", func(p *framePeer) {
			p.headers(1, true, held...)
			p.headers(1, true, field("x-trailer", "v"))
		}, http2.ErrCodeStreamClosed},
	} {
		ran++
		t.Run(tc.name, func(t *testing.T) {
			p := dialFramePeer(t, e)
			tc.send(p)
			if code := p.goAway(); code != tc.want {
				t.Errorf("GOAWAY %v, want %v", code, tc.want)
			}
			waitServerIdle(t, e)
			// A good CONNECT on a fresh connection.
			p = dialFramePeer(t, e)
			p.headers(1, false, good...)
			if st, code := p.answer(1); st != 200 {
				t.Fatalf("good CONNECT afterwards: status %d, RST_STREAM %v", st, code)
			}
			p.roundTrip(1, "still serving")
			p.Close()
			waitServerIdle(t, e)
		})
	}
	// Only the good CONNECTs reached the upstream.
	if n := e.dials.Load(); int(n) != ran {
		t.Errorf("%d upstream dials for %d good CONNECTs", n, ran)
	}
}

// TestRefusedStreamsKeepHPACKInStep: a stream the server refuses, for its
// stream limit or because the request is malformed, still has its header
// block decoded, so a later request on the connection, written against the
// dynamic table those blocks filled, is read right.
func TestRefusedStreamsKeepHPACKInStep(t *testing.T) {
	b := newBackend(t, echo)
	hold := netip.MustParseAddrPort("127.0.0.1:9")
	e := newEnv(t, func(s *ServerConfig, _ *ClientConfig) {
		s.MaxConcurrentStreams = 1
		s.Authorizer = AuthorizerFunc(func(ctx context.Context, r Request) error {
			if r.Dst == hold {
				<-ctx.Done()
				return ctx.Err()
			}
			return nil
		})
	})
	p := dialFramePeer(t, e)
	// Malformed (no :authority), refused with 400 after decoding.
	p.headers(1, true, field(":method", "CONNECT"), field("x-sync", "one"))
	if st, code := p.answer(1); st != 400 {
		t.Fatalf("CONNECT without :authority: status %d, RST_STREAM %v; want 400", st, code)
	}
	// Over the stream limit: stream 3 holds the only slot, stream 5 is
	// refused before any handler sees it.
	p.headers(3, false, field(":method", "CONNECT"), field(":authority", hold.String()))
	p.headers(5, false, field(":method", "CONNECT"), field(":authority", b.addr.String()), field("x-sync", "two"))
	if _, code := p.answer(5); code != http2.ErrCodeRefusedStream {
		t.Fatalf("stream over the limit: RST_STREAM %v, want REFUSED_STREAM", code)
	}
	p.rst(3, http2.ErrCodeCancel)
	// Every field of the next request is a reference into the dynamic table
	// the refused blocks filled. The held stream frees its slot once its
	// handler has unwound: until then the server refuses again.
	for id := uint32(7); ; id += 2 {
		blk := p.Encode(field(":method", "CONNECT"), field(":authority", b.addr.String()), field("x-sync", "one"), field("x-sync", "two"))
		if len(blk) != 4 || !bytes.Equal(blk, []byte{blk[0] | 0x80, blk[1] | 0x80, blk[2] | 0x80, blk[3] | 0x80}) {
			t.Fatalf("block %x is not four indexed fields", blk)
		}
		p.headersBlock(id, false, true, blk)
		st, code := p.answer(id)
		if code == http2.ErrCodeRefusedStream && id < 1001 {
			continue
		}
		if st != 200 {
			t.Fatalf("request written against the refused streams' table entries: status %d, RST_STREAM %v", st, code)
		}
		p.roundTrip(id, "in step")
		break
	}
}

// rawServer is a listener whose connections a test answers frame by frame,
// and a Client that dials it.
type rawServer struct {
	t     *testing.T
	ln    net.Listener
	cfg   *tls.Config
	cli   *Client
	dials atomic.Int32 // TCP connections the Client opened
}

func newRawServer(t *testing.T) *rawServer {
	t.Helper()
	ca := certstest.NewCA(t)
	store := ca.Store(t, idClient, idServer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	rs := &rawServer{t: t, ln: ln, cfg: store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return idServer, nil })}
	rs.cli, err = NewClient(ClientConfig{
		TLS: func(src, want certs.Identity) (*tls.Config, error) { return store.ClientConfig(src, want), nil },
		DialTCP: func(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			rs.dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		},
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.cli.Close() })
	return rs
}

// accept takes the Client's next connection and sends the server's SETTINGS.
func (rs *rawServer) accept() *framePeer {
	rs.t.Helper()
	nc, err := rs.ln.Accept()
	if err != nil {
		rs.t.Fatal(err)
	}
	tc := tls.Server(nc, rs.cfg)
	rs.t.Cleanup(func() { tc.Close() })
	p := newFramePeer(rs.t, tc)
	p.must(p.ReadPreface())
	p.must(p.WriteSettings())
	return p
}

type dialResult struct {
	st  *Stream
	err error
}

// dial runs Client.Dial on a goroutine of its own; a stream it returns is
// closed when the test ends.
func (rs *rawServer) dial(ctx context.Context) <-chan dialResult {
	res := make(chan dialResult, 1)
	go func() {
		st, err := rs.cli.Dial(ctx, DialRequest{Src: idClient, Dst: idServer,
			HBONEAddr: addrPort(rs.ln.Addr()), Authority: netip.MustParseAddrPort("127.0.0.1:80")})
		if err == nil {
			rs.t.Cleanup(func() { st.Close() })
		}
		res <- dialResult{st, err}
	}()
	return res
}

// waitIdle waits until the Client's pool holds no connection.
func (rs *rawServer) waitIdle() {
	rs.t.Helper()
	deadline := time.Now().Add(ioGuard)
	for rs.cli.Conns() != 0 {
		if time.Now().After(deadline) {
			rs.t.Fatalf("the client still holds %d connections", rs.cli.Conns())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// request reads until the client opens a stream and returns its ID.
func (p *framePeer) request() uint32 {
	p.t.Helper()
	ev, err := p.WaitHeaders(ioGuard)
	if err != nil {
		p.t.Fatalf("waiting for a request: %v", err)
	}
	return ev.Stream
}

// reset reads until the client resets stream id.
func (p *framePeer) reset(id uint32) http2.ErrCode {
	p.t.Helper()
	code, err := p.WaitReset(id, ioGuard)
	p.must(err)
	return code
}

// TestClientHeaderBlockErrors: the client decodes response header blocks
// under the same rules: each bad one ends the connection with GOAWAY, the
// client closes it and drops it from its pool, and the next Dial works on
// a fresh connection. (Each case's server side closes when it ends, which
// empties the pool for the next.)
func TestClientHeaderBlockErrors(t *testing.T) {
	rs := newRawServer(t)
	ok := field(":status", "200")
	for _, tc := range []struct {
		name string
		send func(p *framePeer, id uint32)
		want http2.ErrCode
	}{
		{"HPACK error in the response", func(p *framePeer, id uint32) {
			p.headersBlock(id, false, true, []byte{0x80 | 0x7e})
		}, http2.ErrCodeCompression},
		{"HPACK error in a CONTINUATION", func(p *framePeer, id uint32) {
			p.headersBlock(id, false, false, p.Encode(ok))
			p.continuation(id, true, []byte{0x80 | 0x7e})
		}, http2.ErrCodeCompression},
		{"response header list too large", func(p *framePeer, id uint32) {
			blk := p.Encode(ok, field("x-big", strings.Repeat("a", 4000)))
			p.headersBlock(id, false, true, append(blk, bytes.Repeat([]byte{0x80 | 62}, 4)...))
		}, http2.ErrCodeProtocol},
		{"CONTINUATION on another stream", func(p *framePeer, id uint32) {
			blk := p.Encode(ok, field("x-a", "b"))
			p.headersBlock(id, false, false, blk[:1])
			p.continuation(id+2, true, blk[1:])
		}, http2.ErrCodeProtocol},
		{"DATA inside the response header block", func(p *framePeer, id uint32) {
			blk := p.Encode(ok, field("x-a", "b"))
			p.headersBlock(id, false, false, blk[:1])
			p.raw(http2.FrameData, 0, id, []byte("x"))
		}, http2.ErrCodeProtocol},
		{"padding longer than the frame", func(p *framePeer, id uint32) {
			p.raw(http2.FrameHeaders, http2.FlagHeadersPadded|http2.FlagHeadersEndHeaders, id, append([]byte{200}, p.Encode(ok)...))
		}, http2.ErrCodeProtocol},
		{"response on a stream the client never opened", func(p *framePeer, id uint32) {
			p.headers(id+2, false, ok)
		}, http2.ErrCodeProtocol},
		{"response on an even stream", func(p *framePeer, id uint32) {
			p.headers(2, false, ok)
		}, http2.ErrCodeProtocol},
		{"second header block without END_STREAM", func(p *framePeer, id uint32) {
			p.headers(id, false, ok)
			p.headers(id, false, field("x-a", "b"))
		}, http2.ErrCodeProtocol},
		{"pseudo-header in trailers", func(p *framePeer, id uint32) {
			p.headers(id, false, ok)
			p.headers(id, true, ok)
		}, http2.ErrCodeProtocol},
		{"HEADERS after END_STREAM", func(p *framePeer, id uint32) {
			p.headers(id, true, ok)
			p.headers(id, true, field("x-a", "b"))
		}, http2.ErrCodeStreamClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs.t = t
			rs.waitIdle() // the last case's connection is gone
			res := rs.dial(t.Context())
			p := rs.accept()
			id := p.request()
			tc.send(p, id)
			if code := p.goAway(); code != tc.want {
				t.Errorf("GOAWAY %v, want %v", code, tc.want)
			}
			<-res // an error, or a stream the connection's end fails
			rs.waitIdle()
			// A good CONNECT on a fresh connection.
			before := rs.dials.Load()
			res = rs.dial(t.Context())
			p = rs.accept()
			p.headers(p.request(), false, ok)
			if r := <-res; r.err != nil {
				t.Fatalf("good CONNECT afterwards: %v", r.err)
			}
			if n := rs.dials.Load() - before; n != 1 {
				t.Fatalf("%d new connections for the good CONNECT, want 1", n)
			}
		})
	}
}

// TestClientDecodesAbandonedResponses: a response to a stream the client
// already reset is still decoded, so the next response, written against
// the dynamic table it filled, is read right.
func TestClientDecodesAbandonedResponses(t *testing.T) {
	rs := newRawServer(t)
	ctx, cancel := context.WithCancel(t.Context())
	first := rs.dial(ctx)
	p := rs.accept()
	id1 := p.request()
	cancel()
	if r := <-first; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("abandoned Dial: %v", r.err)
	}
	if code := p.reset(id1); code != http2.ErrCodeCancel {
		t.Fatalf("abandoned stream: RST_STREAM %v, want CANCEL", code)
	}
	// The answer arrives late, and adds x-sync to the dynamic table.
	p.headers(id1, false, field(":status", "200"), field("x-sync", "late"))

	second := rs.dial(t.Context())
	id2 := p.request()
	if id2 <= id1 {
		t.Fatalf("second stream %d after stream %d", id2, id1)
	}
	blk := p.Encode(field(":status", "200"), field("x-sync", "late"))
	if len(blk) != 2 || blk[1]&0x80 == 0 {
		t.Fatalf("block %x does not refer to the dynamic table", blk)
	}
	p.headersBlock(id2, false, true, blk)
	// Decoded against an empty table, the reference is a compression
	// error, which fails the connection and this Dial.
	if r := <-second; r.err != nil {
		t.Fatalf("Dial after the abandoned stream's response: %v", r.err)
	}
}

// TestClientNeverReusesStreamIDs: a stream the server refused, one the
// client reset and one that finished each leave their ID behind; the next
// stream on the connection takes a higher one.
func TestClientNeverReusesStreamIDs(t *testing.T) {
	rs := newRawServer(t)
	ok := field(":status", "200")
	res := rs.dial(t.Context())
	p := rs.accept()
	var ids []uint32
	next := func() uint32 {
		t.Helper()
		id := p.request()
		if len(ids) > 0 && id <= ids[len(ids)-1] {
			t.Fatalf("stream %d after streams %v", id, ids)
		}
		ids = append(ids, id)
		return id
	}
	// Refused: the Dial retries on the same connection, with a new ID.
	p.rst(next(), http2.ErrCodeRefusedStream)
	p.headers(next(), false, ok)
	r := <-res
	if r.err != nil {
		t.Fatalf("Dial retried after REFUSED_STREAM: %v", r.err)
	}
	// Finished: the client closes it.
	r.st.Close()
	// Reset by the client: its Dial gives up.
	ctx, cancel := context.WithCancel(t.Context())
	res = rs.dial(ctx)
	id := next()
	cancel()
	<-res
	if code := p.reset(id); code != http2.ErrCodeCancel {
		t.Fatalf("abandoned stream: RST_STREAM %v, want CANCEL", code)
	}
	res = rs.dial(t.Context())
	p.headers(next(), false, ok)
	if r := <-res; r.err != nil {
		t.Fatal(r.err)
	}
	if n := rs.dials.Load(); n != 1 {
		t.Fatalf("%d connections, want every stream on one", n)
	}
}

// TestClientStreamIDsRunOut: a connection that has used the last stream
// ID takes no more streams; the pool dials a fresh one, and the spent one
// closes once its streams end.
func TestClientStreamIDsRunOut(t *testing.T) {
	e := newEnv(t)
	b := newBackend(t, echo)
	key := poolKey{src: idClient, dst: idServer, srcIP: netip.MustParseAddr("127.0.0.1"), hbone: e.hbone}
	c, err := e.cli.conn(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.nextID = maxStreamID - 2
	c.mu.Unlock()
	c.unreserve()
	var streams []*Stream
	for range 3 {
		st, err := e.dial(t.Context(), b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		streams = append(streams, st)
	}
	if streams[0].c != c || streams[0].id != maxStreamID-2 || streams[1].c != c || streams[1].id != maxStreamID {
		t.Fatalf("the first two streams are %d and %d, want %d and %d on the first connection",
			streams[0].id, streams[1].id, maxStreamID-2, maxStreamID)
	}
	if streams[2].c == c || e.tcpDial.Load() != 2 {
		t.Fatalf("third stream: %d connections dialed, want a second one", e.tcpDial.Load())
	}
	// Both streams still work.
	for _, st := range streams {
		if _, err := st.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		var buf [1]byte
		if _, err := io.ReadFull(st, buf[:]); err != nil {
			t.Fatal(err)
		}
	}
	streams[0].Close()
	streams[1].Close()
	select {
	case <-c.done:
	case <-time.After(ioGuard):
		t.Fatal("the connection without stream IDs left did not close when idle")
	}
}
