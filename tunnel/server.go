package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/tunnel/internal/sockio"
)

// Request is a connection awaiting an authorization decision.
type Request struct {
	// Peer is the client's verified SPIFFE identity; zero when Plaintext.
	Peer certs.Identity
	// Src is the client's address as the network shows it (the TCP peer of
	// the HBONE or plaintext connection), never a header value.
	Src netip.AddrPort
	// Dst is the destination the connection asks for.
	Dst netip.AddrPort
	// Plaintext marks a connection captured without mTLS (port 15006).
	Plaintext bool
}

// Authorizer decides whether a connection may proceed. A non-nil error
// refuses it; the error text is logged and reported as the reason.
type Authorizer interface {
	Authorize(ctx context.Context, r Request) error
}

// AuthorizerFunc adapts a function to Authorizer.
type AuthorizerFunc func(ctx context.Context, r Request) error

// Authorize calls f.
func (f AuthorizerFunc) Authorize(ctx context.Context, r Request) error { return f(ctx, r) }

// Destinations says which addresses belong to workloads this node serves.
type Destinations interface {
	Local(dst netip.Addr) bool
}

// DestinationsFunc adapts a function to Destinations.
type DestinationsFunc func(dst netip.Addr) bool

// Local calls f.
func (f DestinationsFunc) Local(dst netip.Addr) bool { return f(dst) }

// DialFunc opens the upstream TCP connection from src to dst. The node
// supplies one that binds src with IP_TRANSPARENT.
type DialFunc func(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error)

// Server defaults.
const (
	DefaultHandshakeTimeout   = 10 * time.Second
	DefaultIdleTimeout        = 10 * time.Minute
	DefaultFirstStreamTimeout = 10 * time.Second
	DefaultKeepalive          = 10 * time.Second
	DefaultKeepaliveTimeout   = 20 * time.Second
	DefaultDialTimeout        = 10 * time.Second
)

// ServerConfig configures the HBONE server. Zero durations mean the
// defaults above.
type ServerConfig struct {
	// TLS is the server's TLS configuration (certs.Store.ServerConfig). It
	// must require and verify client certificates; the server enforces TLS
	// 1.3 and ALPN h2 on a copy.
	TLS *tls.Config
	// TrustDomain, when set, is checked against the client's identity in
	// addition to whatever TLS verifies.
	TrustDomain string
	// Destinations answers whether a destination is local (required).
	Destinations Destinations
	// Authorizer decides each CONNECT (required).
	Authorizer Authorizer
	// Dial opens upstream connections; nil dials plainly, without binding
	// the source address.
	Dial DialFunc
	// CheckAuthority requires the :authority IP to equal the HBONE
	// connection's local IP (the captured destination).
	CheckAuthority bool
	// Registry records open connections; nil gives the server its own.
	Registry *Registry
	// Observer sees every proxied connection; nil means none.
	Observer Observer
	// Rejected, when set, is told of every connection refused before it
	// reached the Authorizer: a failed TLS or HTTP/2 handshake (status 0) or
	// a CONNECT answered 400 or 503 by the request checks. reason is a short
	// fixed phrase, fit for a metric label.
	Rejected func(status int, reason string)
	// MaxConcurrentStreams bounds streams per connection (default 100).
	MaxConcurrentStreams int
	// HandshakeTimeout bounds the TLS handshake and HTTP/2 preface.
	HandshakeTimeout time.Duration
	// IdleTimeout closes connections that carry no stream this long.
	IdleTimeout time.Duration
	// FirstStreamTimeout closes connections that open no stream this long.
	FirstStreamTimeout time.Duration
	// KeepaliveInterval is the quiet time before a PING; KeepaliveTimeout
	// how long to wait for any frame after it. Negative disables keepalive.
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// DialTimeout bounds each upstream dial.
	DialTimeout time.Duration
}

// Server terminates HBONE: it accepts TCP connections, runs mTLS and
// HTTP/2, authorizes each CONNECT and proxies it to the local destination.
// Create it with NewServer and run it with Serve.
type Server struct {
	cfg ServerConfig
	tls *tls.Config
	log *slog.Logger
	reg *Registry

	mu        sync.Mutex
	draining  bool
	listeners map[net.Listener]struct{}
	raw       map[net.Conn]struct{} // connections still in their handshake
	conns     map[*h2conn]struct{}
	idle      chan struct{} // closed and replaced whenever conns empties
}

