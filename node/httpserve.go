package node

import (
	"container/list"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Defaults of the data-plane HTTP servers' limits (Config.HTTP*).
const (
	defaultHTTPReadTimeout  = 5 * time.Second
	defaultHTTPWriteTimeout = 10 * time.Second
	defaultHTTPIdleTimeout  = 15 * time.Second
	defaultHTTPMaxConns     = 128

	// httpMaxHeaderBytes bounds the request headers a data-plane server
	// buffers per connection (net/http adds 4 KiB of slack). Prometheus and
	// the kubelet send a few hundred bytes; the stdlib default, 1 MiB, would
	// let each slow client pin a megabyte.
	httpMaxHeaderBytes = 16 << 10
)

// httpLimits bound one data-plane HTTP server (metrics, readiness). The
// zero value of a field means its default.
type httpLimits struct {
	read, write, idle time.Duration
	maxConns          int
}

func (c *Config) httpLimits() httpLimits {
	l := httpLimits{read: c.HTTPReadTimeout, write: c.HTTPWriteTimeout, idle: c.HTTPIdleTimeout, maxConns: c.HTTPMaxConns}
	if l.read == 0 {
		l.read = defaultHTTPReadTimeout
	}
	if l.write == 0 {
		l.write = defaultHTTPWriteTimeout
	}
	if l.idle == 0 {
		l.idle = defaultHTTPIdleTimeout
	}
	if l.maxConns == 0 {
		l.maxConns = defaultHTTPMaxConns
	}
	return l
}

// serveLimitedHTTP serves h on ln, a server reachable from every pod and host
// that can route to the node, until ctx is done. Each connection gets the
// read, write and idle timeouts of lim, and ln keeps at most lim.maxConns
// open (see shedListener), so idle keep-alives, slowloris clients and
// connection floods cost bounded descriptors, goroutines and memory.
func serveLimitedHTTP(ctx context.Context, ln *shedListener, h http.Handler, lim httpLimits) error {
	return runHTTPServer(ctx, ln, &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// The connection is serving: shed it only as a last resort.
			if c, ok := r.Context().Value(shedConnKey{}).(*shedConn); ok {
				c.busy.Add(1)
				defer c.busy.Add(-1)
			}
			h.ServeHTTP(w, r)
		}),
		// ReadHeaderTimeout is what bounds a slowloris client: it runs
		// from the first byte awaited, however slowly the headers trickle.
		ReadHeaderTimeout: lim.read,
		ReadTimeout:       lim.read,
		WriteTimeout:      lim.write,
		IdleTimeout:       lim.idle,
		MaxHeaderBytes:    httpMaxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, shedConnKey{}, c)
		},
	})
}

// runHTTPServer serves srv on ln until ctx is done, then shuts down
// gracefully (5 s at most). It returns nil after a clean shutdown.
func runHTTPServer(ctx context.Context, ln net.Listener, srv *http.Server) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

type shedConnKey struct{}

// Reasons a shedListener closes a connection, as its shed callback and the
// ferry_node_http_connections_shed_total metric name them.
const (
	shedIdle = "idle" // the oldest connection not in a handler
	shedBusy = "busy" // the oldest connection, all being in handlers
)

// shedListener keeps at most limit connections open from its listener. When a
// new connection arrives with limit open, it closes the oldest connection that
// is not in a handler (one that is idle between requests, still sending its
// headers, or has sent nothing), or, if every one is in a handler, the
// oldest of all; the new connection is always served.
//
// Why shed the oldest rather than refuse the newest (as
// golang.org/x/net/netutil.LimitListener does, by blocking Accept): the
// clients these servers exist for, Prometheus and the kubelet's probe,
// connect, send one request at once and are done in milliseconds, while the
// clients that fill a cap are the ones that hold connections open doing
// nothing. Refusing or queueing new connections would hand the servers to
// whoever holds limit connections first, failing the node's readiness probe
// and its scrapes until the timeouts expire, and again as soon as the
// attacker reconnects. Shedding the oldest means a fresh request always gets
// in and is only lost if limit newer connections arrive during the
// milliseconds it is served. A Prometheus keep-alive connection that is
// shed is redialled by its transport on the next scrape.
//
// Close closes the listener only; the http.Server closes its connections. It
// is safe for concurrent use.
type shedListener struct {
	net.Listener
	limit int
	shed  func(reason string) // called after each shed connection; may be nil

	accepted atomic.Int64 // connections accepted, shed ones included

	mu    sync.Mutex
	conns list.List // of *shedConn, oldest first
}

func newShedListener(ln net.Listener, limit int, shed func(reason string)) *shedListener {
	return &shedListener{Listener: ln, limit: max(limit, 1), shed: shed}
}

// Accept implements net.Listener.
func (l *shedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepted.Add(1)
	sc := &shedConn{Conn: c, l: l}
	var victim *shedConn
	reason := ""
	l.mu.Lock()
	if l.conns.Len() >= l.limit {
		for e := l.conns.Front(); e != nil; e = e.Next() {
			if o := e.Value.(*shedConn); o.busy.Load() == 0 {
				victim, reason = o, shedIdle
				break
			}
		}
		if victim == nil {
			victim, reason = l.conns.Front().Value.(*shedConn), shedBusy
		}
		l.conns.Remove(victim.elem)
		victim.elem = nil
	}
	sc.elem = l.conns.PushBack(sc)
	l.mu.Unlock()
	if victim != nil {
		// The victim's server goroutine sees the error and ends; its
		// own Close finds the connection already removed.
		victim.Conn.Close()
		if l.shed != nil {
			l.shed(reason)
		}
	}
	return sc, nil
}

// open reports how many connections are open.
func (l *shedListener) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns.Len()
}

// shedConn is a connection of a shedListener.
type shedConn struct {
	net.Conn
	l    *shedListener
	elem *list.Element // in l.conns; nil once removed (guarded by l.mu)
	busy atomic.Int32  // requests in a handler
}

// Close implements net.Conn.
func (c *shedConn) Close() error {
	c.l.mu.Lock()
	if c.elem != nil {
		c.l.conns.Remove(c.elem)
		c.elem = nil
	}
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// serveDataPlaneHTTP serves h on ln, the listener of server name ("metrics"
// or "readiness"), with the Config's limits, counting shed connections.
func (a *Agent) serveDataPlaneHTTP(ctx context.Context, name string, ln net.Listener, h http.Handler) error {
	lim := a.cfg.httpLimits()
	shed := newShedListener(ln, lim.maxConns, func(reason string) {
		a.metrics.HTTPShed.WithLabelValues(name, reason).Inc()
	})
	return serveLimitedHTTP(ctx, shed, h, lim)
}

// ServeMetrics serves reg at /metrics on ln until ctx is done, with the
// default limits of the agent's metrics server (see Config.HTTPMaxConns):
// the metrics endpoint of `ferry ca serve`.
func ServeMetrics(ctx context.Context, ln net.Listener, reg *prometheus.Registry) error {
	var cfg Config
	lim := cfg.httpLimits()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return serveLimitedHTTP(ctx, newShedListener(ln, lim.maxConns, nil), mux, lim)
}
