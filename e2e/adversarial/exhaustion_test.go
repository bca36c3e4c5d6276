package adversarial

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/internal/h2peer"
)

// Budgets for one HTTP/2 attack against an agent that otherwise carries one
// victim stream. Growth is measured from the agent's own metrics, peak
// during the attack minus the baseline before it.
const (
	budgetGoroutines = 2500     // peak extra goroutines during any attack
	budgetHeap       = 96 << 20 // peak extra heap in use during any attack
	budgetFDs        = 1200     // peak extra open fds during any attack
	settleG, settleF = 25, 25   // goroutines/fds above baseline once the attack is over
	settleLimit      = 30 * time.Second
	controlFloodHeap = 16 << 20 // heap one control-frame flood connection may cost
)

// attackEnv is an agent with an echo upstream and a victim stream.
type attackEnv struct {
	t    *testing.T
	a    *agent
	echo *echoServer
	v    *victim
	base usage
}

func newAttackEnv(t *testing.T) *attackEnv {
	a := startAgent(t, baseManifests)
	e := &attackEnv{t: t, a: a, echo: startEcho(t, serverPod)}
	var err error
	e.v, err = newVictim(t.Context(), a, e.echo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.v.p.Close() })
	if err := e.v.check(); err != nil {
		t.Fatal(err)
	}
	e.base = a.usage()
	return e
}

// attack runs fn while sampling the agent, checks the victim during and
// after, and enforces the budgets. It returns the peak usage.
func (e *attackEnv) attack(name string, fn func(ctx context.Context)) usage {
	t := e.t
	t.Helper()
	base := e.a.usage()
	m := e.a.monitor(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	var victimErr error
	var checks int
	stopVictim := make(chan struct{})
	victimDone := make(chan struct{})
	go func() {
		defer close(victimDone)
		for {
			select {
			case <-stopVictim:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if err := e.v.check(); err != nil {
				victimErr = err
				return
			}
			checks++
		}
	}()
	fn(ctx)
	close(stopVictim)
	<-victimDone
	peak, samples := m.Stop()
	if victimErr != nil {
		t.Errorf("%s: the victim stream failed during the attack: %v", name, victimErr)
	} else if err := e.v.check(); err != nil {
		t.Errorf("%s: the victim stream failed after the attack: %v", name, err)
	}
	t.Logf("%s: baseline %v; peak %v (%d samples, %d victim round trips)", name, base, peak, samples, checks)
	if g := peak.goroutines - base.goroutines; g > budgetGoroutines {
		t.Errorf("%s: %+.0f goroutines at peak, budget %d", name, g, budgetGoroutines)
	}
	if h := peak.heapInuse - base.heapInuse; h > budgetHeap {
		t.Errorf("%s: %+.1f MiB heap at peak, budget %d MiB", name, h/(1<<20), budgetHeap>>20)
	}
	if f := peak.fds - base.fds; f > budgetFDs {
		t.Errorf("%s: %+.0f fds at peak, budget %d", name, f, budgetFDs)
	}
	if !e.a.alive() {
		t.Fatalf("%s: the agent died", name)
	}
	return peak
}

// settled checks that goroutines and fds return to the baseline.
func (e *attackEnv) settled(name string) {
	e.t.Helper()
	u, ok := e.a.settle(e.base, settleG, settleF, settleLimit)
	if !ok {
		e.t.Errorf("%s: %v %s after the attack, baseline %v", name, u, "not settled", e.base)
	}
}

// drain reads and discards p's frames until the connection fails, calling
// onGoAway for each GOAWAY.
func drain(p *h2peer.Peer, onGoAway func()) {
	for {
		ev := p.Next(time.Now().Add(60*time.Second), false)
		if ev.Err != nil && ev.Stream == 0 {
			var g h2peer.GoAwayError
			if errors.As(ev.Err, &g) {
				onGoAway()
				continue
			}
			return
		}
	}
}

// TestHTTP2RapidReset opens thousands of CONNECT streams and resets each at
// once (CVE-2023-44487), on several connections at a time.
func TestHTTP2RapidReset(t *testing.T) {
	e := newAttackEnv(t)
	const workers, rounds, streams = 8, 5, 1000
	const conns = workers * rounds
	var sent, stopped atomic.Int64
	e.attack("rapid reset", func(ctx context.Context) {
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for range rounds {
					rapidReset(ctx, t, e, streams, &sent, &stopped)
				}
			})
		}
		wg.Wait()
	})
	upstream := e.echo.accepted.Load() - 1 // minus the victim
	t.Logf("rapid reset: %d HEADERS+RST_STREAM pairs written on %d connections; %d connections stopped by GOAWAY or close; %d upstream dials",
		sent.Load(), conns, stopped.Load(), upstream)
	// Every attacking connection is called off (GOAWAY ENHANCE_YOUR_CALM
	// after 200 early resets), and a reset stream costs no upstream dial,
	// give or take a race between the reset and the handler: budget 10 per
	// attacking connection.
	if stopped.Load() != conns {
		t.Errorf("%d of %d attacking connections were never sent GOAWAY or closed", conns-stopped.Load(), conns)
	}
	if upstream > conns*10 {
		t.Errorf("%d upstream connections for %d reset streams, budget %d", upstream, sent.Load(), conns*10)
	}
	e.settled("rapid reset")
}

