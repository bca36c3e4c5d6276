//go:build !linux

package tunnel

import (
	"net"
	"syscall"
)

// pooledReader reads a connection into pooled buffers.
type pooledReader struct{ c net.Conn }

func newPooledReader(c net.Conn) *pooledReader { return &pooledReader{c: c} }

// read reads into a pooled buffer of the class for size.
func (r *pooledReader) read(size int) (buf []byte, n int, err error) {
	buf = getBuf(size)[:size]
	n, err = r.c.Read(buf)
	return buf, n, err
}

// tryRead never reads where non-blocking reads are not wired up.
func tryRead(net.Conn, []byte) (int, error) { return 0, nil }

// tryWriter never writes where non-blocking writes are not wired up.
type tryWriter struct{}

func (*tryWriter) write(syscall.RawConn, []byte) (int, error) { return 0, nil }

// unacked reports 0 where the send queue cannot be read.
func unacked(*net.TCPConn) int { return 0 }

// newRawSocket returns c: raw system calls are wired up on Linux only.
func newRawSocket(c net.Conn) net.Conn { return c }
