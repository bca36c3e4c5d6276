package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// The loaded request/response phases of the rr1k benchmark: the 1 KiB
// request rate a peer saturates at, then its latency under an open-loop
// load of loadFraction of that rate, set against its unloaded p50 (the one
// connection, one request at a time, of path/rr-1k in the same round).

const (
	// satConns is how many connections both loaded phases spread their
	// requests over: enough that the load generator always has a request
	// in flight on the peer, few enough that each connection's slots stay
	// milliseconds apart at the loaded rate (timer wake-ups here overshoot
	// by up to ~0.5 ms).
	satConns = 16
	// loadFraction is the share of the saturating rate the loaded phase
	// offers.
	loadFraction = 0.8
	// openWarmup is how many exchanges each connection of the open loop
	// makes, one at a time, before its schedule starts.
	openWarmup = 5
)

// loadedPeers are the peers whose loaded latency the rr1k benchmark
// measures: Ferry (the key), its baseline binary, and go-tls as the
// reference a reader judges the ratio by.
var loadedPeers = []string{"ferry", "ferry-baseline", "go-tls"}

// loadedRate is the request rate the loaded phase offers a peer that
// completed n exchanges in took with requests always in flight.
func loadedRate(n int, took time.Duration) float64 {
	if n <= 0 || took <= 0 {
		return 0
	}
	return loadFraction * float64(n) / took.Seconds()
}

// slotInterval is the time between one connection's request slots when
// conns connections share rate requests per second.
func slotInterval(rate float64, conns int) time.Duration {
	return time.Duration(float64(conns) * float64(time.Second) / rate)
}

// rrLoaded runs the loaded phases for loadedPeers that completed the
// unloaded one (unloaded, path/rr-1k of this round), each phase interleaved
// as rrOver is, and records rr1k_p99_at_80pct_vs_p50 for Ferry.
func (s *suite) rrLoaded(ctx context.Context, unloaded map[string]rrResult) {
	var peers []*peer
	for _, name := range loadedPeers {
		if p := s.peer(name); p != nil && unloaded[name].p50 > 0 {
			peers = append(peers, p)
		}
	}
	if unloaded["ferry"].p50 == 0 {
		s.rec.Skipped["rr1k_p99_at_80pct_vs_p50"] = "ferry did not complete path/rr-1k (the unloaded p50)"
	}
	if len(peers) == 0 {
		return
	}
	const satBench = "path/rr-1k-saturated"
	count := map[string]int{}
	took := map[string]time.Duration{}
	done := s.interleavedOver(peers, satBench, func(p *peer, d time.Duration) error {
		n, el, err := s.target(p).rrClosed(ctx, satConns, 1024, d)
		count[p.name] += n
		took[p.name] += el
		if err == nil && n == 0 {
			err = errors.New("no exchange completed")
		}
		return err
	})
	rate := map[string]float64{}
	var loaded []*peer
	for _, p := range peers {
		if _, ok := done[p.name]; !ok {
			continue
		}
		s.rec.raw(satBench, p.name, "rps", "1/s", float64(count[p.name])/took[p.name].Seconds())
		rate[p.name] = loadedRate(count[p.name], took[p.name])
		loaded = append(loaded, p)
	}
	if len(loaded) == 0 {
		return
	}
	const loadBench = "path/rr-1k-80pct"
	lats := map[string][]time.Duration{}
	ran := map[string]time.Duration{}
	cpu := s.interleavedOver(loaded, loadBench, func(p *peer, d time.Duration) error {
		lat, el, err := s.target(p).rrOpen(ctx, satConns, rate[p.name], 1024, d)
		lats[p.name] = append(lats[p.name], lat...)
		ran[p.name] += el
		if err == nil && len(lat) == 0 {
			err = errors.New("no exchange completed")
		}
		return err
	})
	for _, p := range loaded {
		used, ok := cpu[p.name]
		if !ok {
			continue
		}
		lat := lats[p.name]
		sorted := sortedCopy(lat)
		us := func(q float64) float64 { return float64(percentile(sorted, q)) / 1e3 }
		s.rec.raw(loadBench, p.name, "offered_rps", "1/s", rate[p.name])
		s.rec.raw(loadBench, p.name, "completed_rps", "1/s", float64(len(lat))/ran[p.name].Seconds())
		s.rec.raw(loadBench, p.name, "p50", "us", us(50))
		s.rec.raw(loadBench, p.name, "p90", "us", us(90))
		s.rec.raw(loadBench, p.name, "p99", "us", us(99))
		ratio := us(99) / unloaded[p.name].p50
		s.rec.raw(loadBench, p.name, "p99_over_unloaded_p50", "ratio", ratio)
		if p.tunnel() {
			s.rec.raw(loadBench, p.name, "agents_cpu_us_per_req", "us", float64(used.Microseconds())/float64(len(lat)))
		}
		if p.name == "ferry" {
			s.rec.key("rr1k_p99_at_80pct_vs_p50", ratio)
		}
	}
}