// rapidReset runs one connection of the rapid-reset attack: streams
// HEADERS+RST_STREAM pairs as fast as the socket takes them. It counts the
// pairs written, and the connection in stopped if the server sent GOAWAY or
// closed it within 5 s of the last pair.
func rapidReset(ctx context.Context, t *testing.T, e *attackEnv, streams int, sent, stopped *atomic.Int64) {
	p, err := dialH2(ctx, remotePod, e.a.hbone, e.a.peerTLS(e.a.leaf(fooID("remote"))))
	if err != nil {
		t.Error(err)
		return
	}
	goaway, done := make(chan struct{}, 1), make(chan struct{})
	go func() {
		drain(p, func() {
			select {
			case goaway <- struct{}{}:
			default:
			}
		})
		close(done)
	}()
	defer func() { p.Close(); <-done }()
	block := p.Encode(h2peer.ConnectFields(e.echo.addr.String())...)
	for i := range streams {
		id := uint32(2*i + 1)
		err := p.WriteFrames(func(fr *http2.Framer) error {
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}); err != nil {
				return err
			}
			return fr.WriteRSTStream(id, http2.ErrCodeCancel)
		})
		if err != nil {
			break // the server gave up on us
		}
		sent.Add(1)
	}
	select {
	case <-goaway:
	case <-done:
	case <-time.After(5 * time.Second):
		return
	}
	stopped.Add(1)
}

// TestHTTP2HeaderFloods sends header blocks that never end or decode to far
// more than the limit (CVE-2023-45288 CONTINUATION flood, HPACK
// amplification, one oversized literal), on many connections at once.
func TestHTTP2HeaderFloods(t *testing.T) {
	e := newAttackEnv(t)
	const conns = 30
	filler := bytes.Repeat([]byte{0}, 16<<10)
	for _, tc := range []struct {
		name string
		// flood writes the attack on p and returns the header bytes it got
		// written before the server stopped it.
		flood func(p *h2peer.Peer) (written int, err error)
	}{
		{"CONTINUATION flood", func(p *h2peer.Peer) (int, error) {
			n := 0
			block := p.Encode(h2peer.ConnectFields(e.echo.addr.String())...)
			err := p.WriteFrames(func(fr *http2.Framer) error {
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block}); err != nil {
					return err
				}
				for n < 64<<20 {
					if err := fr.WriteContinuation(1, false, filler); err != nil {
						return err
					}
					n += len(filler)
				}
				return nil
			})
			return n, err
		}},
		{"empty CONTINUATION frames", func(p *h2peer.Peer) (int, error) {
			n := 0
			block := p.Encode(h2peer.ConnectFields(e.echo.addr.String())...)
			err := p.WriteFrames(func(fr *http2.Framer) error {
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block}); err != nil {
					return err
				}
				for n < 1<<20 {
					if err := fr.WriteContinuation(1, false, nil); err != nil {
						return err
					}
					n += 9
				}
				return nil
			})
			return n, err
		}},
		{"HPACK amplification", func(p *h2peer.Peer) (int, error) {
			// One 4 KiB header in the dynamic table, then a block that
			// references it 4000 times: ~16 MiB decoded from ~4 KiB sent.
			block := p.Encode(h2peer.ConnectFields(e.echo.addr.String(),
				hpack.HeaderField{Name: "x-big", Value: strings.Repeat("a", 4000)})...)
			// The newest dynamic entry has index 62: 0x80|62 is one byte.
			block = append(block, bytes.Repeat([]byte{0x80 | 62}, 4000)...)
			return len(block), p.WriteHeaderBlock(1, false, true, block)
		}},
		{"1 MiB literal", func(p *h2peer.Peer) (int, error) {
			block := p.Encode(h2peer.ConnectFields(e.echo.addr.String(),
				hpack.HeaderField{Name: "x-big", Value: strings.Repeat("b", 1<<20-64)})...)
			n := len(block)
			if n > 1<<20 {
				block = block[:1<<20]
			}
			return n, p.WriteHeaderBlock(1, false, true, block)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			var mu sync.Mutex
			var maxWritten int
			outcomes := map[string]int{}
			e.attack(tc.name, func(ctx context.Context) {
				var wg sync.WaitGroup
				for range conns {
					wg.Go(func() {
						p, err := dialH2(ctx, remotePod, e.a.hbone, e.a.peerTLS(e.a.leaf(fooID("remote"))))
						if err != nil {
							t.Error(err)
							return
						}
						defer p.Close()
						res := make(chan string, 1)
						go func() { res <- outcome(p) }()
						n, _ := tc.flood(p)
						out := <-res
						mu.Lock()
						maxWritten = max(maxWritten, n)
						outcomes[out]++
						mu.Unlock()
					})
				}
				wg.Wait()
			})
			t.Logf("%s: outcomes %v; at most %d header bytes written on one connection", tc.name, outcomes, maxWritten)
			if outcomes["200"] > 0 {
				t.Errorf("%s: %d streams were accepted", tc.name, outcomes["200"])
			}
			if outcomes["timeout"] > 0 {
				t.Errorf("%s: %d connections got no answer within 30s", tc.name, outcomes["timeout"])
			}
		})
	}
	e.t = t
	if n := e.echo.accepted.Load(); n != 1 {
		t.Errorf("upstream accepted %d connections, want only the victim's", n)
	}
	e.settled("header floods")
}

