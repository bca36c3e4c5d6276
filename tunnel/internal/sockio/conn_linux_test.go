package sockio

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.AcceptTCP()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// TestConn checks that the raw-system-call socket under the tunnel's
// TLS moves a transfer much larger than the socket buffers whole in both
// directions, waits for a full socket instead of failing, and reports EOF,
// read and write deadlines (with the bytes written) and closed sockets as a
// net.Conn does.
func TestConn(t *testing.T) {
	c, s := tcpPair(t)
	if err := c.SetWriteBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	rc, rs := NewConn(c), NewConn(s)
	if _, ok := rc.(*conn); !ok {
		t.Fatalf("NewConn(%T) = %T, want *conn", c, rc)
	}
	want := make([]byte, 8<<20)
	rand.Read(want)

	// One write of 8 MiB must block on the full socket, not fail with
	// EAGAIN or come back short, while the other side reads slowly.
	written := make(chan error, 1)
	go func() {
		n, err := rc.Write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		if err == nil {
			err = c.CloseWrite()
		}
		written <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the writer fill the socket
	got, err := io.ReadAll(rs)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-written; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want the %d written, unchanged", len(got), len(want))
	}

	// The other direction, then a read deadline with nothing to read.
	if _, err := rs.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, err := rc.Read(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("Read = %q, %v; want pong", buf[:n], err)
	}
	rc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := rc.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	rc.SetReadDeadline(time.Time{})

	// A write the peer does not read stops at the write deadline and
	// reports what it wrote.
	rs.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := rs.Write(want)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= len(want) {
		t.Fatalf("Write to a peer that does not read = %d, %v; want part of %d and os.ErrDeadlineExceeded", n, err, len(want))
	}

	// What was written arrives, then EOF once the peer closes; a closed
	// socket fails like a TCPConn.
	s.Close()
	if rest, err := io.ReadAll(rc); err != nil || len(rest) != n {
		t.Fatalf("read %d bytes, %v after the peer closed; want the %d it wrote, then EOF", len(rest), err, n)
	}
	if n, err := rc.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v; want 0, EOF", n, err)
	}
	rc.Close()
	if _, err := rc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
}

// TestBusyReads: only a run of sysmonEvery reads that found data without
// waiting makes an ordinary call; a wait starts the count again.
func TestBusyReads(t *testing.T) {
	var b busyReads
	for i := 1; i < sysmonEvery; i++ {
		if b.plain() {
			t.Fatalf("read %d of a run is ordinary", i)
		}
	}
	b.waited()
	for i := 1; i < sysmonEvery; i++ {
		if b.plain() {
			t.Fatalf("read %d after a wait is ordinary", i)
		}
	}
	if !b.plain() {
		t.Fatalf("read %d of a run is raw", sysmonEvery)
	}
}

// TestMode: sockets are read and written with raw system calls unless the
// build has a detector or FERRY_SOCKIO=plain turns them off; make test runs
// the tunnel's tests both ways.
func TestMode(t *testing.T) {
	want := "raw"
	if !rawCapable || os.Getenv("FERRY_SOCKIO") == "plain" {
		want = "plain"
	}
	if got := Mode(); got != want {
		t.Fatalf("Mode() = %s, want %s (FERRY_SOCKIO=%q, raw calls in this build: %v)", got, want, os.Getenv("FERRY_SOCKIO"), rawCapable)
	}
	t.Logf("socket I/O: %s", Mode())
}

// countingConn counts the writes that reach it.
type countingConn struct {
	net.Conn
	writes, bytes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes++
	c.bytes += len(p)
	return len(p), nil
}

// TestBatcher: writes between Begin and End leave in one write (two when
// they exceed a batch); outside a batch each write passes straight through.
func TestBatcher(t *testing.T) {
	cc := &countingConn{}
	b := NewBatcher(cc)
	record := make([]byte, 16<<10+29)
	b.Write(record)
	b.Write(record)
	if cc.writes != 2 {
		t.Fatalf("outside a batch: %d writes reached the socket, want 2", cc.writes)
	}
	cc.writes, cc.bytes = 0, 0
	b.Begin()
	for range 16 {
		if _, err := b.Write(record); err != nil {
			t.Fatal(err)
		}
	}
	if cc.writes != 0 {
		t.Fatalf("inside a batch: %d writes reached the socket before End", cc.writes)
	}
	if err := b.End(); err != nil {
		t.Fatal(err)
	}
	if cc.writes != 1 || cc.bytes != 16*len(record) {
		t.Fatalf("a 256 KiB frame's records: %d writes of %d bytes, want 1 of %d", cc.writes, cc.bytes, 16*len(record))
	}
	cc.writes = 0
	b.Begin()
	for range 20 {
		b.Write(record)
	}
	b.End()
	if cc.writes != 2 {
		t.Fatalf("records beyond a batch: %d writes, want 2", cc.writes)
	}
}