// NewServer validates cfg and returns a server. It starts nothing.
func NewServer(cfg ServerConfig, log *slog.Logger) (*Server, error) {
	if cfg.TLS == nil {
		return nil, errors.New("tunnel: server needs a TLS config")
	}
	if cfg.Destinations == nil || cfg.Authorizer == nil {
		return nil, errors.New("tunnel: server needs Destinations and an Authorizer")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := cfg.TLS.Clone()
	t.MinVersion = tls.VersionTLS13
	t.NextProtos = []string{"h2"}
	if t.ClientAuth < tls.RequireAnyClientCert {
		t.ClientAuth = tls.RequireAndVerifyClientCert
	}
	if cfg.Registry == nil {
		cfg.Registry = NewRegistry()
	}
	if cfg.Dial == nil {
		cfg.Dial = plainDial
	}
	setDefault(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	setDefault(&cfg.IdleTimeout, DefaultIdleTimeout)
	setDefault(&cfg.FirstStreamTimeout, DefaultFirstStreamTimeout)
	setDefault(&cfg.KeepaliveInterval, DefaultKeepalive)
	setDefault(&cfg.KeepaliveTimeout, DefaultKeepaliveTimeout)
	setDefault(&cfg.DialTimeout, DefaultDialTimeout)
	if cfg.MaxConcurrentStreams <= 0 {
		cfg.MaxConcurrentStreams = defaultMaxStreams
	}
	return &Server{
		cfg:       cfg,
		tls:       t,
		log:       log,
		reg:       cfg.Registry,
		listeners: make(map[net.Listener]struct{}),
		raw:       make(map[net.Conn]struct{}),
		conns:     make(map[*h2conn]struct{}),
		idle:      make(chan struct{}),
	}, nil
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d == 0 {
		*d = v
	}
}

func plainDial(ctx context.Context, _, dst netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", dst.String())
}

// Registry returns the server's connection registry.
func (s *Server) Registry() *Registry { return s.reg }

// Connections returns the open proxied connections.
func (s *Server) Connections() []ConnInfo { return s.reg.Connections() }

// Reauthorize closes open connections that allow now refuses and returns
// how many it closed.
func (s *Server) Reauthorize(allow func(Request) error) int { return s.reg.Reauthorize(allow) }

// Serve accepts HBONE connections on ln (plain TCP; TLS happens here) until
// ctx is done, then closes every connection. It returns nil after ctx is
// done or after Drain, once all its goroutines have exited, and an error if
// accepting fails otherwise.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	stop := onDone(ctx, func() {
		ln.Close()
		s.closeAll()
	})
	defer stop()
	var wg sync.WaitGroup
	var err error
	var delay time.Duration
accept:
	for {
		nc, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() != nil || s.isDraining() {
				break accept
			}
			var ne net.Error
			if errors.As(aerr, &ne) && ne.Timeout() || isTemporary(aerr) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("tunnel: accept", "err", aerr)
				select {
				case <-time.After(delay):
					continue
				case <-ctx.Done():
				}
				break accept
			}
			err = fmt.Errorf("tunnel: accept: %w", aerr)
			ln.Close()
			s.closeAll()
			break accept
		}
		delay = 0
		wg.Go(func() { s.serveConn(ctx, nc) })
	}
	wg.Wait()
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
	return err
}

func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// Drain stops accepting, sends GOAWAY on every connection and waits until
// their streams finish or ctx is done. Serve's context still decides when
// the remaining connections are cut.
func (s *Server) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.goAway()
	}
	for nc := range s.raw {
		nc.Close()
	}
	s.mu.Unlock()
	for {
		s.mu.Lock()
		n, idle := len(s.conns), s.idle
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// closeAll cuts every connection.
func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for nc := range s.raw {
		nc.Close()
	}
	for c := range s.conns {
		c.close(errConnClosed)
	}
}