// outcome reads p until the server answers stream 1 or ends the
// connection: "200", "status N", "RST_STREAM code", "GOAWAY code", "closed"
// or "timeout".
func outcome(p *h2peer.Peer) string {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ev := p.Next(deadline, false)
		var g h2peer.GoAwayError
		var r h2peer.ResetError
		var ne net.Error
		switch {
		case errors.As(ev.Err, &g):
			p.Close() // unblock the flooding writer
			return "GOAWAY " + g.Code.String()
		case errors.As(ev.Err, &r) && ev.Stream == 1:
			p.Close()
			return "RST_STREAM " + r.Code.String()
		case errors.As(ev.Err, &ne) && ne.Timeout():
			p.Close()
			return "timeout"
		case ev.Err != nil && ev.Stream == 0:
			p.Close()
			return "closed"
		case ev.Stream == 1 && ev.Status == 200:
			p.Close()
			return "200"
		case ev.Stream == 1 && ev.Status != 0:
			p.Close()
			return "status " + strconv.Itoa(ev.Status)
		}
	}
}

// TestHTTP2StreamLimit opens more streams than the server advertises on
// several connections and holds them: the excess is refused, the held
// streams cost a bounded amount each.
func TestHTTP2StreamLimit(t *testing.T) {
	e := newAttackEnv(t)
	const conns, extra = 5, 50
	var held, refused, advertised atomic.Int64
	var peak usage
	var hold sync.WaitGroup
	release := make(chan struct{})
	peak = e.attack("stream limit", func(ctx context.Context) {
		var wg sync.WaitGroup
		for range conns {
			wg.Add(1)
			hold.Go(func() {
				p, err := dialH2(ctx, remotePod, e.a.hbone, e.a.peerTLS(e.a.leaf(fooID("remote"))))
				if err != nil {
					t.Error(err)
					wg.Done()
					return
				}
				defer p.Close()
				// Read the server's SETTINGS first.
				settings, err := p.WaitSettings(10 * time.Second)
				if err != nil {
					t.Error(err)
					wg.Done()
					return
				}
				limit := uint32(0)
				for _, s := range settings {
					if s.ID == http2.SettingMaxConcurrentStreams {
						limit = s.Val
					}
				}
				advertised.Store(int64(limit))
				total := int(limit) + extra
				for i := range total {
					p.Connect(uint32(2*i+1), e.echo.addr.String())
				}
				ok, no := 0, 0
				for ok+no < total {
					ev := p.Next(time.Now().Add(20*time.Second), false)
					switch {
					case ev.Err != nil && ev.Stream == 0:
						t.Errorf("connection failed after %d accepted, %d refused: %v", ok, no, ev.Err)
						wg.Done()
						return
					case ev.Err != nil:
						no++
					case ev.Status == 200:
						ok++
					case ev.Status != 0:
						no++
					}
				}
				held.Add(int64(ok))
				refused.Add(int64(no))
				wg.Done()
				<-release // hold the streams while the peak is sampled
			})
		}
		wg.Wait()
		time.Sleep(time.Second)
	})
	close(release)
	hold.Wait()
	perStream := (peak.heapInuse - e.base.heapInuse) / float64(max(held.Load(), 1))
	t.Logf("stream limit: advertised %d; %d streams held on %d connections, %d refused; %.1f KiB heap and %.2f goroutines per held stream",
		advertised.Load(), held.Load(), conns, refused.Load(), perStream/1024, (peak.goroutines-e.base.goroutines)/float64(max(held.Load(), 1)))
	if advertised.Load() == 0 {
		t.Fatal("the server advertised no SETTINGS_MAX_CONCURRENT_STREAMS")
	}
	if held.Load() > conns*advertised.Load() {
		t.Errorf("%d streams accepted, more than %d connections × %d advertised", held.Load(), conns, advertised.Load())
	}
	if refused.Load() < conns*extra {
		t.Errorf("%d streams refused, want at least %d", refused.Load(), conns*extra)
	}
	e.settled("stream limit")
}

