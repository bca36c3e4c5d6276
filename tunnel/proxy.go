package tunnel

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/tunnel/internal/bufpool"
	"github.com/ferrymesh/ferry/tunnel/internal/sockio"
)

// Mode says how the outbound proxy carries a connection.
type Mode int

// Outbound modes.
const (
	// Deny refuses the connection (the zero value: fail closed).
	Deny Mode = iota
	// HBONE tunnels the connection to the destination's node.
	HBONE
	// Passthrough dials the destination directly, in plaintext. Only for
	// destinations outside the mesh.
	Passthrough
)

func (m Mode) String() string {
	switch m {
	case HBONE:
		return "hbone"
	case Passthrough:
		return "passthrough"
	default:
		return "deny"
	}
}

// Route is the outbound decision for one connection.
type Route struct {
	Mode Mode
	// Src is the source workload's identity; Dst the identity the HBONE
	// server must prove.
	Src, Dst certs.Identity
	// HBONEAddr is where to tunnel, normally <destination pod IP>:15008.
	HBONEAddr netip.AddrPort
	// Target, when set, is where the connection goes instead of its
	// original destination: the endpoint the router picked for a Service
	// address. It is the CONNECT authority (HBONE) or the address dialled
	// (Passthrough); the original destination is then ConnInfo.DialledDst.
	Target netip.AddrPort
	// Authority, when set, is the CONNECT authority instead of the
	// destination: the Service address the source dialled, for a waypoint,
	// when a NAT rewrote it before capture.
	Authority netip.AddrPort
	// Reason explains a Deny.
	Reason string
	// Baggage is sent with the CONNECT when set.
	Baggage string
}

// Router picks the route of an outbound connection from src to its
// original destination dst; dialled is what src dialled when a NAT rewrote
// it to dst (OutboundConfig.DialledDst), zero otherwise.
type Router interface {
	Route(src, dst, dialled netip.AddrPort) (Route, error)
}

// RouterFunc adapts a function to Router.
type RouterFunc func(src, dst, dialled netip.AddrPort) (Route, error)

// Route calls f.
func (f RouterFunc) Route(src, dst, dialled netip.AddrPort) (Route, error) {
	return f(src, dst, dialled)
}

// OutboundConfig configures the outbound proxy (port 15001).
type OutboundConfig struct {
	// Client opens HBONE streams (required).
	Client *Client
	// Routes decides each connection (required).
	Routes Router
	// OriginalDst recovers a captured connection's destination; nil uses
	// conn.LocalAddr(), right for --redirect none and sk_lookup capture.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	// DialledDst recovers what the source dialled before a NAT rewrote it
	// (ConnInfo.DialledDst); nil, or a zero result, means no NAT.
	DialledDst func(net.Conn) netip.AddrPort
	// Dial opens passthrough connections; nil dials without binding src.
	Dial DialFunc
	// Registry records open connections; nil gives the proxy its own.
	Registry *Registry
	// Observer sees every proxied connection; nil means none.
	Observer Observer
	// DialTimeout bounds each HBONE or passthrough dial.
	DialTimeout time.Duration
}

// Outbound proxies connections captured from local pods.
type Outbound struct {
	cfg OutboundConfig
	log *slog.Logger
	l   loop
}

// NewOutbound validates cfg and returns the proxy. It starts nothing.
func NewOutbound(cfg OutboundConfig, log *slog.Logger) (*Outbound, error) {
	if cfg.Client == nil || cfg.Routes == nil {
		return nil, errors.New("tunnel: outbound needs a Client and Routes")
	}
	log = proxyDefaults(log, &cfg.OriginalDst, &cfg.Dial, &cfg.Registry, &cfg.DialTimeout)
	return &Outbound{cfg: cfg, log: log}, nil
}

