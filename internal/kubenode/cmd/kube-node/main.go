package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferrymesh/ferry/internal/kubenode"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-node:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: kube-node up|down|status [flags]")
	}
	fs := flag.NewFlagSet("kube-node "+args[0], flag.ContinueOnError)
	var cfg kubenode.Config
	fs.StringVar(&cfg.Dir, "dir", kubenode.DefaultDir, "the node's state directory")
	fs.StringVar(&cfg.BinDir, "bin-dir", "", "directory of etcd and the Kubernetes binaries (scripts/kube-test-binaries --node)")
	fs.StringVar(&cfg.PauseBinary, "pause", "", "static sleeper binary for the sandbox image (internal/kubenode/pause)")
	fs.StringVar(&cfg.CNI, "cni", kubenode.CNIBridge, "the pods' network plugin: bridge, or macvlan (pod traffic never crosses the node's IP stack; the node cannot reach its pods)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	n, err := kubenode.New(cfg)
	if err != nil {
		return err
	}
	switch args[0] {
	case "up":
		if err := n.Up(ctx); err != nil {
			return fmt.Errorf("%w\n(logs in %s/logs; `scripts/kube-node down` removes what was made)", err, n.Dir())
		}
		fmt.Fprintln(stdout, n.Kubeconfig())
		return nil
	case "down":
		return n.Down(ctx)
	case "status":
		fmt.Fprint(stdout, n.Status(ctx))
		return nil
	}
	return fmt.Errorf("unknown command %q (up, down, status)", args[0])
}