// TestHTTP2PeerNeverReads opens streams to an upstream that sends without
// end and never reads the connection: the agent must buffer a bounded
// amount (flow control), and other tenants keep working.
func TestHTTP2PeerNeverReads(t *testing.T) {
	e := newAttackEnv(t)
	blaster := startBlaster(t)
	const conns, streams = 4, 25
	var opened atomic.Int64
	peers := make(chan *h2peer.Peer, conns)
	e.attack("never reads", func(ctx context.Context) {
		var wg sync.WaitGroup
		for range conns {
			wg.Go(func() {
				p, err := dialH2(ctx, remotePod, e.a.hbone, e.a.peerTLS(e.a.leaf(fooID("remote"))))
				if err != nil {
					t.Error(err)
					return
				}
				peers <- p
				for i := range streams {
					p.Connect(uint32(2*i+1), blaster.String())
				}
				// Read only up to the responses, then never again.
				got := 0
				for got < streams {
					ev := p.Next(time.Now().Add(10*time.Second), true)
					if ev.Err != nil && ev.Stream == 0 {
						t.Error(ev.Err)
						return
					}
					if ev.Status == 200 {
						got++
					}
				}
				opened.Add(int64(got))
			})
		}
		wg.Wait()
		time.Sleep(5 * time.Second) // the upstreams keep sending; the agent must not keep reading
	})
	close(peers)
	for p := range peers {
		p.Close()
	}
	t.Logf("never reads: %d streams stalled with an upstream sending without end", opened.Load())
	e.settled("never reads")
}

// startBlaster serves an upstream that writes random bytes until the
// connection breaks, on serverPod.
func startBlaster(t testing.TB) net.Addr {
	t.Helper()
	ln, err := net.Listen("tcp4", serverPod.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	buf := make([]byte, 64<<10)
	rand.Read(buf)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetWriteDeadline(time.Now().Add(60 * time.Second))
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			})
		}
	})
	return ln.Addr()
}

// TestHTTP2ControlFrameFlood sends frames that each oblige the server to
// answer (PING, SETTINGS) while never reading a byte (CVE-2019-9512,
// CVE-2019-9515): the answers must not pile up without bound in the agent.
func TestHTTP2ControlFrameFlood(t *testing.T) {
	e := newAttackEnv(t)
	const frames = 1_500_000 // ~25 MiB on the wire per flood
	for _, tc := range []struct {
		name  string
		frame func(fr *http2.Framer, i int) error
	}{
		{"PING", func(fr *http2.Framer, i int) error {
			return fr.WritePing(false, [8]byte{byte(i), byte(i >> 8), byte(i >> 16)})
		}},
		{"SETTINGS", func(fr *http2.Framer, i int) error { return fr.WriteSettings() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			var written atomic.Int64
			var werr error
			base := e.a.usage()
			peak := e.attack(tc.name+" flood", func(ctx context.Context) {
				p, err := dialH2(ctx, remotePod, e.a.hbone, e.a.peerTLS(e.a.leaf(fooID("remote"))))
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
				// Never read: the agent's answers back up into its own memory
				// unless it bounds them.
				p.Conn().SetWriteDeadline(time.Now().Add(30 * time.Second))
				werr = p.WriteFrames(func(fr *http2.Framer) error {
					for i := range frames {
						if err := tc.frame(fr, i); err != nil {
							return err
						}
						written.Add(1)
					}
					return nil
				})
				time.Sleep(500 * time.Millisecond) // let the agent catch up with what it read
			})
			grew := peak.heapInuse - base.heapInuse
			t.Logf("%s flood: %d of %d frames written before the agent stopped reading or closed (%v); heap +%.1f MiB",
				tc.name, written.Load(), frames, werr, grew/(1<<20))
			// One connection may cost at most controlFloodHeap: the agent
			// caps its queue of unsent answers and drops the connection.
			if grew > controlFloodHeap {
				t.Errorf("one connection of %d %s frames grew the agent's heap by %.0f MiB, budget %d MiB",
					frames, tc.name, grew/(1<<20), controlFloodHeap>>20)
			}
			if werr == nil {
				t.Errorf("the agent read all %d %s frames without ever answering by closing", frames, tc.name)
			}
		})
	}
	e.t = t
	e.settled("control frame floods")
}

