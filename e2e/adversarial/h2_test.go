package adversarial

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2peer is a hand-driven HTTP/2 client over TLS: it writes exactly the
// frames a test asks for, in any order, legal or not. Writes are safe from
// several goroutines; reads belong to one goroutine.
type h2peer struct {
	conn net.Conn
	fr   *http2.Framer

	wmu  sync.Mutex
	henc *hpack.Encoder
	hbuf bytes.Buffer

	hdec     *hpack.Decoder
	settings []http2.Setting // the server's first SETTINGS, once read
}

// errGoAway reports a GOAWAY from the server.
type errGoAway struct{ code http2.ErrCode }

func (e errGoAway) Error() string { return "GOAWAY " + e.code.String() }

// errReset reports an RST_STREAM from the server.
type errReset struct{ code http2.ErrCode }

func (e errReset) Error() string { return "RST_STREAM " + e.code.String() }

// dialTLS opens TCP to addr, optionally from a chosen local address, and
// runs the TLS handshake with cfg.
func dialTLS(ctx context.Context, src netip.Addr, addr netip.AddrPort, cfg *tls.Config) (*tls.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	nc, err := d.DialContext(ctx, "tcp4", addr.String())
	if err != nil {
		return nil, err
	}
	tc := tls.Client(nc, cfg)
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		nc.Close()
		return nil, err
	}
	return tc, nil
}

// newH2Peer sends the client preface and SETTINGS on c (extra settings
// appended; a large initial window unless overridden).
func newH2Peer(c net.Conn, settings ...http2.Setting) (*h2peer, error) {
	p := &h2peer{conn: c, fr: http2.NewFramer(c, c)}
	p.henc = hpack.NewEncoder(&p.hbuf)
	p.hdec = hpack.NewDecoder(64<<10, nil)
	p.fr.SetMaxReadFrameSize(1 << 20)
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		return nil, err
	}
	if len(settings) == 0 {
		settings = []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: 4 << 20}}
	}
	if err := p.fr.WriteSettings(settings...); err != nil {
		return nil, err
	}
	return p, nil
}

// dialH2 is dialTLS from src then newH2Peer.
func dialH2(ctx context.Context, src netip.Addr, addr netip.AddrPort, cfg *tls.Config) (*h2peer, error) {
	tc, err := dialTLS(ctx, src, addr, cfg)
	if err != nil {
		return nil, err
	}
	p, err := newH2Peer(tc)
	if err != nil {
		tc.Close()
		return nil, err
	}
	return p, nil
}

func (p *h2peer) Close() error { return p.conn.Close() }

// block HPACK-encodes fields. Callers hold wmu.
func (p *h2peer) blockLocked(fields []hpack.HeaderField) []byte {
	p.hbuf.Reset()
	for _, f := range fields {
		p.henc.WriteField(f)
	}
	return bytes.Clone(p.hbuf.Bytes())
}

// connectFields are a CONNECT request's pseudo-headers plus extra.
func connectFields(authority string, extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: authority}}, extra...)
}

// request sends one HEADERS frame (END_HEADERS) with fields on stream id.
func (p *h2peer) request(id uint32, fields []hpack.HeaderField, endStream bool) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.blockLocked(fields), EndHeaders: true, EndStream: endStream})
}

// connect sends CONNECT authority on stream id.
func (p *h2peer) connect(id uint32, authority string, extra ...hpack.HeaderField) error {
	return p.request(id, connectFields(authority, extra...), false)
}

// write runs f with the write lock held.
func (p *h2peer) write(f func(fr *http2.Framer) error) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return f(p.fr)
}

// event is what the server sent on one stream, or on the connection.
type event struct {
	stream uint32
	status int    // HEADERS
	data   []byte // DATA (a copy)
	end    bool   // END_STREAM
	err    error  // errReset, errGoAway, or a read error (stream 0)
	// settings marks the server's first SETTINGS (stream 0, no error).
	settings bool
}

// next reads frames until one concerns a stream or the connection as a
// whole (GOAWAY, read error), handling SETTINGS and PING itself. It grants
// flow-control credit for DATA unless starve is set.
func (p *h2peer) next(deadline time.Time, starve bool) event {
	p.conn.SetReadDeadline(deadline)
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			return event{err: err}
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if p.settings == nil {
					f.ForeachSetting(func(s http2.Setting) error { p.settings = append(p.settings, s); return nil })
					if p.settings == nil {
						p.settings = []http2.Setting{}
					}
					p.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
					return event{settings: true}
				}
				p.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				p.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		case *http2.HeadersFrame:
			var status int
			p.hdec.SetEmitFunc(func(hf hpack.HeaderField) {
				if hf.Name == ":status" {
					status, _ = strconv.Atoi(hf.Value)
				}
			})
			if _, err := p.hdec.Write(f.HeaderBlockFragment()); err != nil {
				return event{err: err}
			}
			return event{stream: f.StreamID, status: status, end: f.StreamEnded()}
		case *http2.DataFrame:
			d := bytes.Clone(f.Data())
			if n := uint32(len(d)); n > 0 && !starve {
				p.write(func(fr *http2.Framer) error {
					fr.WriteWindowUpdate(0, n)
					return fr.WriteWindowUpdate(f.StreamID, n)
				})
			}
			return event{stream: f.StreamID, data: d, end: f.StreamEnded()}
		case *http2.RSTStreamFrame:
			return event{stream: f.StreamID, err: errReset{f.ErrCode}}
		case *http2.GoAwayFrame:
			return event{err: errGoAway{f.ErrCode}}
		}
	}
}

// status waits for the response status of stream id, skipping events of
// other streams.
func (p *h2peer) status(id uint32, d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	for {
		ev := p.next(deadline, false)
		if ev.err != nil && (ev.stream == 0 || ev.stream == id) {
			return 0, ev.err
		}
		if ev.stream == id && ev.status != 0 {
			return ev.status, nil
		}
	}
}

// roundTrip sends msg as DATA on stream id and reads it back (an echo
// upstream), failing on anything else that concerns the stream.
func (p *h2peer) roundTrip(id uint32, msg []byte, d time.Duration) error {
	if err := p.write(func(fr *http2.Framer) error { return fr.WriteData(id, false, msg) }); err != nil {
		return err
	}
	deadline := time.Now().Add(d)
	var got []byte
	for len(got) < len(msg) {
		ev := p.next(deadline, false)
		if ev.err != nil && (ev.stream == 0 || ev.stream == id) {
			return ev.err
		}
		if ev.stream == id {
			got = append(got, ev.data...)
			if ev.end {
				break
			}
		}
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo: got %q, want %q", got, msg)
	}
	return nil
}

// victim is a well-behaved tenant: an HBONE stream to an echo server that
// must keep working while attacks run.
type victim struct {
	p  *h2peer
	id uint32
	n  int
}

func newVictim(ctx context.Context, a *agent, echo *echoServer) (*victim, error) {
	p, err := dialH2(ctx, remotePod, a.hbone, a.peerTLS(a.leaf(fooID("remote"))))
	if err != nil {
		return nil, err
	}
	if err := p.connect(1, echo.addr.String()); err != nil {
		p.Close()
		return nil, err
	}
	if st, err := p.status(1, 10*time.Second); err != nil || st != 200 {
		p.Close()
		return nil, fmt.Errorf("victim CONNECT: status %d, %v", st, err)
	}
	return &victim{p: p, id: 1}, nil
}

// check sends one message through the victim's stream and waits for it.
func (v *victim) check() error {
	v.n++
	return v.p.roundTrip(v.id, fmt.Appendf(nil, "ping %d", v.n), 10*time.Second)
}
