package sockio

import (
	"net"
	"runtime"
	"testing"
	"time"
)

// TestPark checks that a parked socket holds no goroutine of its own, that
// its reader is resumed exactly once when bytes arrive, when the peer
// closes, or when Wake is called, that a closed socket cannot be parked,
// and that the waiter goroutine is gone once nothing is parked.
func TestPark(t *testing.T) {
	before := runtime.NumGoroutine()
	const n = 50
	clients := make([]*net.TCPConn, n)
	spots := make([]Spot, n)
	resumed := make(chan int, 3*n)
	for i := range n {
		c, s := tcpPair(t)
		clients[i] = c
		if err := Park(&spots[i], s, func() { resumed <- i }); err != nil {
			t.Fatal(err)
		}
	}
	// The sockets are idle: nothing resumes, and one waiter serves them all.
	select {
	case i := <-resumed:
		t.Fatalf("socket %d resumed while idle", i)
	case <-time.After(100 * time.Millisecond):
	}
	parking.mu.Lock()
	waiting := parking.waiting
	parking.mu.Unlock()
	if g := runtime.NumGoroutine() - before; g > 1 || !waiting {
		t.Fatalf("%d more goroutines for %d parked sockets (waiter running: %v), want the waiter alone", g, n, waiting)
	}

	// Bytes, the peer's close, Wake: each resumes its reader once.
	clients[0].Write([]byte("x"))
	clients[1].Close()
	if !Wake(&spots[2]) {
		t.Fatal("Wake(parked) = false")
	}
	got := map[int]bool{}
	for range 3 {
		select {
		case i := <-resumed:
			got[i] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("resumed %v, want 0, 1 and 2", got)
		}
	}
	if !got[0] || !got[1] || !got[2] {
		t.Fatalf("resumed %v, want 0, 1 and 2", got)
	}
	if Wake(&spots[0]) || Wake(&spots[2]) {
		t.Fatal("Wake of a resumed spot = true")
	}

	// The rest are woken; more bytes then resume nothing a second time.
	for i := 3; i < n; i++ {
		if !Wake(&spots[i]) {
			t.Fatalf("Wake(spot %d) = false", i)
		}
	}
	for i := 3; i < n; i++ {
		<-resumed
	}
	clients[3].Write([]byte("y"))
	select {
	case i := <-resumed:
		t.Fatalf("socket %d resumed twice", i)
	case <-time.After(100 * time.Millisecond):
	}
	waitGoroutines(t, before)

	// A closed socket is refused, and nothing is left waiting.
	_, s := tcpPair(t)
	s.Close()
	var spot Spot
	if err := Park(&spot, s, func() { t.Error("resumed a socket that was never parked") }); err == nil {
		t.Fatal("Park(closed socket) = nil")
	}
	waitGoroutines(t, before)
}

// TestParkClosedWhileParked: a socket closed while parked leaves the epoll
// set with no event; Wake then resumes its reader, which finds it closed,
// and a new socket that reuses its descriptor parks and wakes on its own.
func TestParkClosedWhileParked(t *testing.T) {
	_, s := tcpPair(t)
	var spot Spot
	resumed := make(chan string, 2)
	if err := Park(&spot, s, func() { resumed <- "old" }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	c2, s2 := tcpPair(t) // likely reuses s's descriptor
	var spot2 Spot
	if err := Park(&spot2, s2, func() { resumed <- "new" }); err != nil {
		t.Fatal(err)
	}
	if !Wake(&spot) || <-resumed != "old" {
		t.Fatal("Wake of the closed socket's spot did not resume it")
	}
	c2.Write([]byte("z"))
	select {
	case who := <-resumed:
		if who != "new" {
			t.Fatalf("resumed %q, want new", who)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the new socket's bytes did not resume its reader")
	}
}

// waitGoroutines waits until the goroutine count is back to want.
func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	for range 200 {
		if runtime.NumGoroutine() <= want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%d goroutines, want %d: the waiter did not stop", runtime.NumGoroutine(), want)
}