// TestHTTP2FlowControlViolation sends DATA far beyond the windows the agent
// granted, towards an application that never reads: the agent must stop
// the peer at its windows (4 MiB per stream, 16 MiB per connection), not
// buffer what it is sent.
func TestHTTP2FlowControlViolation(t *testing.T) {
	e := newAttackEnv(t)
	sink := startSink(t)
	const conns, perConn = 10, 64 << 20
	frame := make([]byte, 1<<20)
	var mu sync.Mutex
	outcomes := map[string]int{}
	var maxWritten int64
	e.attack("flow control violation", func(ctx context.Context) {
		var wg sync.WaitGroup
		for range conns {
			wg.Go(func() {
				p, err := dialH2(ctx, remotePod, e.a.hbone, e.a.peerTLS(e.a.leaf(fooID("remote"))))
				if err != nil {
					t.Error(err)
					return
				}
				defer p.Close()
				p.Connect(1, sink.String())
				if st, err := p.Status(1, 10*time.Second); st != 200 {
					t.Errorf("CONNECT to the sink: %d %v", st, err)
					return
				}
				res := make(chan string, 1)
				go func() { res <- outcome(p) }()
				var n int64
				p.Conn().SetWriteDeadline(time.Now().Add(30 * time.Second))
				p.WriteFrames(func(fr *http2.Framer) error {
					for n < perConn {
						if err := fr.WriteData(1, false, frame); err != nil {
							return err
						}
						n += int64(len(frame))
					}
					return nil
				})
				out := <-res
				mu.Lock()
				outcomes[out]++
				maxWritten = max(maxWritten, n)
				mu.Unlock()
			})
		}
		wg.Wait()
	})
	t.Logf("flow control violation: outcomes %v; at most %d MiB written on one connection", outcomes, maxWritten>>20)
	if outcomes["timeout"] > 0 || outcomes["200"] > 0 {
		t.Errorf("%d connections were not stopped", outcomes["timeout"])
	}
	e.settled("flow control violation")
}

// startSink serves an application on serverPod that accepts and never
// reads.
func startSink(t testing.TB) net.Addr {
	t.Helper()
	ln, err := net.Listen("tcp4", serverPod.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	return ln.Addr()
}

// TestHandshakeFlood completes mTLS handshakes as fast as four clients can
// and drops each connection at once: the CPU-bound attack on 15008. Other
// tenants keep working; the test reports what one handshake costs the
// agent in CPU.
func TestHandshakeFlood(t *testing.T) {
	e := newAttackEnv(t)
	cert := e.a.leaf(fooID("remote"))
	cpu := func() float64 { return e.a.mustScrape().Sum("process_cpu_seconds_total") }
	var done, failed atomic.Int64
	cpu0 := cpu()
	start := time.Now()
	e.attack("handshake flood", func(ctx context.Context) {
		end := time.Now().Add(5 * time.Second)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for time.Now().Before(end) {
					tc, err := dialTLS(ctx, remotePod, e.a.hbone, e.a.peerTLS(cert))
					if err != nil {
						if failed.Add(1) <= 3 {
							t.Logf("handshake failed: %v", err)
						}
						continue
					}
					// Wait for the server's SETTINGS so the handshake counts
					// as accepted, then drop the connection.
					if p, err := h2peer.Client(tc, bigWindow); err == nil {
						p.WaitSettings(5 * time.Second)
					}
					tc.Close()
					done.Add(1)
				}
			})
		}
		wg.Wait()
	})
	elapsed := time.Since(start)
	used := cpu() - cpu0
	t.Logf("handshake flood: %d handshakes in %v (%.0f/s), %d failed; agent CPU %.2f s, %.2f ms per handshake",
		done.Load(), elapsed.Round(time.Millisecond), float64(done.Load())/elapsed.Seconds(), failed.Load(), used, 1000*used/float64(max(done.Load(), 1)))
	if failed.Load() > 0 {
		t.Errorf("%d handshakes failed", failed.Load())
	}
	e.settled("handshake flood")
}