// serveConn runs one HBONE connection.
func (s *Server) serveConn(ctx context.Context, nc net.Conn) {
	s.mu.Lock()
	if s.draining || ctx.Err() != nil {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.raw[nc] = struct{}{}
	s.mu.Unlock()
	remote := addrPort(nc.RemoteAddr())
	local := addrPort(nc.LocalAddr())
	log := s.log.With("peer", remote)

	records := sockio.NewBatcher(nc)
	tc := tls.Server(records, s.tls)
	nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	peer, err := s.handshake(tc)
	var c *h2conn
	var handlers sync.WaitGroup
	if err == nil {
		c = newH2Conn(tc, connOptions{
			maxStreams:         s.cfg.MaxConcurrentStreams,
			keepalive:          max(s.cfg.KeepaliveInterval, 0),
			keepaliveTimeout:   s.cfg.KeepaliveTimeout,
			idleTimeout:        s.cfg.IdleTimeout,
			firstStreamTimeout: s.cfg.FirstStreamTimeout,
			log:                log,
			records:            records,
			onStream: func(st *Stream) {
				sctx, cancel := context.WithCancel(ctx)
				st.cancel = cancel
				handlers.Add(1)
				go s.handle(ctx, sctx, st, peer, local, remote, log, handlers.Done)
			},
		})
		err = c.handshake()
	}
	nc.SetDeadline(time.Time{})
	s.mu.Lock()
	delete(s.raw, nc)
	if err == nil && (s.draining || ctx.Err() != nil) {
		err = errConnClosed
	}
	if err != nil {
		s.mu.Unlock()
		log.Debug("tunnel: HBONE handshake", "err", err)
		if err != errConnClosed {
			s.rejected(0, "handshake")
		}
		nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()

	err = c.run()
	handlers.Wait()
	log.Debug("tunnel: HBONE connection closed", "err", err)
	s.mu.Lock()
	delete(s.conns, c)
	if len(s.conns) == 0 {
		close(s.idle)
		s.idle = make(chan struct{})
	}
	s.mu.Unlock()
}

func (s *Server) rejected(status int, reason string) {
	if s.cfg.Rejected != nil {
		s.cfg.Rejected(status, reason)
	}
}

// handshake runs TLS and checks the client's identity.
func (s *Server) handshake(tc *tls.Conn) (certs.Identity, error) {
	if err := tc.Handshake(); err != nil {
		return certs.Identity{}, fmt.Errorf("tunnel: TLS handshake: %w", err)
	}
	st := tc.ConnectionState()
	if st.NegotiatedProtocol != "h2" {
		return certs.Identity{}, errors.New("tunnel: client did not negotiate h2")
	}
	peer, err := certs.PeerIdentity(st)
	if err != nil {
		return certs.Identity{}, err
	}
	if s.cfg.TrustDomain != "" && peer.TrustDomain != s.cfg.TrustDomain {
		return certs.Identity{}, fmt.Errorf("tunnel: client %s outside trust domain %s", peer, s.cfg.TrustDomain)
	}
	return peer, nil
}

// handle answers one CONNECT and proxies it. ctx is the stream's own, which
// its reset cancels, for the setup (authorization, dial); conn is the
// connection's, for the copying, which the stream's reset ends anyway.
// release is called once the stream is done with, which is after the
// copying when it is proxied.
func (s *Server) handle(conn, ctx context.Context, st *Stream, peer certs.Identity, local, remote netip.AddrPort, log *slog.Logger, release func()) {
	proxied := false
	defer func() {
		st.endSetup() // ctx is not kept for the connection's life
		if !proxied {
			release()
		}
	}()
	method := headerValue(st.reqFields, ":method")
	authority := headerValue(st.reqFields, ":authority")
	dst, status, reason := s.check(method, authority, local)
	if err := checkPseudoHeaders(st.reqFields); err != nil {
		dst, status, reason = netip.AddrPort{}, 400, err.Error()
	}
	st.reqFields = nil // read once; the read loop set it before this handler began
	info := ConnInfo{Direction: DirInbound, Src: remote, Dst: dst, SrcIdentity: peer, Mode: "hbone", Start: time.Now()}
	var obs ConnObserver = nopConnObserver{}
	switch status {
	case 400:
		s.rejected(status, "bad request")
	case 503:
		s.rejected(status, "unknown destination")
	}
	var t *tracked
	var dctx context.Context
	if status == 0 {
		if s.cfg.Observer != nil {
			obs = s.cfg.Observer.Opened(info)
		}
		// Registered before it is authorized, so that a policy change from
		// here on reaches it (see Registry).
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, s.cfg.DialTimeout)
		t = s.reg.pending(info, cancel)
		if err := s.cfg.Authorizer.Authorize(ctx, info.request()); err != nil {
			s.reg.remove(t)
			status, reason = 401, "denied: "+err.Error()
		}
	}
	var p *pair
	if status == 0 {
		up, err := s.cfg.Dial(dctx, remote, dst)
		var kill func()
		if err == nil {
			p = &pair{src: st, dst: up}
			kill = p.abort
		}
		if rerr := s.reg.settle(t, kill); rerr != nil {
			// Refused by a policy change while dialling: answered as a
			// denial, and the upstream closed before it got a byte.
			if up != nil {
				abortConn(up)
			}
			status, reason = 401, "denied: "+rerr.Error()
		} else if err != nil {
			status, reason = 503, "dial: "+err.Error()
		}
	}
	if status != 0 {
		log.Debug("tunnel: CONNECT refused", "dst", authority, "status", status, "err", reason)
		// Counted before the client can see the answer.
		result := "error"
		if status == 401 {
			result = "denied"
		}
		obs.Closed(result, reason)
		st.respond(status, true)
		st.Close()
		return
	}
	if err := st.respond(200, false); err != nil {
		s.reg.remove(t)
		p.dst.Close()
		st.Close()
		obs.Closed("error", "respond: "+err.Error())
		return
	}
	proxied = true
	proxyTracked(conn, p, s.reg, t, obs, release)
}

// check validates a CONNECT; status 0 means it may proceed to policy.
// checkPseudoHeaders enforces RFC 9113 §8.3 on a request's header block:
// every pseudo-header at most once and before the regular fields. A repeated
// :authority would otherwise let two readers of the request disagree about
// its destination.
func checkPseudoHeaders(fields []hpack.HeaderField) error {
	seen := map[string]bool{}
	regular := false
	for _, f := range fields {
		if !strings.HasPrefix(f.Name, ":") {
			regular = true
			continue
		}
		if regular {
			return fmt.Errorf("pseudo-header %s after a regular field", f.Name)
		}
		if seen[f.Name] {
			return fmt.Errorf("repeated pseudo-header %s", f.Name)
		}
		seen[f.Name] = true
	}
	return nil
}

func (s *Server) check(method, authority string, local netip.AddrPort) (netip.AddrPort, int, string) {
	if method != "CONNECT" {
		return netip.AddrPort{}, 400, "method " + method
	}
	dst, err := netip.ParseAddrPort(authority)
	if err != nil || dst.Port() == 0 {
		return netip.AddrPort{}, 400, "malformed authority " + strconv.Quote(authority)
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if s.cfg.CheckAuthority && dst.Addr() != local.Addr() {
		return dst, 400, fmt.Sprintf("ip mismatch: %s != %s", local.Addr(), dst.Addr())
	}
	if !s.cfg.Destinations.Local(dst.Addr()) {
		return dst, 503, "unknown destination"
	}
	return dst, 0, ""
}

// respond sends the response headers; end closes the stream's write side.
func (s *Stream) respond(status int, end bool) error {
	c := s.c
	c.mu.Lock()
	if s.err != nil {
		err := s.err
		c.mu.Unlock()
		return err
	}
	s.responded = true
	if end {
		s.sentEnd = true
		if s.recvDone && c.streams[s.id] == s {
			delete(c.streams, s.id)
		}
	}
	c.mu.Unlock()
	return c.writeHeaders(s.id, []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}, end)
}

// addrPort converts a TCP address, unmapping IPv4-in-IPv6.
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// isTemporary reports accept errors worth retrying (EMFILE and the like).
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}
