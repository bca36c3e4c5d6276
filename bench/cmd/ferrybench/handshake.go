package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferrymesh/ferry/bench/gotls"
	"github.com/ferrymesh/ferry/internal/netns"
)

// h2Preface is an HTTP/2 client connection preface and an empty SETTINGS
// frame: what a client sends right after the TLS handshake.
var h2Preface = append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)

// h2Settings is an empty SETTINGS frame: a server's first frame.
var h2Settings = []byte{0, 0, 0, 4, 0, 0, 0, 0, 0}

// plainTLSPort is the port, at the server pod's address in node b, of the
// plain Go crypto/tls server the handshake benchmark sets against Ferry's.
const plainTLSPort = 15060

// hsServer is one TLS server process the handshake benchmark runs against.
type hsServer struct {
	name string // the raw figures' peer
	proc *proc  // whose CPU counts: the server process alone
	dst  netip.AddrPort
	// prof, when set, is the peer whose admin endpoints leave CPU profiles
	// (-profile) while the server is measured.
	prof *peer
}

// handshakes measures full mTLS handshakes (ECDSA P-256 certificates, no
// resumption) against Ferry's server side, with that agent's CPU per
// handshake: X25519 against node b's agent and, interleaved with it, a
// plain Go crypto/tls server with the same certificates (`ferrybench
// tlsserver`); X25519MLKEM768 against a second agent in node b started
// with --post-quantum for the measurement. Each handshake sends the HTTP/2
// preface and waits for the server's first frame, which comes only after
// the server verified the client's certificate and Finished. Resumed
// handshakes are not measured: Ferry's HBONE server issues no session
// tickets, as ztunnel's client does not resume.
func (s *suite) handshakes(ctx context.Context) {
	p := s.peer("ferry")
	if p == nil {
		return
	}
	s.rec.Skipped["tls/handshake-resumed/ferry"] = "Ferry's HBONE server issues no session tickets (as ztunnel's client disables resumption): every HBONE connection is a full mTLS handshake"
	const bench = "tls/handshake-x25519"
	servers := []hsServer{{name: p.name, proc: p.procs[1], dst: netip.AddrPortFrom(serverPod, hbonePort), prof: p}}
	plain, err := startPlainTLS(ctx, s.env)
	if err != nil {
		s.fail(bench, p, fmt.Errorf("plain TLS server: %w", err))
		s.rec.Skipped["handshake_cpu_vs_gotls"] = "the plain Go TLS server did not start: " + err.Error()
	} else {
		defer plain.stop()
		servers = append(servers, hsServer{name: "go-tls", proc: plain, dst: netip.AddrPortFrom(serverPod, plainTLSPort)})
	}
	cpuPer := s.handshakesOver(ctx, p, bench, tls.X25519, servers)
	if f, ok := cpuPer[p.name]; ok {
		s.rec.key("handshakes_per_s_core_x25519", 1e6/f)
		if g, ok := cpuPer["go-tls"]; ok {
			s.rec.key("handshake_cpu_vs_gotls", f/g)
		}
	}
	const pqBench = "tls/handshake-x25519mlkem768"
	pq, err := startFerryPQ(ctx, s.env)
	if err != nil {
		s.fail(pqBench, p, err)
		return
	}
	defer pq.stop()
	s.handshakesOver(ctx, p, pqBench, tls.X25519MLKEM768, []hsServer{{name: p.name, proc: pq, dst: netip.AddrPortFrom(serverPod, pqHBONEPort)}})
}

// handshakesOver runs handshakes offering only curve against each of
// servers, interleaved as the suite's timed benchmarks are (timeSlices
// slices in an order that rotates), after a short unmeasured warm-up, and
// records each one's figures under bench. It returns each server's CPU µs
// per handshake; a server that failed is recorded as failed (against p)
// and left out.
func (s *suite) handshakesOver(ctx context.Context, p *peer, bench string, curve tls.CurveID, servers []hsServer) map[string]float64 {
	cert, err := tls.LoadX509KeyPair(s.env.pki.cert, s.env.pki.key)
	if err != nil {
		s.fail(bench, p, err)
		return nil
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"},
		CurvePreferences: []tls.CurveID{curve}, InsecureSkipVerify: true, SessionTicketsDisabled: true,
	}
	type total struct {
		n       int64
		cpu, el time.Duration
	}
	totals := map[string]*total{}
	failed := map[string]bool{}
	for _, srv := range servers {
		if _, err := handshakeLoop(ctx, s.env.topo.nsA, cfg, srv.dst, s.cfg.hsWorkers, 100*time.Millisecond); err != nil {
			s.fail(bench, p, fmt.Errorf("%s: warm-up: %w", srv.name, err))
			failed[srv.name] = true
		}
		totals[srv.name] = &total{}
	}
	d := s.cfg.dur / timeSlices
	for i := range timeSlices {
		shift := (s.roundNo*timeSlices + i) % len(servers)
		for _, srv := range append(servers[shift:len(servers):len(servers)], servers[:shift]...) {
			if failed[srv.name] {
				continue
			}
			var n int64
			var used, el time.Duration
			run := func() error {
				c0, _ := treeUsage([]int{srv.proc.pid()})
				start := time.Now()
				var err error
				n, err = handshakeLoop(ctx, s.env.topo.nsA, cfg, srv.dst, s.cfg.hsWorkers, d)
				el = time.Since(start)
				c1, _ := treeUsage([]int{srv.proc.pid()})
				used = c1 - c0
				if err == nil && n == 0 {
					err = errors.New("no handshake completed")
				}
				return err
			}
			if srv.prof != nil {
				_, err = s.measureProfiled(bench, srv.prof, s.roundNo == 0 && i == 0, d, run)
			} else {
				err = run()
			}
			if err != nil {
				s.fail(bench, p, fmt.Errorf("%s: %d handshakes: %w", srv.name, n, err))
				failed[srv.name] = true
				continue
			}
			t := totals[srv.name]
			t.n += n
			t.cpu += used
			t.el += el
			settle()
		}
	}
	cpuPer := map[string]float64{}
	for _, srv := range servers {
		t := totals[srv.name]
		if failed[srv.name] || t.n == 0 || t.cpu <= 0 {
			continue
		}
		per := t.cpu.Seconds() * 1e6 / float64(t.n)
		cpuPer[srv.name] = per
		s.rec.raw(bench, srv.name, "handshakes_per_s", "1/s", float64(t.n)/t.el.Seconds())
		s.rec.raw(bench, srv.name, "server_cpu_us_per_handshake", "us", per)
		s.rec.raw(bench, srv.name, "server_handshakes_per_s_core", "1/s", 1e6/per)
	}
	time.Sleep(500 * time.Millisecond)
	return cpuPer
}

