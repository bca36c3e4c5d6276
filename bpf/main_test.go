//go:build linux

package bpf

import (
	"fmt"
	"os"
	"testing"
)

// TestMain fails the run if the tests leak file descriptors (maps, programs,
// links, sockets): every Load must be matched by a Close.
func TestMain(m *testing.M) {
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
	os.Exit(code)
}

func openFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(entries)
}
