package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/internal/netns"
)

// The load protocol: a client writes one mode byte and an 8-byte argument,
// then the mode's traffic.
const (
	modeUpload   = 'U' // arg: counter id; the sink reads and counts until EOF
	modeDownload = 'D' // arg: duration in ns; the sink writes for that long, then closes
	modeEcho     = 'E' // arg: message size; the sink echoes messages of that size
	modeConnect  = 'C' // the sink writes one byte, then waits for EOF
)

const chunk = 64 << 10

// sink is the server side of the load: listeners at the server pod's address
// in node b, one per peer port (and the capture section's, in its testbeds'
// pods). It shares counters with the load generator
// (one process), so uploads need no end-of-stream signal from the tunnel.
type sink struct {
	counters sync.Map // uint64 → *atomic.Int64
	nextID   atomic.Uint64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	lns      []net.Listener
}

func newSink() *sink { return &sink{conns: map[net.Conn]struct{}{}} }

// listen listens at ip on each port inside the namespace ns and serves
// until close; it may be called more than once.
func (s *sink) listen(ctx context.Context, ns string, ip netip.Addr, ports []uint16) error {
	for _, port := range ports {
		ln, err := listenIn(ctx, ns, netip.AddrPortFrom(ip, port))
		if err != nil {
			return fmt.Errorf("sink: %w", err)
		}
		s.lns = append(s.lns, ln)
		s.wg.Go(func() { s.accept(ln) })
	}
	return nil
}

func (s *sink) close() {
	for _, ln := range s.lns {
		ln.Close()
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *sink) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			defer func() {
				c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
			c.(*net.TCPConn).SetNoDelay(true)
			s.handle(c)
		})
	}
}

func (s *sink) counter() (uint64, *atomic.Int64) {
	id := s.nextID.Add(1)
	n := new(atomic.Int64)
	s.counters.Store(id, n)
	return id, n
}