// handshakeLoop makes full handshakes with cfg against dst from the
// namespace ns, with workers in parallel, for d: each connects, completes
// the handshake (which must negotiate cfg's one curve), sends the HTTP/2
// preface, waits for the server's first byte and closes. It returns the
// number of handshakes made.
func handshakeLoop(ctx context.Context, ns string, cfg *tls.Config, dst netip.AddrPort, workers int, d time.Duration) (int64, error) {
	curve := cfg.CurvePreferences[0]
	var count atomic.Int64
	errs := make([]error, workers)
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			errs[w] = netns.DoNamed(ns, func() error {
				var one [1]byte
				for time.Now().Before(end) {
					raw, err := dialHere(ctx, netip.Addr{}, dst)
					if err != nil {
						return err
					}
					raw.SetDeadline(time.Now().Add(10 * time.Second))
					tc := tls.Client(raw, cfg)
					if err = tc.Handshake(); err == nil && tc.ConnectionState().CurveID != curve {
						err = fmt.Errorf("negotiated %v, want %v", tc.ConnectionState().CurveID, curve)
					}
					if err == nil {
						_, err = tc.Write(h2Preface)
					}
					if err == nil {
						_, err = tc.Read(one[:])
					}
					tc.Close()
					if err != nil {
						return err
					}
					count.Add(1)
				}
				return nil
			})
		})
	}
	wg.Wait()
	return count.Load(), errors.Join(errs...)
}

// startPlainTLS runs `ferrybench tlsserver` in node b at the server pod's
// address, port plainTLSPort, with the bench's leaf certificate (signed by
// the mesh root Ferry's agents sign theirs with), and waits until it
// listens. The caller stops it.
func startPlainTLS(ctx context.Context, e *env) (*proc, error) {
	dst := netip.AddrPortFrom(serverPod, plainTLSPort)
	pr, err := startProc(e.topo.nsB, e.dir, "go-tls-handshake-server", e.self, "tlsserver",
		"-listen", dst.String(), "-cert", e.pki.cert, "-key", e.pki.key, "-ca", e.pki.caCert)
	if err != nil {
		return nil, err
	}
	if err := waitAccepting(ctx, 30*time.Second, pr, e.topo.nsB, dst); err != nil {
		return nil, err
	}
	return pr, nil
}

// runTLSServer is `ferrybench tlsserver -listen ADDR -cert F -key F -ca F`:
// the plain Go crypto/tls server of the handshake benchmark. Its
// configuration is go-tls's server's (gotls.LoadConfig: TLS 1.3, X25519,
// a client certificate required and verified against the roots, no session
// tickets) with ALPN h2 added; for each connection it completes the
// handshake, reads the client's HTTP/2 preface, answers with an empty
// SETTINGS frame and closes at the client's EOF: on the wire, what Ferry's
// HBONE server does up to its first frame, without HTTP/2 or a SPIFFE check.
func runTLSServer(args []string) int {
	fs := flag.NewFlagSet("ferrybench tlsserver", flag.ExitOnError)
	listen := fs.String("listen", "", "listen address")
	cert := fs.String("cert", "", "certificate chain (PEM)")
	key := fs.String("key", "", "key (PEM)")
	ca := fs.String("ca", "", "roots that verify clients (PEM)")
	fs.Parse(args)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg, err := gotls.LoadConfig(*cert, *key, *ca, "", true)
	if err != nil {
		log.Error("tlsserver", "err", err)
		return 1
	}
	cfg.NextProtos = []string{"h2"}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp4", *listen)
	if err != nil {
		log.Error("tlsserver", "err", err)
		return 1
	}
	if err := serveHandshakes(ctx, ln, cfg); err != nil {
		log.Error("tlsserver", "err", err)
		return 1
	}
	return 0
}

// serveHandshakes is the plain TLS server's loop (see runTLSServer) on ln
// until ctx is done, when it closes ln and returns nil.
func serveHandshakes(ctx context.Context, ln net.Listener, cfg *tls.Config) error {
	context.AfterFunc(ctx, func() { ln.Close() })
	for {
		raw, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("tlsserver: accept: %w", err)
		}
		go func() {
			c := tls.Server(raw, cfg)
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, len(h2Preface))
			if err := c.Handshake(); err != nil {
				return
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(h2Settings); err != nil {
				return
			}
			io.Copy(io.Discard, c)
		}()
	}
}
