package testutil

import (
	"fmt"
	"os"
	"testing"
)

// RunCheckingFDs runs m and fails the run if the tests leaked file descriptors
// (BPF maps, programs, links, netlink sockets, listeners). Call it from
// TestMain: os.Exit(testutil.RunCheckingFDs(m)).
func RunCheckingFDs(m *testing.M) int {
	// Start the runtime's network poller first: it keeps descriptors of its
	// own once started.
	r, w, err := os.Pipe()
	if err == nil {
		r.Close()
		w.Close()
	}
	before := openFDs()
	code := m.Run()
	if after := openFDs(); code == 0 && after > before {
		fmt.Fprintf(os.Stderr, "FAIL: %d file descriptors leaked\n", after-before)
		code = 1
	}
	return code
}

func openFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(entries)
}