func (s *sink) handle(c net.Conn) {
	var hdr [9]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	arg := binary.BigEndian.Uint64(hdr[1:])
	switch hdr[0] {
	case modeUpload:
		v, ok := s.counters.Load(arg)
		if !ok {
			return
		}
		n := v.(*atomic.Int64)
		buf := make([]byte, 256<<10)
		for {
			k, err := c.Read(buf)
			n.Add(int64(k))
			if err != nil {
				return
			}
		}
	case modeDownload:
		buf := make([]byte, chunk)
		end := time.Now().Add(time.Duration(arg))
		for time.Now().Before(end) {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case modeEcho:
		if arg == 0 || arg > 1<<20 {
			return
		}
		buf := make([]byte, arg)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case modeConnect:
		if _, err := c.Write([]byte{1}); err != nil {
			return
		}
		io.Copy(io.Discard, c)
	}
}

func header(mode byte, arg uint64) []byte {
	h := make([]byte, 9)
	h[0] = mode
	binary.BigEndian.PutUint64(h[1:], arg)
	return h
}

// target is how the load generator reaches one peer: from the client pod's
// address in node a to the server pod's address at the peer's port.
type target struct {
	ns   string
	dst  netip.AddrPort
	sink *sink
}

func (t target) dial(ctx context.Context) (net.Conn, error) {
	return dialFrom(ctx, t.ns, clientPod, t.dst)
}

// upload streams for d over one connection; it returns the bytes the sink
// received and the time until it had them all.
func (t target) upload(ctx context.Context, d time.Duration) (int64, time.Duration, error) {
	res, err := t.uploadN(ctx, 1, d)
	if err != nil {
		return 0, 0, err
	}
	return res.total(), res.elapsed, nil
}

type multiResult struct {
	perConn []int64
	elapsed time.Duration
}

func (r multiResult) total() int64 {
	var s int64
	for _, n := range r.perConn {
		s += n
	}
	return s
}

// uploadN streams for d over n concurrent connections.
func (t target) uploadN(ctx context.Context, n int, d time.Duration) (multiResult, error) {
	conns := make([]net.Conn, n)
	counters := make([]*atomic.Int64, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range n {
		c, err := t.dial(ctx)
		if err != nil {
			return multiResult{}, err
		}
		conns[i] = c
		id, ctr := t.sink.counter()
		defer t.sink.counters.Delete(id)
		counters[i] = ctr
		if _, err := c.Write(header(modeUpload, id)); err != nil {
			return multiResult{}, err
		}
	}
	// Let the header reach the sink so the timed window is the data only.
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	end := start.Add(d)
	written := make([]int64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			buf := make([]byte, chunk)
			for time.Now().Before(end) {
				k, err := c.Write(buf)
				written[i] += int64(k)
				if err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return multiResult{}, err
	}
	var want int64
	for _, w := range written {
		want += w
	}
	// Wait (bounded) until the sink has read everything written.
	err := waitFor(ctx, 30*time.Second, func() error {
		var got int64
		for _, c := range counters {
			got += c.Load()
		}
		if got < want {
			return fmt.Errorf("upload: sink has %d of %d bytes", got, want)
		}
		return nil
	})
	elapsed := time.Since(start)
	if err != nil {
		return multiResult{}, err
	}
	return multiResult{perConn: written, elapsed: elapsed}, nil
}

// download asks the sink to stream for d; it returns the bytes received and
// the time from the request to EOF.
func (t target) download(ctx context.Context, d time.Duration) (int64, time.Duration, error) {
	return t.downloadAt(ctx, d, 0)
}

// downloadAt is download with a consumer that reads at most rate bytes/s
// (0: as fast as it can), so the sender fills every buffer and window on
// the way.
func (t target) downloadAt(ctx context.Context, d time.Duration, rate int64) (int64, time.Duration, error) {
	c, err := t.dial(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d + 30*time.Second))
	start := time.Now()
	if _, err := c.Write(header(modeDownload, uint64(d))); err != nil {
		return 0, 0, err
	}
	if rate == 0 {
		n, err := io.CopyBuffer(io.Discard, onlyReader{c}, make([]byte, 256<<10))
		if err != nil {
			return n, 0, fmt.Errorf("download: %w", err)
		}
		return n, time.Since(start), nil
	}
	var n int64
	buf := make([]byte, 16<<10)
	for {
		k, err := c.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, time.Since(start), nil
		}
		if err != nil {
			return n, 0, fmt.Errorf("download: %w", err)
		}
		if ahead := time.Duration(n*int64(time.Second)/rate) - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
	}
}

type onlyReader struct{ io.Reader }

// rr runs size-byte request/response exchanges on one connection for d (at
// most maxN), after a short warm-up, and returns each exchange's latency.
func (t target) rr(ctx context.Context, size int, d time.Duration, maxN int) ([]time.Duration, error) {
	c, err := t.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return rrOn(c, size, d, maxN)
}

func rrOn(c net.Conn, size int, d time.Duration, maxN int) ([]time.Duration, error) {
	c.SetDeadline(time.Now().Add(d + 30*time.Second))
	if _, err := c.Write(header(modeEcho, uint64(size))); err != nil {
		return nil, err
	}
	buf := make([]byte, size)
	lat := make([]time.Duration, 0, min(maxN, 1<<16))
	for i := 0; i < 50; i++ { // warm-up
		if _, err := c.Write(buf); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, err
		}
	}
	end := time.Now().Add(d)
	for len(lat) < maxN {
		t0 := time.Now()
		if !t0.Before(end) {
			break
		}
		if _, err := c.Write(buf); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t0))
	}
	return lat, nil
}

// connectRate opens connections with workers in parallel for d: each
// connect, one byte from the sink, close. It returns each one's latency.
func (t target) connectRate(ctx context.Context, workers int, d time.Duration) ([]time.Duration, error) {
	lats := make([][]time.Duration, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for w := range workers {
		wg.Go(func() {
			errs[w] = netns.DoNamed(t.ns, func() error {
				for time.Now().Before(end) {
					t0 := time.Now()
					c, err := dialHere(ctx, clientPod, t.dst)
					if err != nil {
						return err
					}
					err = connectExchange(c)
					c.Close()
					if err != nil {
						return err
					}
					lats[w] = append(lats[w], time.Since(t0))
				}
				return nil
			})
		})
	}
	wg.Wait()
	return slices.Concat(lats...), errors.Join(errs...)
}

// connect makes one connect-rate exchange: connect, one byte from the sink,
// close.
func (t target) connect(ctx context.Context) error {
	c, err := t.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return connectExchange(c)
}

// connectExchange sends the connect mode's header on c and reads the sink's
// byte, within 10 s.
func connectExchange(c net.Conn) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(header(modeConnect, 0)); err != nil {
		return err
	}
	var one [1]byte
	_, err := io.ReadFull(c, one[:])
	return err
}

// holdIdle opens n connections that each completed an exchange with the
// sink and then stay idle, held by a child process (`ferrybench hold`) in
// t.ns: their client side stays out of this process, whose descriptors
// serve the sink's side. release closes them and waits for the child.
func (t target) holdIdle(ctx context.Context, self string, n int) (release func(), err error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", t.ns, self, "hold", "-n", strconv.Itoa(n), "-dst", t.dst.String())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	release = func() {
		stdin.Close()
		cmd.Wait()
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "ready\n" {
		release()
		return nil, fmt.Errorf("holding %d idle connections: %s", n, strings.TrimSpace(stderr.String()))
	}
	return release, nil
}

