//go:build !linux

package netns

import "errors"

// NamedDir is where `ip netns add` binds named namespaces on Linux.
const NamedDir = "/var/run/netns"

// NetNS is a network namespace. Only Linux has them.
type NetNS struct{}

// New fails outside Linux with errors.ErrUnsupported.
func New() (*NetNS, error) { return nil, errors.ErrUnsupported }

// Open fails outside Linux with errors.ErrUnsupported.
func Open(string) (*NetNS, error) { return nil, errors.ErrUnsupported }

// OpenNamed fails outside Linux with errors.ErrUnsupported.
func OpenNamed(string) (*NetNS, error) { return nil, errors.ErrUnsupported }

// DoNamed fails outside Linux with errors.ErrUnsupported.
func DoNamed(string, func() error) error { return errors.ErrUnsupported }

// Close does nothing outside Linux.
func (ns *NetNS) Close() error { return nil }

// Path is empty outside Linux.
func (ns *NetNS) Path() string { return "" }

// FD is -1 outside Linux.
func (ns *NetNS) FD() int { return -1 }

// Do fails outside Linux with errors.ErrUnsupported.
func (ns *NetNS) Do(func() error) error { return errors.ErrUnsupported }
