//go:build linux

package bpf

import (
	"os"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestMain fails the run if the tests leak file descriptors (maps, programs,
// links, sockets): every Load must be matched by a Close.
func TestMain(m *testing.M) { os.Exit(testutil.RunCheckingFDs(m)) }