// proxyDefaults fills the settings the outbound and plaintext proxies share
// and returns the logger to use.
func proxyDefaults(log *slog.Logger, originalDst *func(net.Conn) (netip.AddrPort, error), dial *DialFunc, reg **Registry, dialTimeout *time.Duration) *slog.Logger {
	if *originalDst == nil {
		*originalDst = localDst
	}
	if *dial == nil {
		*dial = plainDial
	}
	if *reg == nil {
		*reg = NewRegistry()
	}
	setDefault(dialTimeout, DefaultDialTimeout)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return log
}

func localDst(c net.Conn) (netip.AddrPort, error) {
	ap := addrPort(c.LocalAddr())
	if !ap.IsValid() {
		return ap, fmt.Errorf("tunnel: no original destination for %s", c.LocalAddr())
	}
	return ap, nil
}

// dialledDst calls f, if set, and keeps its answer only when it differs
// from dst.
func dialledDst(f func(net.Conn) netip.AddrPort, c net.Conn, dst netip.AddrPort) netip.AddrPort {
	if f == nil {
		return netip.AddrPort{}
	}
	if d := f(c); d.IsValid() && d != dst {
		return d
	}
	return netip.AddrPort{}
}

// Connections returns the open proxied connections.
func (o *Outbound) Connections() []ConnInfo { return o.cfg.Registry.Connections() }

// Serve accepts on ln until ctx is done, then aborts every connection. It
// returns nil after ctx is done once its goroutines have exited, or the
// accept error that stopped it.
func (o *Outbound) Serve(ctx context.Context, ln net.Listener) error {
	return o.l.serve(ctx, ln, o.log, o.handle)
}

func (o *Outbound) handle(ctx context.Context, c net.Conn, copying *sync.WaitGroup) {
	src := addrPort(c.RemoteAddr())
	dst, err := o.cfg.OriginalDst(c)
	if err != nil {
		o.log.Debug("tunnel: outbound", "src", src, "err", err)
		abortConn(c)
		return
	}
	dialled := dialledDst(o.cfg.DialledDst, c, dst)
	route, err := o.cfg.Routes.Route(src, dst, dialled)
	if err != nil {
		route = Route{Mode: Deny, Reason: err.Error()}
	}
	info := ConnInfo{Direction: DirOutbound, Src: src, Dst: dst, DialledDst: dialled,
		SrcIdentity: route.Src, DstIdentity: route.Dst, Mode: route.Mode.String(), Start: time.Now()}
	if route.Target.IsValid() {
		info.Dst, info.DialledDst, info.Picked = route.Target, dst, true
	}
	var obs ConnObserver = nopConnObserver{}
	if o.cfg.Observer != nil {
		obs = o.cfg.Observer.Opened(info)
	}
	dctx, cancel := context.WithTimeout(ctx, o.cfg.DialTimeout)
	var up net.Conn
	early := 0
	switch route.Mode {
	case HBONE:
		// What the client sent already (most clients speak first) rides
		// with the CONNECT.
		buf := bufpool.Get(earlySize)[:earlySize]
		var n int
		if n, err = sockio.TryRead(c, buf); err == io.EOF {
			err = nil
		}
		if err == nil {
			var st *Stream
			st, err = o.cfg.Client.Dial(dctx, DialRequest{
				Src: route.Src, Dst: route.Dst, SrcAddr: src,
				HBONEAddr: route.HBONEAddr, Authority: cmp.Or(route.Authority, info.Dst), Baggage: route.Baggage,
				Early: buf[:n],
			})
			if err == nil {
				up, early = st, n
			}
		}
		bufpool.Put(buf)
	case Passthrough:
		up, err = o.cfg.Dial(dctx, src, info.Dst)
	default:
		err = fmt.Errorf("tunnel: denied: %s", route.Reason)
	}
	cancel()
	if err != nil {
		o.log.Debug("tunnel: outbound refused", "src", src, "dst", dst, "err", err)
		abortConn(c)
		result := "error"
		if route.Mode == Deny {
			result = "denied"
		}
		obs.Closed(result, err.Error())
		return
	}
	p := &pair{src: c, dst: up, early: early}
	t := o.cfg.Registry.add(info, p.abort)
	copying.Add(1)
	proxyTracked(ctx, p, o.cfg.Registry, t, obs, copying.Done)
}

