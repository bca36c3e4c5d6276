package cni

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: Serve must
// wait for its connections and hook calls.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
