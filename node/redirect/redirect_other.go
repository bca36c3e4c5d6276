//go:build !linux

package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Apply fails outside Linux.
func Apply(p Plan) error { return fmt.Errorf("redirect: apply: %w", errors.ErrUnsupported) }

// Cleanup has nothing to remove outside Linux.
func Cleanup() error { return nil }

// ListenTransparent fails outside Linux.
func ListenTransparent(ctx context.Context, addr string) (*net.TCPListener, error) {
	return nil, fmt.Errorf("redirect: listen transparent: %w", errors.ErrUnsupported)
}

// DialTransparent fails outside Linux.
func DialTransparent(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	return nil, fmt.Errorf("redirect: dial transparent: %w", errors.ErrUnsupported)
}

// DialledDst knows of no NAT outside Linux.
func DialledDst(c net.Conn) netip.AddrPort { return netip.AddrPort{} }

// ApplyPod fails outside Linux.
func ApplyPod(p Plan) error { return fmt.Errorf("redirect: apply pod: %w", errors.ErrUnsupported) }

// CleanupPod has nothing to remove outside Linux.
func CleanupPod() error { return nil }

// ListenPod fails outside Linux.
func ListenPod(ctx context.Context, addr string) (*net.TCPListener, error) {
	return nil, fmt.Errorf("redirect: listen in pod: %w", errors.ErrUnsupported)
}

// DialSocket fails outside Linux.
func DialSocket(ctx context.Context, fd int, src netip.Addr, dst netip.AddrPort, listed func(netip.AddrPort) (func(), error)) (net.Conn, error) {
	return nil, fmt.Errorf("redirect: dial: %w", errors.ErrUnsupported)
}

// NewSocket fails outside Linux.
func NewSocket() (int, error) { return -1, errors.ErrUnsupported }

// AddProbeSource fails outside Linux.
func AddProbeSource(a netip.Addr) error { return errors.ErrUnsupported }

// RemoveProbeSource does nothing outside Linux.
func RemoveProbeSource() error { return nil }
