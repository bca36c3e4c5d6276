//go:build !linux

package bpf

import (
	"fmt"
	"net/netip"
	"syscall"
)

// Objects is Ferry's loaded redirect program and its maps. Outside Linux it
// cannot be created.
type Objects struct{}

// Load fails outside Linux.
func Load(cfg Config) (*Objects, error) {
	return nil, fmt.Errorf("bpf: load: %w", ErrNotSupported)
}

// Remove has nothing to remove outside Linux.
func Remove(pinDir string) error { return nil }

// PinDir is empty outside Linux.
func (o *Objects) PinDir() string { return "" }

// Close does nothing outside Linux.
func (o *Objects) Close() error { return nil }

// AttachNetNS fails outside Linux.
func (o *Objects) AttachNetNS(nsPath string) error { return ErrNotSupported }

// SetListeners fails outside Linux.
func (o *Objects) SetListeners(outbound, inbound, hbone syscall.Conn) error {
	return ErrNotSupported
}

// SetListener fails outside Linux.
func (o *Objects) SetListener(l Listener, c syscall.Conn) error { return ErrNotSupported }

// SetPods fails outside Linux.
func (o *Objects) SetPods(ips []netip.Addr) error { return ErrNotSupported }

// Pods fails outside Linux.
func (o *Objects) Pods() ([]netip.Addr, error) { return nil, ErrNotSupported }

// Counters fails outside Linux.
func (o *Objects) Counters() (map[Verdict]uint64, error) { return nil, ErrNotSupported }

// PodCapture is in-pod capture. Outside Linux it cannot be created.
type PodCapture struct{}

// LoadPods fails outside Linux.
func LoadPods(cfg Config) (*PodCapture, error) {
	return nil, fmt.Errorf("bpf: load pods: %w", ErrNotSupported)
}

// Attach fails outside Linux.
func (p *PodCapture) Attach(pod netip.Addr, nsPath string) error { return ErrNotSupported }

// SetListeners fails outside Linux.
func (p *PodCapture) SetListeners(pod netip.Addr, outbound, inbound, hbone syscall.Conn) error {
	return ErrNotSupported
}

// AttachProbes fails outside Linux.
func (p *PodCapture) AttachProbes(path string) error { return ErrNotSupported }

// Detach fails outside Linux.
func (p *PodCapture) Detach(pod netip.Addr) error { return ErrNotSupported }

// Pinned fails outside Linux.
func (p *PodCapture) Pinned() ([]netip.Addr, error) { return nil, ErrNotSupported }

// Counters fails outside Linux.
func (p *PodCapture) Counters() (map[Verdict]uint64, error) { return nil, ErrNotSupported }

// Close does nothing outside Linux.
func (p *PodCapture) Close() error { return nil }
