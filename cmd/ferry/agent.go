package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/node"
)

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("agent", stderr)
	var cfg node.Config
	cfg.RegisterFlags(fs)
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error (change at runtime with `ferry log`)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	if err := parse(fs, args); err != nil {
		return err
	}
	if cfg.NodeName == "" {
		cfg.NodeName = os.Getenv("NODE_NAME")
	}
	var level slog.LevelVar
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	opts := &slog.HandlerOptions{Level: &level}
	var h slog.Handler
	switch *logFormat {
	case "text":
		h = slog.NewTextHandler(stderr, opts)
	case "json":
		h = slog.NewJSONHandler(stderr, opts)
	default:
		return fmt.Errorf("--log-format %q: want text or json", *logFormat)
	}
	log := slog.New(h)
	deps := node.Deps{Log: log, Level: &level, Version: version}
	if cfg.Kube {
		if err := kubeDeps(cfg, &deps, log); err != nil {
			return err
		}
	}
	a, err := node.New(cfg, deps)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

func runCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "init" {
		fmt.Fprintln(stderr, "usage: ferry ca init --out DIR")
		return errUsage
	}
	fs := newFlagSet("ca init", stderr)
	out := fs.String("out", "", "directory for root-cert.pem and root-key.pem (key written 0600; existing files are never overwritten)")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("ca init: --out DIR is required")
	}
	if err := certs.InitCA(*out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s/root-cert.pem and %s/root-key.pem\n", *out, *out)
	return nil
}
