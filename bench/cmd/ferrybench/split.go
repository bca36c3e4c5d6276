package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/pprof/profile"
)

// CPU categories of a profile sample, by the function it was taken in (its
// leaf frame): issue 23 asks where each key's CPU goes.
const (
	catKernel  = "kernel (system calls)"
	catRuntime = "Go runtime (scheduler, GC, allocation)"
	catCrypto  = "crypto"
	catFerry   = "own code (module ferrymesh/ferry)"
	catOther   = "other Go (net, x/net, stdlib)"
)

var categories = []string{catKernel, catRuntime, catCrypto, catFerry, catOther}

// category classifies a leaf function. Time inside a system call is the
// kernel's: Go's profiler charges it to the call's frame.
func category(fn string) string {
	switch {
	case strings.Contains(fn, "Syscall") || strings.HasPrefix(fn, "syscall.") ||
		strings.HasPrefix(fn, "internal/runtime/syscall") || fn == "runtime.futex" ||
		fn == "runtime.epollwait" || fn == "runtime.usleep" || fn == "runtime.nanotime1" ||
		strings.HasPrefix(fn, "golang.org/x/sys/unix."):
		return catKernel
	case strings.HasPrefix(fn, "crypto/") || strings.HasPrefix(fn, "vendor/golang.org/x/crypto") ||
		strings.HasPrefix(fn, "golang.org/x/crypto") || strings.HasPrefix(fn, "p256"):
		return catCrypto
	case strings.HasPrefix(fn, "runtime.") || strings.HasPrefix(fn, "internal/runtime") ||
		strings.HasPrefix(fn, "sync.") || strings.HasPrefix(fn, "sync/atomic."):
		return catRuntime
	case strings.HasPrefix(fn, "github.com/ferrymesh/ferry/"):
		return catFerry
	}
	return catOther
}

// runSplit prints, for each CPU profile named, its samples' time split into
// categories: `ferrybench split bench/out/prof/*.pprof`.
func runSplit(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: ferrybench split PROFILE...")
		return 2
	}
	for _, name := range args {
		if err := splitFile(os.Stdout, name); err != nil {
			fmt.Fprintf(os.Stderr, "ferrybench split: %s: %v\n", name, err)
			return 1
		}
	}
	return 0
}

func splitFile(w io.Writer, name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return err
	}
	idx := -1
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			idx = i
		}
	}
	if idx < 0 {
		return fmt.Errorf("no cpu samples")
	}
	by := map[string]int64{}
	var total int64
	for _, s := range p.Sample {
		fn := "?"
		if len(s.Location) > 0 && len(s.Location[0].Line) > 0 {
			// The leaf's innermost inlined function.
			fn = s.Location[0].Line[0].Function.Name
		}
		by[category(fn)] += s.Value[idx]
		total += s.Value[idx]
	}
	if total == 0 {
		return fmt.Errorf("no cpu samples")
	}
	fmt.Fprintf(w, "%s (%d ms)\n", name, total/1e6)
	for _, c := range categories {
		fmt.Fprintf(w, "  %-40s %5.1f%%\n", c, 100*float64(by[c])/float64(total))
	}
	return nil
}
