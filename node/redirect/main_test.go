package redirect

import (
	"os"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestMain fails the run if the tests leak file descriptors (netlink sockets,
// listeners, connections).
func TestMain(m *testing.M) { os.Exit(testutil.RunCheckingFDs(m)) }
