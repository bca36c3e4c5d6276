package main

import (
	"context"
	"fmt"
	"io"

	"github.com/ferrymesh/ferry/bpf"
	"github.com/ferrymesh/ferry/node"
)

func runCleanup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cleanup", stderr)
	pinDir := fs.String("bpf-pin-dir", bpf.DefaultPinDir, "the agent's --bpf-pin-dir")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := node.Cleanup(*pinDir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed Ferry's BPF pins under %s and its routing rules and routes in this network namespace\n", *pinDir)
	return nil
}
