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
	stateDir := fs.String("state-dir", "/var/run/ferry", "the agent's --state-dir: with --capture pod, the pods whose namespaces hold Ferry's routing")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := node.Cleanup(*pinDir, *stateDir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed Ferry's BPF pins under %s, its routing rules and routes in this network namespace, and those in the pods recorded in %s\n", *pinDir, *stateDir)
	return nil
}
