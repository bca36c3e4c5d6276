//go:build !linux

package sockio

import (
	"errors"
	"net"

	"github.com/ferrymesh/ferry/tunnel/internal/bufpool"
)

// Elsewhere than Linux the tunnel reads and writes through the net package.

func NewConn(c net.Conn) net.Conn { return c }

type Reader struct{ c net.Conn }

func NewReader(c net.Conn) *Reader { return &Reader{c: c} }

func (r *Reader) Read(size int) (buf []byte, n int, err error) {
	buf = bufpool.Get(size)[:size]
	n, err = r.c.Read(buf)
	return buf, n, err
}

// TryRead never reads: nothing counts as arrived.
func TryRead(net.Conn, []byte) (int, error) { return 0, nil }

type Sink struct{}

// SinkOf reports no sink, so the tunnel writes through goroutines.
func SinkOf(net.Conn) (Sink, bool) { return Sink{}, false }

func (Sink) Valid() bool { return false }

type TryWriter struct{}

func (*TryWriter) Write(Sink, []byte) (int, error) { return 0, nil }

func Unacked(*net.TCPConn) int { return 0 }

type Spot struct{}

// Park is not supported: idle readers keep their goroutines.
func Park(*Spot, *net.TCPConn, func()) error { return errors.ErrUnsupported }

func Wake(*Spot) bool { return false }
