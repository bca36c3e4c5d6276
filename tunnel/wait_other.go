//go:build !linux

package tunnel

import (
	"net"
	"syscall"
)

// readPooled reads from c into a pooled buffer of the class for size.
func readPooled(c net.Conn, size int, _ *busyReads) (buf []byte, n int, err error) {
	buf = getBuf(size)[:size]
	n, err = c.Read(buf)
	return buf, n, err
}

// tryRead never reads where non-blocking reads are not wired up.
func tryRead(net.Conn, []byte) (int, error) { return 0, nil }

// tryWrite never writes where non-blocking writes are not wired up.
func tryWrite(syscall.RawConn, []byte) (int, error) { return 0, nil }

// unacked reports 0 where the send queue cannot be read.
func unacked(*net.TCPConn) int { return 0 }

// newRawSocket returns c: raw system calls are wired up on Linux only.
func newRawSocket(c net.Conn) net.Conn { return c }
