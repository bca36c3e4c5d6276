package tunnel

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/tunnel/internal/sockio"
)

// DefaultClientIdleTimeout is how long a pooled connection may carry no
// stream before the client closes it.
const DefaultClientIdleTimeout = 5 * time.Minute

// ClientConfig configures the HBONE client pool. Zero durations mean the
// package defaults.
type ClientConfig struct {
	// TLS returns the client configuration presenting src's certificate
	// and accepting only a server that proves want (required;
	// certs.Store.ClientConfig). The client enforces TLS 1.3 and ALPN h2
	// on a copy and checks the server's identity again after the handshake.
	TLS func(src, want certs.Identity) (*tls.Config, error)
	// DialTCP opens the TCP connection to dst from src; nil uses a plain
	// net.Dialer that does not bind src.
	DialTCP func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error)
	// MaxStreamsPerConn caps streams on one connection (default 100);
	// beyond it the pool opens another connection.
	MaxStreamsPerConn int
	// IdleTimeout closes a pooled connection without streams.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds TCP connect, TLS and the HTTP/2 preface.
	HandshakeTimeout time.Duration
	// KeepaliveInterval and KeepaliveTimeout as in ServerConfig.
	KeepaliveInterval, KeepaliveTimeout time.Duration
}

// DialRequest is one tunnelled connection to open.
type DialRequest struct {
	// Src is the identity to present; Dst the identity the server must prove.
	Src, Dst certs.Identity
	// SrcAddr is the client pod's address: its IP is the TCP source of the
	// HBONE connection and the pair goes in the Forwarded header.
	SrcAddr netip.AddrPort
	// HBONEAddr is the server to dial, normally <destination pod IP>:15008.
	HBONEAddr netip.AddrPort
	// Authority is the original destination, sent as :authority.
	Authority netip.AddrPort
	// Baggage and TraceParent are sent as headers when set; a random
	// traceparent is generated when TraceParent is empty.
	Baggage, TraceParent string
	// Early is what the client already sent: it becomes the stream's first
	// DATA frame, written with the HEADERS when the server's flow-control
	// windows allow (one write and one frame fewer per connection), else
	// after the response. Dial is done with it when it returns.
	Early []byte
}

// StatusError is returned by Client.Dial when the server answers the
// CONNECT with a status other than 200.
type StatusError struct {
	Code int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("tunnel: HBONE CONNECT answered %d", e.Code)
}

// poolKey identifies connections that may share streams.
type poolKey struct {
	src, dst certs.Identity
	srcIP    netip.Addr
	hbone    netip.AddrPort
}

type poolEntry struct {
	conns   []*h2conn
	dialing chan struct{} // non-nil while one dial for this key runs
}

// Client opens HBONE streams over pooled connections: one pool per (source
// identity, source IP, destination identity, HBONE address), at most
// MaxStreamsPerConn streams per connection, one dial per key at a time.
// Its methods are safe for concurrent use. Close it to release the pool.
type Client struct {
	cfg ClientConfig
	log *slog.Logger

	mu     sync.Mutex
	closed bool
	pools  map[poolKey]*poolEntry
	wg     sync.WaitGroup
}

