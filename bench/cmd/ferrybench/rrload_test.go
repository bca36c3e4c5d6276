package main

import (
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

func TestLoadedRate(t *testing.T) {
	if r := loadedRate(30000, 3*time.Second); r != 8000 {
		t.Errorf("loadedRate(30000 in 3 s) = %v, want 8000 (80%% of 10000/s)", r)
	}
	for _, n := range []int{0, -1} {
		if r := loadedRate(n, time.Second); r != 0 {
			t.Errorf("loadedRate(%d) = %v, want 0", n, r)
		}
	}
	if r := loadedRate(10, 0); r != 0 {
		t.Errorf("loadedRate in no time = %v, want 0", r)
	}
}

func TestSlotInterval(t *testing.T) {
	if d := slotInterval(8000, 16); d != 2*time.Millisecond {
		t.Errorf("slotInterval(8000/s over 16) = %v, want 2ms", d)
	}
	if d := slotInterval(1000, 4); d != 4*time.Millisecond {
		t.Errorf("slotInterval(1000/s over 4) = %v, want 4ms", d)
	}
}

// echoServer serves the sink's echo mode on loopback: each connection's
// 9-byte header, then size-byte messages echoed. After stallAfter messages
// on a connection it stops reading for stall, once.
func echoServer(t *testing.T, size, stallAfter int, stall time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var hdr [9]byte
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				buf := make([]byte, size)
				for i := 0; ; i++ {
					if i == stallAfter {
						time.Sleep(stall)
					}
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func dialLoopback(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var cs []net.Conn
	for range n {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	t.Cleanup(func() { closeAll(cs) })
	return cs
}

func TestOpenLoop(t *testing.T) {
	addr := echoServer(t, 1024, -1, 0)
	lat, el, err := openLoop(dialLoopback(t, addr, 4), 1000, 1024, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if el < 290*time.Millisecond || el > time.Second {
		t.Errorf("elapsed %v, want about 300ms", el)
	}
	// 1000/s for 0.3 s: 75 slots on each of 4 connections.
	if len(lat) != 300 {
		t.Errorf("%d exchanges, want 300", len(lat))
	}
	if slices.Min(lat) <= 0 {
		t.Errorf("latency %v", slices.Min(lat))
	}
}

// TestOpenLoopStall checks that the requests behind a stalled response are
// still sent on schedule and charged the stall from their slots, as they
// would not be in a closed loop.
func TestOpenLoopStall(t *testing.T) {
	const stall = 150 * time.Millisecond
	addr := echoServer(t, 1024, openWarmup, stall)
	lat, _, err := openLoop(dialLoopback(t, addr, 2), 200, 1024, 400*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(lat) != 80 {
		t.Errorf("%d exchanges, want 80", len(lat))
	}
	// Each connection's slots are 10 ms apart; the first ~14 of each wait
	// for the stall's end.
	slow := 0
	for _, l := range lat {
		if l >= 50*time.Millisecond {
			slow++
		}
	}
	if slow < 16 {
		t.Errorf("%d exchanges took 50 ms or more, want at least 16 (the stall: %v)", slow, stall)
	}
}
