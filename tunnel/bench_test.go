package tunnel

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
)

// benchTLSPair returns both ends of one mutual-TLS connection over loopback
// TCP, configured as HBONE configures them.
func benchTLSPair(b *testing.B, store *certs.Store) (cli, srv *tls.Conn) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	sraw := <-accepted
	srv = tls.Server(sraw, store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return idServer, nil }))
	cli = tls.Client(raw, store.ClientConfig(idClient, idServer))
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close(); srv.Close() })
	return cli, srv
}

// benchStreamPair returns both ends of one HBONE stream carried by an
// HTTP/2 connection over the same kind of TLS connection.
func benchStreamPair(b *testing.B, store *certs.Store) (cli, srv *Stream) {
	b.Helper()
	ctls, stls := benchTLSPair(b, store)
	streams := make(chan *Stream, 1)
	sc := newH2Conn(stls, connOptions{onStream: func(s *Stream) { streams <- s }})
	cc := newH2Conn(ctls, connOptions{client: true})
	errc := make(chan error, 1)
	go func() { errc <- sc.handshake() }()
	if err := cc.handshake(); err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { sc.run(); done <- struct{}{} }()
	go func() { cc.run(); done <- struct{}{} }()
	b.Cleanup(func() {
		cc.close(nil)
		sc.close(nil)
		<-done
		<-done
	})
	if !cc.tryReserve() {
		b.Fatal("no stream slot")
	}
	cs, _, err := cc.openStream(requestHeaders(DialRequest{Authority: netip.MustParseAddrPort("127.0.0.1:1")}), nil)
	if err != nil {
		b.Fatal(err)
	}
	ss := <-streams
	if err := ss.respond(200, false); err != nil {
		b.Fatal(err)
	}
	if err := cs.awaitResponse(context.Background()); err != nil {
		b.Fatal(err)
	}
	return cs, ss
}

// transfer moves n bytes from w to r in 256 KiB writes and returns the time.
func transfer(w io.Writer, r io.Reader, n int) time.Duration {
	buf := make([]byte, 256<<10)
	start := time.Now()
	done := make(chan struct{})
	go func() {
		rbuf := make([]byte, 256<<10)
		for got := 0; got < n; {
			k, err := r.Read(rbuf)
			if err != nil {
				break
			}
			got += k
		}
		close(done)
	}()
	for sent := 0; sent < n; sent += len(buf) {
		if _, err := w.Write(buf[:min(len(buf), n-sent)]); err != nil {
			break
		}
	}
	<-done
	return time.Since(start)
}

// BenchmarkThroughput compares one HBONE stream with one plain mutual-TLS
// connection, interleaved in the same run. Metrics: MB/s of each and their
// ratio (HBONE ÷ TLS), upload (client→server) and download.
func BenchmarkThroughput(b *testing.B) {
	ca := certstest.NewCA(b)
	store := ca.Store(b, idClient, idServer)
	const size = 64 << 20
	for _, dir := range []string{"up", "down"} {
		b.Run(dir, func(b *testing.B) {
			cs, ss := benchStreamPair(b, store)
			ct, st := benchTLSPair(b, store)
			var hb, tl time.Duration
			for b.Loop() {
				if dir == "up" {
					hb += transfer(cs, ss, size)
					tl += transfer(ct, st, size)
				} else {
					hb += transfer(ss, cs, size)
					tl += transfer(st, ct, size)
				}
			}
			mb := float64(size) * float64(b.N) / 1e6
			b.ReportMetric(mb/hb.Seconds(), "hbone-MB/s")
			b.ReportMetric(mb/tl.Seconds(), "tls-MB/s")
			b.ReportMetric(tl.Seconds()/hb.Seconds(), "hbone/tls")
		})
	}
}

// tlsEcho serves a TLS echo on loopback (the plain mTLS baseline).
func tlsEcho(b *testing.B, store *certs.Store) netip.AddrPort {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return idServer, nil }))
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	b.Cleanup(func() { ln.Close(); <-done })
	return addrPort(ln.Addr())
}

// tlsProxy serves mutual TLS on loopback and forwards each connection to
// dst over TCP: a plain Go mTLS hop in front of the same upstream as HBONE.
func tlsProxy(b *testing.B, store *certs.Store, dst netip.AddrPort) netip.AddrPort {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return idServer, nil }))
	if err != nil {
		b.Fatal(err)
	}
	return forwardEach(b, ln, func() (net.Conn, error) { return net.Dial("tcp", dst.String()) })
}

// forwardEach copies each connection ln accepts to one dial opens, with the
// tunnel's copier, until b ends; it returns ln's address.
func forwardEach(b *testing.B, ln net.Listener, dial func() (net.Conn, error)) netip.AddrPort {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				up, err := dial()
				if err != nil {
					c.Close()
					return
				}
				p := &pair{src: c, dst: up}
				p.run(context.Background(), func(int) {}, func(int) {})
			}()
		}
	}()
	b.Cleanup(func() { ln.Close(); <-done })
	return addrPort(ln.Addr())
}