// runHold is `ferrybench hold -n N -dst ADDR`, run inside the client
// namespace: it opens N idle connections (see holdIdle), prints "ready",
// and holds them until its standard input ends.
func runHold(args []string) int {
	fs := flag.NewFlagSet("ferrybench hold", flag.ExitOnError)
	n := fs.Int("n", 0, "connections")
	dst := fs.String("dst", "", "destination address")
	fs.Parse(args)
	to, err := netip.ParseAddrPort(*dst)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hold:", err)
		return 2
	}
	conns := make([]net.Conn, 0, *n)
	for range *n {
		c, err := dialHere(context.Background(), clientPod, to)
		if err == nil {
			conns = append(conns, c)
			err = connectExchange(c)
			c.SetDeadline(time.Time{})
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "connection %d of %d: %v\n", len(conns), *n, err)
			return 1
		}
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// holBulkRate is the bulk consumer's read rate in the head-of-line test:
// low enough that the CPU stays free, so only queueing (buffers, windows,
// a stalled connection reader) can delay the small exchanges.
const holBulkRate = 32 << 20

// hol measures 1 KiB request/response latencies alone, then while a bulk
// download with a slow consumer runs on a second connection of the same
// peer (for HBONE, the same pooled connection).
func (t target) hol(ctx context.Context, d time.Duration) (alone, withBulk []time.Duration, bulkMBps float64, err error) {
	alone, err = t.rr(ctx, 1024, d, 1<<20)
	if err != nil {
		return nil, nil, 0, err
	}
	c, err := t.dial(ctx)
	if err != nil {
		return nil, nil, 0, err
	}
	defer c.Close()
	type bulk struct {
		n   int64
		el  time.Duration
		err error
	}
	bulkDone := make(chan bulk, 1)
	go func() {
		n, el, err := t.downloadAt(ctx, d+500*time.Millisecond, holBulkRate)
		bulkDone <- bulk{n, el, err}
	}()
	time.Sleep(300 * time.Millisecond) // let the bulk stream fill the buffers
	withBulk, err = rrOn(c, 1024, d, 1<<20)
	b := <-bulkDone
	if err == nil && b.err != nil {
		err = fmt.Errorf("bulk: %w", b.err)
	}
	if b.el > 0 {
		bulkMBps = float64(b.n) / b.el.Seconds() / 1e6
	}
	return alone, withBulk, bulkMBps, err
}

// percentile returns the p-th percentile (0..100) of sorted latencies.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

func sortedCopy(d []time.Duration) []time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s
}

// fixedRate runs 1 KiB request/response exchanges at rps in total, spread
// over conns connections, for d (the set-up of Istio's published ztunnel
// figures: 1000 rps over 4 connections). Latency is measured from the
// actual send (timer wake-ups here overshoot by up to ~0.5 ms, which would
// swamp the tunnel's share); a stall still delays the exchanges behind it.
func (t target) fixedRate(ctx context.Context, conns, rps int, d time.Duration) ([]time.Duration, error) {
	interval := time.Duration(conns) * time.Second / time.Duration(rps)
	lats := make([][]time.Duration, conns)
	errs := make([]error, conns)
	var wg sync.WaitGroup
	start := time.Now().Add(50 * time.Millisecond)
	for w := range conns {
		c, err := t.dial(ctx)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		wg.Go(func() {
			errs[w] = func() error {
				c.SetDeadline(time.Now().Add(d + 30*time.Second))
				if _, err := c.Write(header(modeEcho, 1024)); err != nil {
					return err
				}
				buf := make([]byte, 1024)
				// Offset each connection's schedule evenly within the interval.
				first := start.Add(time.Duration(w) * interval / time.Duration(conns))
				for i := 0; ; i++ {
					at := first.Add(time.Duration(i) * interval)
					if at.Sub(start) >= d {
						return nil
					}
					if wait := time.Until(at); wait > 0 {
						time.Sleep(wait)
					}
					t0 := time.Now()
					if _, err := c.Write(buf); err != nil {
						return err
					}
					if _, err := io.ReadFull(c, buf); err != nil {
						return err
					}
					lats[w] = append(lats[w], time.Since(t0))
				}
			}()
		})
	}
	wg.Wait()
	return slices.Concat(lats...), errors.Join(errs...)
}
