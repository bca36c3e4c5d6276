package node

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: Agent.Run
// must wait for every goroutine it starts, and the tests for theirs.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