// NewClient validates cfg and returns a client. It starts nothing.
func NewClient(cfg ClientConfig, log *slog.Logger) (*Client, error) {
	if cfg.TLS == nil {
		return nil, errors.New("tunnel: client needs a TLS function")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.DialTCP == nil {
		cfg.DialTCP = func(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		}
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = defaultMaxStreams
	}
	setDefault(&cfg.IdleTimeout, DefaultClientIdleTimeout)
	setDefault(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	setDefault(&cfg.KeepaliveInterval, DefaultKeepalive)
	setDefault(&cfg.KeepaliveTimeout, DefaultKeepaliveTimeout)
	return &Client{cfg: cfg, log: log, pools: make(map[poolKey]*poolEntry)}, nil
}

// Dial opens a CONNECT stream to req.Authority through the HBONE server at
// req.HBONEAddr. ctx bounds the dial and the wait for the response, not the
// stream's life. A non-200 answer is a *StatusError.
func (cl *Client) Dial(ctx context.Context, req DialRequest) (*Stream, error) {
	if !req.Authority.IsValid() || !req.HBONEAddr.IsValid() {
		return nil, errors.New("tunnel: dial needs an authority and an HBONE address")
	}
	key := poolKey{src: req.Src, dst: req.Dst, srcIP: req.SrcAddr.Addr(), hbone: req.HBONEAddr}
	fields := requestHeaders(req)
	for attempt := 0; ; attempt++ {
		c, err := cl.conn(ctx, key)
		if err != nil {
			return nil, err
		}
		st, sent, err := c.openStream(fields, req.Early)
		if err == nil {
			err = st.awaitResponse(ctx)
		}
		if err == nil && !sent && len(req.Early) > 0 {
			err = st.writeEarly(ctx, req.Early)
		}
		if errors.Is(err, errRefused) && attempt < 5 {
			if st != nil {
				st.Close()
			}
			// The peer did not process the stream (RFC 9113 §8.7): a
			// GOAWAY, or a stream the client has closed still counted
			// by the server until its handler ends. Retry after a
			// moment rather than at once into the same refusal.
			select {
			case <-time.After(time.Duration(1<<attempt) * time.Millisecond):
			case <-ctx.Done():
				return nil, fmt.Errorf("tunnel: CONNECT %s via %s: %w", req.Authority, req.HBONEAddr, err)
			}
			continue
		}
		if err != nil {
			if st != nil {
				st.abort()
			}
			return nil, fmt.Errorf("tunnel: CONNECT %s via %s: %w", req.Authority, req.HBONEAddr, err)
		}
		return st, nil
	}
}

// awaitResponse waits for the response headers of a client stream.
func (s *Stream) awaitResponse(ctx context.Context) error {
	select {
	case <-s.respReady:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.status == 0 {
		if s.err != nil {
			return s.err
		}
		return errConnClosed
	}
	if s.status != 200 {
		return &StatusError{Code: int(s.status)}
	}
	return nil
}

// writeEarly writes early data that could not go with the HEADERS, within
// ctx's deadline.
func (s *Stream) writeEarly(ctx context.Context, early []byte) error {
	if d, ok := ctx.Deadline(); ok {
		s.SetWriteDeadline(d)
		defer s.SetWriteDeadline(time.Time{})
	}
	_, err := s.Write(early)
	return err
}

func requestHeaders(req DialRequest) []hpack.HeaderField {
	tp := req.TraceParent
	if tp == "" {
		var b [24]byte
		rand.Read(b[:])
		tp = "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-00"
	}
	f := []hpack.HeaderField{
		{Name: ":method", Value: "CONNECT"},
		{Name: ":authority", Value: req.Authority.String()},
	}
	if req.SrcAddr.IsValid() {
		f = append(f, hpack.HeaderField{Name: "forwarded", Value: `for="` + req.SrcAddr.String() + `"`})
	}
	if req.Baggage != "" {
		f = append(f, hpack.HeaderField{Name: "baggage", Value: req.Baggage})
	}
	return append(f, hpack.HeaderField{Name: "traceparent", Value: tp})
}

// conn returns a pooled connection with one stream slot reserved, dialing
// a new one when none has room.
func (cl *Client) conn(ctx context.Context, key poolKey) (*h2conn, error) {
	for {
		cl.mu.Lock()
		if cl.closed {
			cl.mu.Unlock()
			return nil, errors.New("tunnel: client closed")
		}
		e := cl.pools[key]
		if e == nil {
			e = &poolEntry{}
			cl.pools[key] = e
		}
		for _, c := range e.conns {
			if c.tryReserve() {
				cl.mu.Unlock()
				return c, nil
			}
		}
		if ch := e.dialing; ch != nil {
			cl.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		e.dialing = ch
		cl.mu.Unlock()

		c, err := cl.dialConn(ctx, key)
		cl.mu.Lock()
		e.dialing = nil
		close(ch)
		if err != nil {
			if len(e.conns) == 0 && cl.pools[key] == e {
				delete(cl.pools, key)
			}
			cl.mu.Unlock()
			return nil, err
		}
		if cl.closed {
			cl.mu.Unlock()
			c.close(errConnClosed)
			return nil, errors.New("tunnel: client closed")
		}
		e.conns = append(e.conns, c)
		ok := c.tryReserve()
		cl.wg.Go(func() {
			err := c.run()
			cl.log.Debug("tunnel: HBONE client connection closed", "dst", key.hbone, "err", err)
			cl.forget(key, c)
		})
		cl.mu.Unlock()
		if ok {
			return c, nil
		}
	}
}

// forget drops a closed connection from its pool.
func (cl *Client) forget(key poolKey, c *h2conn) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	e := cl.pools[key]
	if e == nil {
		return
	}
	e.conns = slices.DeleteFunc(e.conns, func(x *h2conn) bool { return x == c })
	if len(e.conns) == 0 && e.dialing == nil {
		delete(cl.pools, key)
	}
}

// dialConn opens, secures and starts one HTTP/2 connection.
func (cl *Client) dialConn(ctx context.Context, key poolKey) (*h2conn, error) {
	tcfg, err := cl.cfg.TLS(key.src, key.dst)
	if err != nil {
		return nil, fmt.Errorf("tunnel: TLS config for %s: %w", key.src, err)
	}
	tcfg = tcfg.Clone()
	tcfg.MinVersion = tls.VersionTLS13
	tcfg.NextProtos = []string{"h2"}
	dctx, cancel := context.WithTimeout(ctx, cl.cfg.HandshakeTimeout)
	defer cancel()
	nc, err := cl.cfg.DialTCP(dctx, key.srcIP, key.hbone)
	if err != nil {
		return nil, fmt.Errorf("tunnel: dial %s: %w", key.hbone, err)
	}
	records := sockio.NewBatcher(nc)
	tc := tls.Client(records, tcfg)
	if err := tc.HandshakeContext(dctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("tunnel: TLS handshake with %s: %w", key.hbone, err)
	}
	st := tc.ConnectionState()
	if st.NegotiatedProtocol != "h2" {
		nc.Close()
		return nil, fmt.Errorf("tunnel: %s did not negotiate h2", key.hbone)
	}
	if !key.dst.IsZero() && !hasIdentity(st, key.dst) {
		nc.Close()
		return nil, fmt.Errorf("tunnel: %s does not prove identity %s", key.hbone, key.dst)
	}
	c := newH2Conn(tc, connOptions{
		client:           true,
		maxStreams:       cl.cfg.MaxStreamsPerConn,
		keepalive:        max(cl.cfg.KeepaliveInterval, 0),
		keepaliveTimeout: cl.cfg.KeepaliveTimeout,
		idleTimeout:      cl.cfg.IdleTimeout,
		log:              cl.log,
		records:          records,
	})
	if d, ok := dctx.Deadline(); ok {
		nc.SetWriteDeadline(d)
	}
	err = c.handshake()
	nc.SetWriteDeadline(time.Time{})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("tunnel: HTTP/2 preface to %s: %w", key.hbone, err)
	}
	return c, nil
}

// hasIdentity reports whether the peer leaf carries want as a URI SAN.
func hasIdentity(st tls.ConnectionState, want certs.Identity) bool {
	if len(st.PeerCertificates) == 0 {
		return false
	}
	for _, u := range st.PeerCertificates[0].URIs {
		if id, err := certs.ParseIdentity(u.String()); err == nil && id == want {
			return true
		}
	}
	return false
}

// Close closes every pooled connection, failing their streams, and waits
// for the pool's goroutines. Dial fails afterwards.
func (cl *Client) Close() error {
	cl.mu.Lock()
	cl.closed = true
	var all []*h2conn
	for _, e := range cl.pools {
		all = append(all, e.conns...)
	}
	cl.mu.Unlock()
	for _, c := range all {
		c.close(errConnClosed)
	}
	cl.wg.Wait()
	return nil
}

// Drain sends GOAWAY on every pooled connection so each closes once its
// streams end, and waits for that or for ctx.
func (cl *Client) Drain(ctx context.Context) error {
	cl.mu.Lock()
	cl.closed = true
	var all []*h2conn
	for _, e := range cl.pools {
		all = append(all, e.conns...)
	}
	cl.mu.Unlock()
	for _, c := range all {
		c.goAway()
	}
	for _, c := range all {
		select {
		case <-c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Conns reports how many HTTP/2 connections the pool holds (for tests and
// the admin endpoint).
func (cl *Client) Conns() int {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	n := 0
	for _, e := range cl.pools {
		n += len(e.conns)
	}
	return n
}