// rrClosed runs size-byte request/response exchanges back to back on conns
// connections at once for d (each after rrOn's warm-up) and returns how
// many completed and in how long: the rate the path saturates at with
// conns requests always in flight.
func (t target) rrClosed(ctx context.Context, conns, size int, d time.Duration) (int, time.Duration, error) {
	cs, err := t.dialN(ctx, conns)
	defer closeAll(cs)
	if err != nil {
		return 0, 0, err
	}
	counts := make([]int, conns)
	errs := make([]error, conns)
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			lat, err := rrOn(c, size, d, 1<<30)
			counts[i], errs[i] = len(lat), err
		})
	}
	wg.Wait()
	var n int
	for _, k := range counts {
		n += k
	}
	return n, d, errors.Join(errs...)
}

// rrOpen offers size-byte requests at rate per second for d, spread evenly
// over conns new connections; see openLoop.
func (t target) rrOpen(ctx context.Context, conns int, rate float64, size int, d time.Duration) ([]time.Duration, time.Duration, error) {
	cs, err := t.dialN(ctx, conns)
	defer closeAll(cs)
	if err != nil {
		return nil, 0, err
	}
	return openLoop(cs, rate, size, d)
}

// dialN dials n connections; on error it returns those it made.
func (t target) dialN(ctx context.Context, n int) ([]net.Conn, error) {
	cs := make([]net.Conn, 0, n)
	for range n {
		c, err := t.dial(ctx)
		if err != nil {
			return cs, err
		}
		cs = append(cs, c)
	}
	return cs, nil
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// openLoop offers size-byte requests to an echo server (the sink's modeEcho)
// at rate per second in total for d, spread evenly over the connections cs
// (each connection's slots are slotInterval apart, offset from the other
// connections'), without waiting for responses: each connection's writer
// sends on its schedule while its reader takes the responses in order (open
// loop, so a slow response does not hold back the requests behind it, as it
// would in a closed loop). It returns each exchange's latency and the time
// from the first slot to the last response (d, unless the path fell
// behind). A request's latency counts from its actual send when the writer
// slept until its slot, so a late timer wake-up here is not charged to the
// path, and from its slot when the writer was behind (a write that blocked
// or a path that stalled delays the requests after it, and that counts).
func openLoop(cs []net.Conn, rate float64, size int, d time.Duration) ([]time.Duration, time.Duration, error) {
	if rate <= 0 || len(cs) == 0 {
		return nil, 0, fmt.Errorf("open loop: rate %v over %d connections", rate, len(cs))
	}
	interval := slotInterval(rate, len(cs))
	if interval <= 0 {
		return nil, 0, fmt.Errorf("open loop: rate %v is too high", rate)
	}
	buf := make([]byte, size)
	for _, c := range cs {
		c.SetDeadline(time.Now().Add(d + 30*time.Second))
		if _, err := c.Write(header(modeEcho, uint64(size))); err != nil {
			return nil, 0, err
		}
		for range openWarmup {
			if _, err := c.Write(buf); err != nil {
				return nil, 0, err
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				return nil, 0, err
			}
		}
	}
	slots := int(d/interval) + 2
	lats := make([][]time.Duration, len(cs))
	rerrs := make([]error, len(cs))
	werrs := make([]error, len(cs))
	last := make([]time.Time, len(cs))
	start := time.Now().Add(10 * time.Millisecond)
	var wg sync.WaitGroup
	for i, c := range cs {
		sent := make(chan time.Time, slots)
		wg.Go(func() {
			rbuf := make([]byte, size)
			for t0 := range sent {
				if _, err := io.ReadFull(c, rbuf); err != nil {
					rerrs[i] = err
					c.Close() // unblocks the writer
					for range sent {
					}
					return
				}
				last[i] = time.Now()
				lats[i] = append(lats[i], last[i].Sub(t0))
			}
		})
		wg.Go(func() {
			defer close(sent)
			wbuf := make([]byte, size)
			first := start.Add(time.Duration(i) * interval / time.Duration(len(cs)))
			paced(start, first, interval, d, func(t0 time.Time) bool {
				sent <- t0
				if _, err := c.Write(wbuf); err != nil {
					werrs[i] = err
					c.Close() // the reader waits for no response to it
					return false
				}
				return true
			})
		})
	}
	wg.Wait()
	// Whichever side failed first closed the connection, and the other
	// then failed on it: report the writers' errors only when no reader
	// failed.
	err := errors.Join(rerrs...)
	if err == nil {
		err = errors.Join(werrs...)
	}
	return slices.Concat(lats...), latest(last).Sub(start), err
}

// latest is the latest of ts (the zero time for none).
func latest(ts []time.Time) time.Time {
	var l time.Time
	for _, t := range ts {
		if t.After(l) {
			l = t
		}
	}
	return l
}

// paced calls send at first, first+period, first+2·period … while less than
// d has passed since start, until send returns false. Each call gets the
// time its request counts from: its slot, which for a sender behind
// schedule is in the past (open loop: a stall is charged to the requests
// behind it, not hidden by sending late).
func paced(start, first time.Time, period, d time.Duration, send func(t0 time.Time) bool) {
	for k := 0; ; k++ {
		at := first.Add(time.Duration(k) * period)
		if at.Sub(start) >= d {
			return
		}
		t0 := at
		if wait := time.Until(at); wait > 0 {
			time.Sleep(wait)
			t0 = time.Now()
		}
		if !send(t0) {
			return
		}
	}
}