// earlySize bounds the data read from a new outbound connection before its
// stream opens: one DATA frame of the smallest size a peer may allow.
const earlySize = 16 << 10

// proxyTracked starts copying p as the open connection t of reg: its bytes
// counted there and by obs, removed from reg when it ends, its end reported
// to obs; then done is called.
func proxyTracked(ctx context.Context, p *pair, reg *Registry, t *tracked, obs ConnObserver, done func()) {
	h := &trackedCopy{reg: reg, t: t, obs: obs, done: done}
	if p.early > 0 {
		h.copied(0, p.early)
	}
	p.start(ctx, h)
}

// trackedCopy is the copyHooks of a registered connection.
type trackedCopy struct {
	reg  *Registry
	t    *tracked
	obs  ConnObserver
	done func()
}

func (h *trackedCopy) copied(dir, n int) {
	if dir == 0 {
		h.t.recv.Add(int64(n))
		h.obs.Received(n)
	} else {
		h.t.sent.Add(int64(n))
		h.obs.Sent(n)
	}
}

func (h *trackedCopy) ended(res copyResult) {
	h.reg.remove(h.t)
	if res.err != nil {
		h.obs.Closed("error", res.err.Error())
	} else {
		h.obs.Closed("ok", "")
	}
	h.done()
}

// PlaintextConfig configures the inbound plaintext proxy (port 15006):
// connections captured toward a local pod without HBONE.
type PlaintextConfig struct {
	// Authorizer decides each connection; it sees Request.Plaintext set and
	// no peer identity, so PeerAuthentication STRICT refuses (required).
	Authorizer Authorizer
	// Destinations answers whether the destination is local (required).
	Destinations Destinations
	// OriginalDst and DialledDst as in OutboundConfig.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	DialledDst  func(net.Conn) netip.AddrPort
	// Dial opens the upstream connection from the client's address.
	Dial DialFunc
	// Registry and Observer as in ServerConfig.
	Registry *Registry
	Observer Observer
	// DialTimeout bounds each upstream dial.
	DialTimeout time.Duration
}

// Plaintext proxies captured plaintext connections to local pods.
type Plaintext struct {
	cfg PlaintextConfig
	log *slog.Logger
	l   loop
}

// NewPlaintext validates cfg and returns the proxy. It starts nothing.
func NewPlaintext(cfg PlaintextConfig, log *slog.Logger) (*Plaintext, error) {
	if cfg.Authorizer == nil || cfg.Destinations == nil {
		return nil, errors.New("tunnel: plaintext proxy needs an Authorizer and Destinations")
	}
	log = proxyDefaults(log, &cfg.OriginalDst, &cfg.Dial, &cfg.Registry, &cfg.DialTimeout)
	return &Plaintext{cfg: cfg, log: log}, nil
}

// Connections returns the open proxied connections.
func (p *Plaintext) Connections() []ConnInfo { return p.cfg.Registry.Connections() }

// Reauthorize closes open connections that allow now refuses.
func (p *Plaintext) Reauthorize(allow func(Request) error) int {
	return p.cfg.Registry.Reauthorize(allow)
}

// Serve accepts on ln until ctx is done, like Outbound.Serve.
func (p *Plaintext) Serve(ctx context.Context, ln net.Listener) error {
	return p.l.serve(ctx, ln, p.log, p.handle)
}