// BenchmarkRR1K measures 1 KiB request/response round trips on a persistent
// connection: direct TCP to an echo, one mTLS hop to a TLS echo, an mTLS
// proxy in front of the TCP echo (the fair baseline), and through an HBONE
// client → server → TCP echo. Metrics: p50 and p99 in µs.
func BenchmarkRR1K(b *testing.B) {
	e := newEnv(b)
	backend := newBackend(b, echo)
	echoTLS := tlsEcho(b, e.store)
	proxyTLS := tlsProxy(b, e.store, backend.addr)
	dialers := []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"direct", func() (net.Conn, error) { return net.Dial("tcp", backend.addr.String()) }},
		{"tls", func() (net.Conn, error) {
			return tls.Dial("tcp", echoTLS.String(), e.store.ClientConfig(idClient, idServer))
		}},
		{"tls-proxy", func() (net.Conn, error) {
			return tls.Dial("tcp", proxyTLS.String(), e.store.ClientConfig(idClient, idServer))
		}},
		{"hbone", func() (net.Conn, error) { return e.dial(context.Background(), backend.addr) }},
	}
	for _, d := range dialers {
		b.Run(d.name, func(b *testing.B) {
			c, err := d.dial()
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, 1024)
			resp := make([]byte, 1024)
			var lat []time.Duration
			for b.Loop() {
				t0 := time.Now()
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
		})
	}
}

// BenchmarkNewStream opens and finishes one tunnelled connection per
// iteration on a warm pooled HTTP/2 connection: CONNECT, upstream dial, 200,
// half-close both ways.
func BenchmarkNewStream(b *testing.B) {
	e := newEnv(b)
	backend := newBackend(b, func(c *net.TCPConn) { c.CloseWrite(); io.Copy(io.Discard, c) })
	warm, err := e.dial(context.Background(), backend.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer warm.Close()
	start := time.Now()
	for b.Loop() {
		st, err := e.dial(context.Background(), backend.addr)
		if err != nil {
			b.Fatal(err)
		}
		st.CloseWrite()
		io.Copy(io.Discard, st)
		st.Close()
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "streams/s")
}

// BenchmarkIdleMemory holds 1000 idle tunnelled connections along the full
// path (app → outbound proxy → HBONE client → server → upstream) in one
// process, i.e. both agents, and reports Go heap and goroutine stack bytes
// per connection after GC, once they have been idle long enough to park.
func BenchmarkIdleMemory(b *testing.B) {
	const n = 1000
	for b.Loop() {
		heap, stack := idleMemory(b, n)
		b.ReportMetric(heap/1024, "heap-KiB/conn")
		b.ReportMetric(stack/1024, "stack-KiB/conn")
		b.ReportMetric((heap+stack)/1024, "total-KiB/conn")
	}
}

func idleMemory(b *testing.B, n int) (heap, stack float64) {
	e := newEnv(b)
	// The upstream only holds its connections; it never reads.
	held := make(chan net.Conn, n)
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				close(held)
				return
			}
			held <- c
		}
	}()
	defer func() {
		up.Close()
		for c := range held {
			c.Close()
		}
	}()
	upAddr := addrPort(up.Addr())
	out, err := NewOutbound(OutboundConfig{
		Client: e.cli,
		Routes: RouterFunc(func(src, dst, _ netip.AddrPort) (Route, error) {
			return Route{Mode: HBONE, Src: idClient, Dst: idServer, HBONEAddr: e.hbone}, nil
		}),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return upAddr, nil },
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- out.Serve(ctx, ln) }()
	defer func() { cancel(); <-served }()

	measure := func() (uint64, uint64) {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc, ms.StackInuse
	}
	// Warm up: one connection so the pool's HTTP/2 connections exist.
	h0, s0 := measure()
	apps := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range apps {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		apps = append(apps, c)
	}
	// Wait until every connection reached the upstream.
	deadline := time.Now().Add(time.Minute)
	for len(e.srv.Connections()) < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := len(e.srv.Connections()); got < n {
		b.Fatalf("only %d of %d connections established", got, n)
	}
	time.Sleep(2 * parkAfter) // idle: parked
	h1, s1 := measure()
	return float64(int64(h1)-int64(h0)) / float64(n), float64(int64(s1)-int64(s0)) / float64(n)
}

// tlsClientProxy forwards each accepted TCP connection over mutual TLS to
// the tlsProxy at dst: with tlsProxy, the plain Go mTLS tunnel pair.
func tlsClientProxy(b *testing.B, store *certs.Store, dst netip.AddrPort) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	return forwardEach(b, ln, func() (net.Conn, error) { return tls.Dial("tcp", dst.String(), store.ClientConfig(idClient, idServer)) })
}

