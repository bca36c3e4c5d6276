package adversarial

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/internal/h2peer"
)

// closeBound is how long any stalled or idle connection may live: the
// agent's handshake and first-stream timeouts are 10 s, its keepalive 10 s
// plus a 20 s PING timeout. A connection still open after this fails the
// test.
const closeBound = 60 * time.Second

// TestSlowloris holds connections that stall at each stage before a stream
// exists, plus established tunnels whose peer stops answering, and checks
// that the agent closes every one within closeBound and returns to its
// baseline goroutines and fds.
func TestSlowloris(t *testing.T) {
	t.Parallel()
	a := startAgent(t, baseManifests)
	echo := startEcho(t, serverPod)
	base := a.usage()
	cert := a.leaf(fooID("remote"))

	type stage struct {
		name string
		n    int
		// open returns a connection stalled at the stage.
		open func() (net.Conn, error)
	}
	tcp := func() (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: remotePod.AsSlice()}, Timeout: 10 * time.Second}
		return d.DialContext(t.Context(), "tcp4", a.hbone.String())
	}
	httpPort := func(addr netip.AddrPort, partial string) func() (net.Conn, error) {
		return func() (net.Conn, error) {
			c, err := net.DialTimeout("tcp4", addr.String(), 10*time.Second)
			if err == nil && partial != "" {
				_, err = io.WriteString(c, partial)
			}
			return c, err
		}
	}
	stages := []stage{
		{"metrics port, idle", 10, httpPort(a.metrics, "")},
		{"metrics port, partial request", 10, httpPort(a.metrics, "GET /metrics HTTP/1.1\r\nHost: x\r\n")},
		{"readiness port, partial request", 10, httpPort(a.ready, "GET /healthz/ready HTT")},
		{"admin port, partial request", 10, httpPort(a.admin, "GET /config_dump HTTP/1.1\r\n")},
		{"no ClientHello", 40, tcp},
		{"partial ClientHello", 40, func() (net.Conn, error) {
			c, err := tcp()
			if err == nil {
				_, err = c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc}) // a record header and a few bytes
			}
			return c, err
		}},
		{"ClientHello trickled 1 B/s", 10, func() (net.Conn, error) {
			c, err := tcp()
			if err != nil {
				return nil, err
			}
			hello := []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}
			hello = append(hello, make([]byte, 200)...)
			go func() {
				for _, b := range hello {
					if _, err := c.Write([]byte{b}); err != nil {
						return
					}
					time.Sleep(time.Second)
				}
			}()
			return c, nil
		}},
		{"no preface after TLS", 20, func() (net.Conn, error) {
			return dialTLS(t.Context(), remotePod, a.hbone, a.peerTLS(cert))
		}},
		{"no stream after SETTINGS", 20, func() (net.Conn, error) {
			tc, err := dialTLS(t.Context(), remotePod, a.hbone, a.peerTLS(cert))
			if err != nil {
				return nil, err
			}
			if _, err := h2peer.Client(tc, bigWindow); err != nil {
				tc.Close()
				return nil, err
			}
			return tc, nil
		}},
		{"tunnel peer stops answering", 10, func() (net.Conn, error) {
			// An open tunnel whose peer then neither reads nor answers PINGs:
			// half-open from the agent's point of view.
			tc, err := dialTLS(t.Context(), remotePod, a.hbone, a.peerTLS(cert))
			if err != nil {
				return nil, err
			}
			p, err := h2peer.Client(tc, bigWindow)
			if err == nil {
				err = p.Connect(1, echo.addr.String())
			}
			if err == nil {
				var st int
				st, err = p.Status(1, 10*time.Second)
				if err == nil && st != 200 {
					err = fmt.Errorf("CONNECT status %d", st)
				}
			}
			if err != nil {
				tc.Close()
				return nil, err
			}
			return tc, nil
		}},
	}
	type result struct {
		stage  string
		closed time.Duration // 0: still open at the bound
	}
	results := make(chan result, 200)
	start := time.Now()
	var wg sync.WaitGroup
	total := 0
	for _, s := range stages {
		total += s.n
		for range s.n {
			c, err := s.open()
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			opened := time.Now()
			wg.Go(func() {
				defer c.Close()
				// Wait for the agent to close, reading nothing that matters:
				// for a TLS connection read the raw socket so no alert or
				// PING is answered.
				raw := c
				if tc, ok := c.(*tls.Conn); ok {
					raw = tc.NetConn()
				}
				raw.SetReadDeadline(opened.Add(closeBound))
				buf := make([]byte, 4096)
				for {
					if _, err := raw.Read(buf); err != nil {
						if ne, ok := err.(net.Error); ok && ne.Timeout() {
							results <- result{s.name, 0}
						} else {
							results <- result{s.name, time.Since(opened)}
						}
						return
					}
				}
			})
		}
	}
	held := a.usage()
	// Readiness and metrics still answer while the agent holds all of them.
	if resp, err := http.Get("http://" + a.ready.String() + "/healthz/ready"); err != nil || resp.StatusCode != 200 {
		t.Errorf("readiness during slowloris: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	wg.Wait()
	close(results)
	worst := map[string][]time.Duration{}
	for r := range results {
		if r.closed == 0 {
			t.Errorf("%s: a connection was still open after %v", r.stage, closeBound)
			continue
		}
		worst[r.stage] = append(worst[r.stage], r.closed)
	}
	for _, s := range stages {
		d := worst[s.name]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		if len(d) > 0 {
			t.Logf("%-28s %3d connections closed by the agent after %v … %v", s.name, len(d), d[0].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
		}
	}
	t.Logf("slowloris: %d connections held for %v; agent while held %v (baseline %v)", total, time.Since(start).Round(time.Second), held, base)
	if u, ok := a.settle(base, settleG, settleF, settleLimit); !ok {
		t.Errorf("after slowloris: %v, baseline %v", u, base)
	}
}

// TestSlowPeerServer turns slowloris around: the peer node's HBONE server
// accepts and then stalls, before TLS or after it (answering PINGs but
// never a CONNECT). The agent's outbound connections to it must end within
// closeBound, with no data, and leave nothing behind.
func TestSlowPeerServer(t *testing.T) {
	t.Parallel()
	a := startAgent(t, baseManifests)
	base := a.usage()
	peerAddr := netip.AddrPortFrom(remotePod, a.hbone.Port())
	peerCert := a.leaf(fooID("remote")) // the right identity: only the stall is wrong
	for _, tc := range []struct {
		name  string
		serve func(c net.Conn) // holds c until it fails
	}{
		{"no TLS", func(c net.Conn) { io.Copy(io.Discard, c) }},
		{"never answers CONNECT", func(c net.Conn) {
			tc := tls.Server(c, certstest.PeerConfig(peerCert))
			if tc.Handshake() != nil {
				return
			}
			preface := make([]byte, len(http2.ClientPreface))
			if _, err := io.ReadFull(tc, preface); err != nil {
				return
			}
			fr := http2.NewFramer(tc, tc)
			fr.WriteSettings()
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				switch f := f.(type) {
				case *http2.SettingsFrame:
					if !f.IsAck() {
						fr.WriteSettingsAck()
					}
				case *http2.PingFrame:
					if !f.IsAck() {
						fr.WritePing(true, f.Data)
					}
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp4", peerAddr.String())
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			defer func() { ln.Close(); wg.Wait() }()
			var mu sync.Mutex
			var held []net.Conn
			defer func() {
				mu.Lock()
				for _, c := range held {
					c.Close()
				}
				mu.Unlock()
			}()
			wg.Go(func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					mu.Lock()
					held = append(held, c)
					mu.Unlock()
					wg.Go(func() { tc.serve(c) })
				}
			})
			const n = 20
			closed := make(chan time.Duration, n)
			for range n {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: clientPod.AsSlice()}, Timeout: 5 * time.Second}
				c, err := d.DialContext(t.Context(), "tcp4", a.outbound.String())
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				go func() {
					defer c.Close()
					c.Write([]byte("hello"))
					c.SetReadDeadline(start.Add(closeBound))
					k, err := c.Read(make([]byte, 1))
					if ne, ok := err.(net.Error); (ok && ne.Timeout()) || k > 0 {
						closed <- 0
						return
					}
					closed <- time.Since(start)
				}()
			}
			var worst time.Duration
			for range n {
				d := <-closed
				if d == 0 {
					t.Fatalf("a client connection through a stalled peer was still open (or got data) after %v", closeBound)
				}
				worst = max(worst, d)
			}
			t.Logf("%s: %d client connections closed by the agent within %v", tc.name, n, worst.Round(time.Millisecond))
		})
	}
	if u, ok := a.settle(base, settleG, settleF, settleLimit); !ok {
		t.Errorf("after stalled peers: %v, baseline %v", u, base)
	}
}