func (p *Plaintext) handle(ctx context.Context, c net.Conn, copying *sync.WaitGroup) {
	src := addrPort(c.RemoteAddr())
	dst, err := p.cfg.OriginalDst(c)
	if err == nil && !p.cfg.Destinations.Local(dst.Addr()) {
		err = fmt.Errorf("tunnel: %s is not a local workload", dst)
	}
	if err != nil {
		p.log.Debug("tunnel: plaintext", "src", src, "err", err)
		abortConn(c)
		return
	}
	info := ConnInfo{Direction: DirInboundPlaintext, Src: src, Dst: dst, DialledDst: dialledDst(p.cfg.DialledDst, c, dst),
		Mode: "plaintext", Start: time.Now()}
	var obs ConnObserver = nopConnObserver{}
	if p.cfg.Observer != nil {
		obs = p.cfg.Observer.Opened(info)
	}
	// Registered before it is authorized, so that a policy change from here
	// on reaches it (see Registry).
	dctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	t := p.cfg.Registry.pending(info, cancel)
	if err := p.cfg.Authorizer.Authorize(ctx, info.request()); err != nil {
		p.cfg.Registry.remove(t)
		p.log.Debug("tunnel: plaintext denied", "src", src, "dst", dst, "err", err)
		abortConn(c)
		obs.Closed("denied", err.Error())
		return
	}
	up, err := p.cfg.Dial(dctx, src, dst)
	var pr *pair
	var kill func()
	if err == nil {
		pr = &pair{src: c, dst: up}
		kill = pr.abort
	}
	if rerr := p.cfg.Registry.settle(t, kill); rerr != nil {
		// Refused by a policy change while dialling: closed as a denial, and
		// the upstream closed before it got a byte.
		if up != nil {
			abortConn(up)
		}
		p.log.Debug("tunnel: plaintext denied during setup", "src", src, "dst", dst, "err", rerr)
		abortConn(c)
		obs.Closed("denied", rerr.Error())
		return
	}
	if err != nil {
		abortConn(c)
		obs.Closed("error", err.Error())
		return
	}
	copying.Add(1)
	proxyTracked(ctx, pr, p.cfg.Registry, t, obs, copying.Done)
}

// loop is the accept loop shared by the plain proxies: one goroutine per
// connection until its copying starts, every connection aborted when ctx
// ends or accepting fails for good.
type loop struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// serve accepts on ln and runs handle for each connection. A handler that
// starts copying adds it to copying and marks it done when the copy ends;
// serve returns once every handler and copy has finished.
func (l *loop) serve(ctx context.Context, ln net.Listener, log *slog.Logger, handle func(context.Context, net.Conn, *sync.WaitGroup)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var handlers, copying sync.WaitGroup
	stop := onDone(ctx, func() {
		ln.Close()
		l.mu.Lock()
		for c := range l.conns {
			abortConn(c)
		}
		l.mu.Unlock()
	})
	defer stop()
	var err error
	var delay time.Duration
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() != nil {
				break
			}
			if isTemporary(aerr) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				log.Warn("tunnel: accept", "err", aerr)
				t := time.NewTimer(delay)
				select {
				case <-t.C:
					continue
				case <-ctx.Done():
					t.Stop()
				}
				break
			}
			// Accepting failed for good: end every connection (copies
			// abort when ctx ends) so that the error is returned now.
			err = fmt.Errorf("tunnel: accept: %w", aerr)
			cancel()
			break
		}
		delay = 0
		l.mu.Lock()
		if l.conns == nil {
			l.conns = make(map[net.Conn]struct{})
		}
		l.conns[c] = struct{}{}
		l.mu.Unlock()
		handlers.Go(func() {
			handle(ctx, c, &copying)
			l.mu.Lock()
			delete(l.conns, c)
			l.mu.Unlock()
		})
	}
	handlers.Wait()
	copying.Wait()
	return err
}

// onDone runs f once ctx is done, as context.AfterFunc does; the stop it
// returns cancels f if it has not started and otherwise waits for it to
// finish, so a function that defers stop leaves nothing running behind it.
func onDone(ctx context.Context, f func()) (stop func()) {
	done := make(chan struct{})
	cancel := context.AfterFunc(ctx, func() {
		defer close(done)
		f()
	})
	return func() {
		if !cancel() {
			<-done
		}
	}
}
