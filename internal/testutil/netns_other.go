//go:build !linux

package testutil

import (
	"errors"
	"testing"
)

// NetNS is a network namespace created for one test. Only Linux has them.
type NetNS struct{}

// NewNetNS skips the test: network namespaces need Linux.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	t.Skip("testutil: network namespaces need Linux")
	return nil
}

// Path is empty outside Linux.
func (ns *NetNS) Path() string { return "" }

// FD is -1 outside Linux.
func (ns *NetNS) FD() int { return -1 }

// Do fails outside Linux.
func (ns *NetNS) Do(func() error) error { return errors.ErrUnsupported }

// Close does nothing outside Linux.
func (ns *NetNS) Close() error { return nil }
