package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/tunnel"
)

// inproc is benchmark B3: one HBONE stream through Ferry's tunnel package,
// client and server in this process over loopback TCP, with no TCP at
// either end (the server's upstream is an in-memory connection), against
// one Go TLS connection over loopback with the same certificates. CPU is
// this process's (getrusage), the same scope for both.
type inproc struct {
	store  *certs.Store
	client *tunnel.Client
	addr   netip.AddrPort
	up     atomic.Pointer[memConn] // the upstream the server's next Dial returns
	tlsLn  net.Listener
	tlsCli *tls.Config
	src    certs.Identity
	dst    certs.Identity
	stop   func()
}

func newInproc(ctx context.Context, pk *pki, log *slog.Logger) (*inproc, error) {
	ca, err := certs.LoadLocalCA(pk.caCert, pk.caKey)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	store, err := certs.NewStore(certs.StoreConfig{TrustDomain: trustDomain, Roots: roots}, ca, log)
	if err != nil {
		return nil, err
	}
	ip := &inproc{
		store: store,
		src:   certs.Identity{TrustDomain: trustDomain, Namespace: "bench", ServiceAccount: "client"},
		dst:   certs.Identity{TrustDomain: trustDomain, Namespace: "bench", ServiceAccount: "server"},
	}
	store.SetIdentities([]certs.Identity{ip.src, ip.dst})
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	ip.stop = func() { cancel(); wg.Wait() }
	wg.Go(func() { store.Run(ctx) })
	for _, id := range []certs.Identity{ip.src, ip.dst} {
		wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
		err := store.WaitReady(wctx, id)
		wcancel()
		if err != nil {
			ip.stop()
			return nil, err
		}
	}
	srv, err := tunnel.NewServer(tunnel.ServerConfig{
		TLS:          store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return ip.dst, nil }),
		Destinations: tunnel.DestinationsFunc(func(netip.Addr) bool { return true }),
		Authorizer:   tunnel.AuthorizerFunc(func(context.Context, tunnel.Request) error { return nil }),
		Dial: func(context.Context, netip.AddrPort, netip.AddrPort) (net.Conn, error) {
			c := ip.up.Swap(nil)
			if c == nil {
				return nil, fmt.Errorf("no upstream prepared")
			}
			return c, nil
		},
	}, log)
	if err != nil {
		ip.stop()
		return nil, err
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		ip.stop()
		return nil, err
	}
	ip.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	wg.Go(func() { srv.Serve(ctx, ln) })
	ip.client, err = tunnel.NewClient(tunnel.ClientConfig{
		TLS: func(src, want certs.Identity) (*tls.Config, error) { return store.ClientConfig(src, want), nil },
	}, log)
	if err != nil {
		ip.stop()
		return nil, err
	}
	context.AfterFunc(ctx, func() { ip.client.Close() })

	// The Go TLS pair: the same leaf for both sides, X25519, mutual auth.
	cert, err := tls.LoadX509KeyPair(pk.cert, pk.key)
	if err != nil {
		ip.stop()
		return nil, err
	}
	srvCfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots, CurvePreferences: []tls.CurveID{tls.X25519}}
	ip.tlsCli = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		RootCAs: roots, ServerName: "localhost", CurvePreferences: []tls.CurveID{tls.X25519}}
	tln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		ip.stop()
		return nil, err
	}
	ip.tlsLn = tls.NewListener(tln, srvCfg)
	context.AfterFunc(ctx, func() { tln.Close() })
	return ip, nil
}

// memConn is the in-memory upstream of the HBONE server: in download mode
// its reads produce bytes until end, otherwise they wait for Close; writes
// are counted and dropped.
type memConn struct {
	download bool
	end      time.Time
	n        atomic.Int64
	closed   chan struct{}
	once     sync.Once
}

func newMemConn(download bool, end time.Time) *memConn {
	return &memConn{download: download, end: end, closed: make(chan struct{})}
}

func (m *memConn) Read(p []byte) (int, error) {
	if !m.download {
		<-m.closed
		return 0, io.EOF
	}
	select {
	case <-m.closed:
		return 0, net.ErrClosed
	default:
	}
	if !time.Now().Before(m.end) {
		return 0, io.EOF
	}
	return len(p), nil
}

func (m *memConn) Write(p []byte) (int, error) {
	m.n.Add(int64(len(p)))
	return len(p), nil
}

