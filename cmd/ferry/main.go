package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// errUsage marks an error already explained by a usage message.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, commandArgs(os.Args), os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, errUsage) && !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "ferry:", err)
		}
		os.Exit(1)
	}
}

// command is one ferry subcommand.
type command struct {
	name, args, help string
	run              func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"agent", "--node NAME --manifests PATH --ca-cert F --ca-key F [flags]", "run the node agent", runAgent},
		{"ca", "init --out DIR | serve --ca-cert F --ca-key F [flags]", "create a local CA root; or serve the Istio CA protocol for a cluster", runCA},
		{"status", "[--admin ADDR] [-o table|json|yaml]", "the local agent's state: readiness, counts, problems", runStatus},
		{"workloads", "[--namespace NS] [--node NODE] [-o ...]", "workloads the local agent knows, and which are captured", runWorkloads},
		{"policies", "[--namespace NS] [-o ...]", "policies the local agent enforces, with warnings", runPolicies},
		{"certs", "[-o ...]", "certificates the local agent holds, per identity", runCerts},
		{"connections", "[--namespace NS] [-o ...]", "open tunnelled connections", runConnections},
		{"log", "[LEVEL]", "show or set the local agent's log level", runLog},
		{"policy", "check --manifests PATH --from ID|none --from-ip IP (--to-pod NS/NAME | --to IP) --port N [-o json]", "explain an authorization decision offline", runPolicy},
		{"cni", "[install|uninstall [flags]]", "the chained CNI plugin (run by the container runtime as ferry-cni), and its installer", runCNI},
		{"cleanup", "[--bpf-pin-dir DIR]", "remove every kernel object Ferry owns in this network namespace", runCleanup},
		{"version", "", "print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) error {
			fmt.Fprintln(stdout, "ferry", version)
			return nil
		}},
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stderr)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	usage(stderr)
	return fmt.Errorf("unknown command %q", args[0])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: ferry COMMAND [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n  %-12s   %s\n", c.name, c.help, "", c.args)
	}
	fmt.Fprintln(w, "\nferry COMMAND -h shows a command's flags.")
}

// newFlagSet returns a flag set whose errors and help go to stderr.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("ferry "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses args and rejects stray positional arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}
