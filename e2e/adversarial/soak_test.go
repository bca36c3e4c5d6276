package adversarial

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/ferrymesh/ferry/tunnel"
)

// Soak parameters. FERRY_SOAK overrides the duration (for example 10m).
const (
	soakDefault     = 75 * time.Second
	soakClients     = 4        // HBONE connections carrying the long streams
	soakStreams     = 8        // long streams per connection
	soakStreamRate  = 1 << 20  // bytes/s each long stream sends
	soakConnRate    = 25       // new HBONE connections per second
	soakHeapGrowth  = 16 << 20 // heap in use after the soak, above the baseline
	soakChunk       = 16 << 10 // write size of the long streams
	soakHeapPerConn = 1 << 20  // peak heap per open stream, budget
	soakGoroutines  = 8 * soakClients * soakStreams
)

// TestSoak runs long streams and a steady rate of short connections through
// the agent, checksums every byte both ways, and checks that goroutines,
// fds and heap return to the baseline afterwards.
func TestSoak(t *testing.T) {
	d := soakDefault
	if v := os.Getenv("FERRY_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("FERRY_SOAK=%q: %v", v, err)
		}
	}
	if testing.Short() {
		d = 10 * time.Second
	}
	a := startAgent(t, baseManifests)
	echo := startEcho(t, serverPod)
	clients := make([]*tunnel.Client, soakClients)
	for i := range clients {
		clients[i] = hboneClient(t, a)
	}
	// Warm up (certificates, pools, runtime), then take the baseline.
	for _, c := range clients {
		s, err := dialStream(t.Context(), c, a, echo.addr)
		if err != nil {
			t.Fatal(err)
		}
		echoOnce(s, "warm")
		s.Close()
	}
	time.Sleep(time.Second)
	base := a.usage()
	bytesBefore := a.mustScrape().Sum("istio_tcp_received_bytes_total", "reporter", "destination")
	m := a.monitor(500 * time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()

	var sent, churned, churnFailed atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, soakClients*soakStreams+1)
	for _, c := range clients {
		for range soakStreams {
			wg.Go(func() {
				n, err := longStream(ctx, c, a, echo)
				sent.Add(n)
				if err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Go(func() {
		lim := rate.NewLimiter(soakConnRate, 1)
		var inner sync.WaitGroup
		defer inner.Wait()
		for lim.Wait(ctx) == nil {
			inner.Go(func() {
				msg := fmt.Sprintf("churn %d", churned.Add(1))
				p, err := dialH2(context.WithoutCancel(ctx), remotePod, a.hbone, a.peerTLS(a.leaf(fooID("remote"))))
				if err == nil {
					defer p.Close()
					err = p.Connect(1, echo.addr.String())
				}
				if err == nil {
					var st int
					if st, err = p.Status(1, 10*time.Second); err == nil && st != 200 {
						err = fmt.Errorf("status %d", st)
					}
				}
				if err == nil {
					err = p.RoundTrip(1, []byte(msg), 10*time.Second)
				}
				if err != nil {
					churnFailed.Add(1)
					select {
					case errs <- fmt.Errorf("short connection: %w", err):
					default:
					}
					return
				}
				sent.Add(int64(len(msg)))
			})
		}
	})
	wg.Wait()
	peak, samples := m.Stop()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, c := range clients {
		c.Close()
	}
	open := float64(soakClients * soakStreams)
	t.Logf("soak %v: %d long streams at %d KiB/s each, %d short connections (%d failed), %.1f MiB checksummed each way",
		d, soakClients*soakStreams, soakStreamRate>>10, churned.Load(), churnFailed.Load(), float64(sent.Load())/(1<<20))
	t.Logf("soak: baseline %v; peak %v over %d samples; %.1f KiB heap and %.1f goroutines per open stream at peak",
		base, peak, samples, (peak.heapInuse-base.heapInuse)/open/1024, (peak.goroutines-base.goroutines)/open)
	if per := (peak.heapInuse - base.heapInuse) / open; per > soakHeapPerConn {
		t.Errorf("peak heap per open stream %.0f KiB, budget %d KiB", per/1024, soakHeapPerConn>>10)
	}
	if g := peak.goroutines - base.goroutines; g > soakGoroutines {
		t.Errorf("peak goroutines +%.0f, budget %d", g, soakGoroutines)
	}
	after, ok := a.settle(base, settleG, settleF, settleLimit)
	if !ok {
		t.Errorf("after the soak: %v, baseline %v: leaked goroutines or fds", after, base)
	}
	if h := after.heapInuse - base.heapInuse; h > soakHeapGrowth {
		t.Errorf("heap in use grew by %.1f MiB over the soak, budget %d MiB", h/(1<<20), soakHeapGrowth>>20)
	}
	// The agent counted every byte the clients sent.
	var counted float64
	for range 50 {
		counted = a.mustScrape().Sum("istio_tcp_received_bytes_total", "reporter", "destination") - bytesBefore
		if counted >= float64(sent.Load()) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if math.Abs(counted-float64(sent.Load())) > 0 {
		t.Errorf("istio_tcp_received_bytes_total grew by %.0f, clients sent %d", counted, sent.Load())
	}
	t.Logf("soak: after settling %v", after)
}

// longStream sends random data at soakStreamRate until ctx is done, reads
// the echo concurrently, and compares SHA-256 sums of both directions. It
// returns the bytes sent.
func longStream(ctx context.Context, c *tunnel.Client, a *agent, echo *echoServer) (int64, error) {
	s, err := dialStream(context.WithoutCancel(ctx), c, a, echo.addr)
	if err != nil {
		return 0, fmt.Errorf("long stream: %w", err)
	}
	defer s.Close()
	inSum, outSum := sha256.New(), sha256.New()
	var n int64
	readDone := make(chan error, 1)
	var got int64
	go func() {
		k, err := io.Copy(inSum, s)
		got = k
		readDone <- err
	}()
	lim := rate.NewLimiter(rate.Limit(soakStreamRate), soakChunk)
	buf := make([]byte, soakChunk)
	var werr error
	for lim.WaitN(ctx, soakChunk) == nil {
		rand.Read(buf)
		outSum.Write(buf)
		s.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, werr = s.Write(buf); werr != nil {
			break
		}
		n += soakChunk
	}
	if werr == nil {
		werr = s.CloseWrite()
	}
	s.SetReadDeadline(time.Now().Add(30 * time.Second))
	rerr := <-readDone
	switch {
	case werr != nil:
		return n, fmt.Errorf("long stream write after %d bytes: %w", n, werr)
	case rerr != nil:
		return n, fmt.Errorf("long stream read after %d bytes: %w", got, rerr)
	case got != n || !bytes.Equal(inSum.Sum(nil), outSum.Sum(nil)):
		return n, fmt.Errorf("long stream: sent %d bytes (sha256 %x), received %d (sha256 %x)", n, outSum.Sum(nil), got, inSum.Sum(nil))
	}
	return n, nil
}