func (m *memConn) Close() error                     { m.once.Do(func() { close(m.closed) }); return nil }
func (m *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (m *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (m *memConn) SetDeadline(time.Time) error      { return nil }
func (m *memConn) SetReadDeadline(time.Time) error  { return nil }
func (m *memConn) SetWriteDeadline(time.Time) error { return nil }

func rusageCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// hbone moves bytes over one new HBONE stream for d, up (client to server)
// or down; it returns the bytes moved and the time taken.
func (ip *inproc) hbone(ctx context.Context, download bool, d time.Duration) (int64, time.Duration, error) {
	start := time.Now()
	up := newMemConn(download, start.Add(d))
	ip.up.Store(up)
	st, err := ip.client.Dial(ctx, tunnel.DialRequest{
		Src: ip.src, Dst: ip.dst, SrcAddr: netip.MustParseAddrPort("127.0.0.1:1"),
		HBONEAddr: ip.addr, Authority: ip.addr,
	})
	if err != nil {
		return 0, 0, err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(d + 30*time.Second))
	if download {
		n, err := io.CopyBuffer(io.Discard, onlyReader{st}, make([]byte, 256<<10))
		return n, time.Since(start), err
	}
	buf := make([]byte, chunk)
	var written int64
	for time.Now().Before(start.Add(d)) {
		k, err := st.Write(buf)
		written += int64(k)
		if err != nil {
			return 0, 0, err
		}
	}
	err = waitFor(ctx, 30*time.Second, func() error {
		if up.n.Load() < written {
			return fmt.Errorf("hbone upload: %d of %d bytes arrived", up.n.Load(), written)
		}
		return nil
	})
	return written, time.Since(start), err
}

// goTLS is the same over one Go TLS connection.
func (ip *inproc) goTLS(ctx context.Context, download bool, d time.Duration) (int64, time.Duration, error) {
	type result struct {
		n   int64
		err error
	}
	srvDone := make(chan result, 1)
	go func() {
		c, err := ip.tlsLn.Accept()
		if err != nil {
			srvDone <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(d + 30*time.Second))
		if err := c.(*tls.Conn).HandshakeContext(ctx); err != nil {
			srvDone <- result{err: err}
			return
		}
		if download {
			buf := make([]byte, chunk)
			var n int64
			end := time.Now().Add(d)
			for time.Now().Before(end) {
				k, err := c.Write(buf)
				n += int64(k)
				if err != nil {
					srvDone <- result{n, err}
					return
				}
			}
			srvDone <- result{n, nil}
			return
		}
		n, err := io.CopyBuffer(io.Discard, onlyReader{c}, make([]byte, 256<<10))
		srvDone <- result{n, err}
	}()
	c, err := (&tls.Dialer{Config: ip.tlsCli}).DialContext(ctx, "tcp4", ip.tlsLn.Addr().String())
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d + 30*time.Second))
	start := time.Now()
	if download {
		n, err := io.CopyBuffer(io.Discard, onlyReader{c}, make([]byte, 256<<10))
		r := <-srvDone
		if err == nil {
			err = r.err
		}
		return n, time.Since(start), err
	}
	buf := make([]byte, chunk)
	for time.Now().Before(start.Add(d)) {
		if _, err := c.Write(buf); err != nil {
			return 0, 0, err
		}
	}
	c.(*tls.Conn).CloseWrite()
	r := <-srvDone
	return r.n, time.Since(start), r.err
}

// stream runs B3 once: HBONE and Go TLS, up and down.
func (s *suite) stream(ctx context.Context) {
	if s.inproc == nil {
		return
	}
	mbps := map[string]float64{}
	for _, dir := range []string{"up", "down"} {
		bench := "hbone/stream-1/" + dir
		for _, v := range []struct {
			name string
			fn   func(context.Context, bool, time.Duration) (int64, time.Duration, error)
		}{{"ferry-tunnel", s.inproc.hbone}, {"go-tls-direct", s.inproc.goTLS}} {
			c0 := rusageCPU()
			n, el, err := v.fn(ctx, dir == "down", s.cfg.dur)
			cpu := rusageCPU() - c0
			if err != nil {
				s.rec.Errors = append(s.rec.Errors, fmt.Sprintf("%s/%s: %v", bench, v.name, err))
				continue
			}
			mbps[dir+v.name] = float64(n) / el.Seconds() / 1e6
			s.rec.raw(bench, v.name, "MB/s", "MB/s", mbps[dir+v.name])
			s.rec.raw(bench, v.name, "process_cpu_ms_per_gb", "ms/GB", cpu.Seconds()*1e3/(float64(n)/1e9))
			settle()
		}
		if f, g := mbps[dir+"ferry-tunnel"], mbps[dir+"go-tls-direct"]; f > 0 && g > 0 {
			s.rec.raw(bench, "ferry-tunnel", "vs_go_tls", "ratio", f/g)
		}
	}
}
