package testutil

import (
	"errors"
	"testing"

	"github.com/ferrymesh/ferry/internal/netns"
)

// NetNS is a network namespace created for one test; see package netns.
type NetNS = netns.NetNS

// NewNetNS creates a fresh, unnamed network namespace with its loopback
// interface up and registers its release with t.Cleanup. It never changes
// the network namespace of the calling goroutine's thread, and skips the
// test where there are no network namespaces (outside Linux).
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	ns, err := netns.New()
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skip("testutil: network namespaces need Linux")
	}
	if err != nil {
		t.Fatalf("testutil: new netns: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}