// BenchmarkPath moves 64 MiB per iteration through the whole path, app →
// outbound proxy → HBONE client → HBONE server → app, and through a plain
// Go mTLS tunnel pair built from the same copier, interleaved. Metrics:
// MB/s of each and the ratio (HBONE ÷ TLS pair).
func BenchmarkPath(b *testing.B) {
	e := newEnv(b)
	sinkLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	// The far app: "up" reads everything; "down" writes n bytes then closes.
	conns := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := sinkLn.Accept()
			if err != nil {
				close(conns)
				return
			}
			conns <- c
		}
	}()
	b.Cleanup(func() { sinkLn.Close() })
	sink := addrPort(sinkLn.Addr())
	out, err := NewOutbound(OutboundConfig{
		Client: e.cli,
		Routes: RouterFunc(func(src, dst, _ netip.AddrPort) (Route, error) {
			return Route{Mode: HBONE, Src: idClient, Dst: idServer, HBONEAddr: e.hbone}, nil
		}),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return sink, nil },
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- out.Serve(ctx, ln) }()
	b.Cleanup(func() { cancel(); <-served })
	hboneAddr := addrPort(ln.Addr())
	pairAddr := tlsClientProxy(b, e.store, tlsProxy(b, e.store, sink))

	const size = 64 << 20
	for _, dir := range []string{"up", "down"} {
		b.Run(dir, func(b *testing.B) {
			run := func(addr netip.AddrPort) time.Duration {
				c, err := net.Dial("tcp", addr.String())
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				far := <-conns
				defer far.Close()
				if dir == "up" {
					return transfer(c, far, size)
				}
				return transfer(far, c, size)
			}
			var hb, tl time.Duration
			for b.Loop() {
				hb += run(hboneAddr)
				tl += run(pairAddr)
			}
			mb := float64(size) * float64(b.N) / 1e6
			b.ReportMetric(mb/hb.Seconds(), "hbone-MB/s")
			b.ReportMetric(mb/tl.Seconds(), "tlspair-MB/s")
			b.ReportMetric(tl.Seconds()/hb.Seconds(), "hbone/tlspair")
		})
	}
	// 1 KiB request/response over each path, interleaved: the far app
	// echoes.
	b.Run("rr1k", func(b *testing.B) {
		open := func(addr netip.AddrPort) net.Conn {
			c, err := net.Dial("tcp", addr.String())
			if err != nil {
				b.Fatal(err)
			}
			far := <-conns
			go func() { io.Copy(far, far); far.Close() }()
			return c
		}
		hc, tc := open(hboneAddr), open(pairAddr)
		defer hc.Close()
		defer tc.Close()
		msg, resp := make([]byte, 1024), make([]byte, 1024)
		var hlat, tlat []time.Duration
		rr := func(c net.Conn, lat *[]time.Duration) {
			for range 200 {
				t0 := time.Now()
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					b.Fatal(err)
				}
				*lat = append(*lat, time.Since(t0))
			}
		}
		for b.Loop() {
			rr(hc, &hlat)
			rr(tc, &tlat)
		}
		slices.Sort(hlat)
		slices.Sort(tlat)
		us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
		b.ReportMetric(us(hlat[len(hlat)/2]), "hbone-p50-µs")
		b.ReportMetric(us(tlat[len(tlat)/2]), "tlspair-p50-µs")
		b.ReportMetric(float64(hlat[len(hlat)/2])/float64(tlat[len(tlat)/2]), "hbone/tlspair-p50")
	})
}

// BenchmarkHOL measures 1 KiB round trips on one stream alone, while a bulk
// upload shares its HTTP/2 connection, and while the bulk upload runs on
// another connection (the CPU contention alone). Metrics: p50 and p99 and
// the p99 ratio (shared with bulk ÷ alone).
func BenchmarkHOL(b *testing.B) {
	e := newEnv(b)
	backend := newBackend(b, echo)
	drain := newBackend(b, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	rr, err := e.dial(context.Background(), backend.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer rr.Close()
	msg, resp := make([]byte, 1024), make([]byte, 1024)
	measure := func(n int) (p50, p99 time.Duration) {
		lat := make([]time.Duration, 0, n)
		for range n {
			t0 := time.Now()
			if _, err := rr.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(rr, resp); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		slices.Sort(lat)
		return lat[n/2], lat[n*99/100]
	}
	withBulk := func(shared bool) (p50, p99 time.Duration) {
		req := DialRequest{Src: idClient, Dst: idServer, HBONEAddr: e.hbone, Authority: drain.addr,
			SrcAddr: netip.MustParseAddrPort("127.0.0.1:40000")}
		if !shared {
			req.SrcAddr = netip.MustParseAddrPort("127.0.0.2:40000") // another pool key
		}
		bulk, err := e.cli.Dial(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		stop, done := writeUntilStopped(bulk, 256<<10)
		time.Sleep(20 * time.Millisecond)
		p50, p99 = measure(2000)
		stop()
		bulk.Close()
		<-done
		return p50, p99
	}
	for b.Loop() {
		a50, a99 := measure(2000)
		w50, w99 := withBulk(true)
		_, s99 := withBulk(false)
		us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
		b.ReportMetric(us(s99), "bulk-other-conn-p99-µs")
		b.ReportMetric(us(a50), "alone-p50-µs")
		b.ReportMetric(us(a99), "alone-p99-µs")
		b.ReportMetric(us(w50), "bulk-p50-µs")
		b.ReportMetric(us(w99), "bulk-p99-µs")
		b.ReportMetric(float64(w99)/float64(a99), "p99-ratio")
	}
}
