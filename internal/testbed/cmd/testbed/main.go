package main

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferrymesh/ferry/internal/netns"
	"github.com/ferrymesh/ferry/internal/testbed"
)

//go:embed doc.go
var docGo string

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testbed: %s\n", strings.TrimPrefix(err.Error(), "testbed: "))
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("no command; try: testbed help")
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "up":
		return up(ctx, args)
	case "down":
		return down(args)
	case "status":
		return status(args)
	case "agent":
		return agent(ctx, args)
	case "exec":
		return execIn(args)
	case "get":
		return get(args)
	case "help", "-h", "--help":
		fmt.Print(usage())
		return nil
	}
	return fmt.Errorf("unknown command '%s'; try: testbed help", cmd)
}

// usage is the command's doc comment.
func usage() string {
	var b strings.Builder
	for line := range strings.Lines(docGo) {
		if strings.HasPrefix(line, "package ") {
			break
		}
		line = strings.TrimPrefix(strings.TrimPrefix(line, "//"), " ")
		b.WriteString(strings.Replace(line, "\t", "  ", 1))
	}
	return b.String()
}

// options holds parsed flags: values by name, booleans set, the rest.
type options struct {
	values map[string][]string
	bools  map[string]bool
	rest   []string // positional arguments, and unknown ones when allowed
	after  []string // the arguments after "--"
}

// parse reads args, in any order, against the flags that take a value and
// the boolean ones; an unknown flag is an error unless passUnknown.
func parse(cmd string, args []string, valued, boolean []string, passUnknown bool) (options, error) {
	o := options{values: map[string][]string{}, bools: map[string]bool{}}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			o.after = args[i+1:]
			return o, nil
		case slices.Contains(valued, a):
			if i+1 == len(args) {
				return o, fmt.Errorf("%s: %s needs a value", cmd, a)
			}
			o.values[a] = append(o.values[a], args[i+1])
			i++
		case slices.Contains(boolean, a):
			o.bools[a] = true
		case strings.HasPrefix(a, "--") && !passUnknown:
			return o, fmt.Errorf("%s: unknown option %s", cmd, a)
		default:
			o.rest = append(o.rest, a)
		}
	}
	return o, nil
}

// get returns the flag's last value, else the environment variable's.
func (o options) get(flag, env string) string {
	if v := o.values[flag]; len(v) > 0 {
		return v[len(v)-1]
	}
	if env != "" {
		return os.Getenv(env)
	}
	return ""
}

func needRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root")
	}
	return nil
}

// selectRun finds the run the flags or environment name and loads it.
func (o options) selectRun() (*testbed.Testbed, error) {
	prefix, dir, err := testbed.Select(o.get("--run-dir", "TESTBED_RUN_DIR"), o.get("--prefix", "TESTBED_PREFIX"))
	if err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, fmt.Errorf("testbed %s has no run dir left (use: testbed down --prefix %s)", prefix, prefix)
	}
	return testbed.Load(dir)
}

func up(ctx context.Context, args []string) error {
	o, err := parse("up", args, []string{"--nodes", "--pods", "--spec", "--run-dir", "--prefix", "--redirect",
		"--log-level", "--agent-arg", "--ferry", "--podapp", "--ready-timeout", "--layout", "--capture"}, []string{"--no-mesh", "--keep-on-failure"}, false)
	if err != nil {
		return err
	}
	if len(o.rest) > 0 {
		return fmt.Errorf("up: unexpected argument %s", o.rest[0])
	}
	count := func(flag, env, def string) (int, error) {
		v := o.get(flag, env)
		if v == "" {
			v = def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 250 {
			return 0, fmt.Errorf("%s: want 1..250", flag)
		}
		return n, nil
	}
	nodes, err := count("--nodes", "TESTBED_NODES", "2")
	if err != nil {
		return err
	}
	pods, err := count("--pods", "TESTBED_PODS", "2")
	if err != nil {
		return err
	}
	timeout, err := strconv.Atoi(cmp.Or(o.get("--ready-timeout", ""), "30"))
	if err != nil {
		return fmt.Errorf("--ready-timeout: %w", err)
	}
	if err := needRoot(); err != nil {
		return err
	}
	cfg := testbed.Config{
		Prefix: o.get("--prefix", "TESTBED_PREFIX"), RunDir: o.get("--run-dir", "TESTBED_RUN_DIR"),
		Nodes: nodes, Layout: testbed.Layout(o.get("--layout", "")), NoMesh: o.bools["--no-mesh"], Redirect: o.get("--redirect", ""), Capture: o.get("--capture", ""),
		LogLevel: o.get("--log-level", ""), AgentArgs: o.values["--agent-arg"],
		Ferry: o.get("--ferry", "FERRY_BIN"), Podapp: o.get("--podapp", "PODAPP_BIN"),
		ReadyTimeout: time.Duration(timeout) * time.Second, KeepOnFailure: o.bools["--keep-on-failure"],
		Log: os.Stderr,
	}
	if spec := o.get("--spec", "TESTBED_SPEC"); spec != "" {
		f, err := os.Open(spec)
		if err != nil {
			return err
		}
		cfg.Spec, err = testbed.ParseSpec(f)
		f.Close()
		if err != nil {
			return err
		}
	} else {
		cfg.Spec = testbed.DefaultSpec(nodes, pods)
	}
	// Binaries built here go into the run dir, which down removes with it.
	if cfg.Prefix == "" {
		cfg.Prefix = testbed.NewPrefix()
	}
	runDir, err := filepath.Abs(cmp.Or(cfg.RunDir, filepath.Join(testbed.RunRoot, cfg.Prefix)))
	if err != nil {
		return err
	}
	if _, err := os.Stat(runDir); err == nil && cfg.RunDir == "" || len(testbed.Leftovers(cfg.Prefix)) > 0 {
		return fmt.Errorf("%s already exists", cfg.Prefix)
	}
	var tb *testbed.Testbed
	defer func() {
		if tb == nil && cfg.RunDir == "" {
			os.RemoveAll(runDir) // Up made nothing: only binaries were built
		}
	}()
	binDir := filepath.Join(runDir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return err
	}
	if cfg.Ferry == "" && !cfg.NoMesh {
		if cfg.Ferry, err = build(binDir, "ferry", "./cmd/ferry"); err != nil {
			return err
		}
	}
	if cfg.Podapp == "" {
		if cfg.Podapp, err = build(binDir, "podapp", "./scripts/podapp"); err != nil {
			return err
		}
	}
	for _, bin := range []*string{&cfg.Ferry, &cfg.Podapp} {
		if *bin == "" {
			continue
		}
		if *bin, err = filepath.Abs(*bin); err != nil {
			return err
		}
		if st, err := os.Stat(*bin); err != nil || st.Mode()&0o111 == 0 {
			return fmt.Errorf("binary %s: not executable", *bin)
		}
	}
	tb, err = testbed.Up(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Println(tb.RunDir)
	return nil
}

// build compiles a main package of TESTBED_REPO into dir.
func build(dir, name, pkg string) (string, error) {
	repo := os.Getenv("TESTBED_REPO")
	if repo == "" {
		return "", fmt.Errorf("no %s binary: pass --%s or set TESTBED_REPO to build it", name, name)
	}
	fmt.Fprintf(os.Stderr, "testbed: building %s\n", name)
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir, cmd.Stderr = repo, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s: %w", pkg, err)
	}
	return out, nil
}

func down(args []string) error {
	o, err := parse("down", args, []string{"--run-dir", "--prefix"}, []string{"--all", "--keep-logs"}, false)
	if err != nil {
		return err
	}
	if err := needRoot(); err != nil {
		return err
	}
	keep := o.bools["--keep-logs"]
	if o.bools["--all"] {
		var errs []error
		for _, p := range testbed.Known() {
			errs = append(errs, testbed.Teardown(p, testbed.RunDirOf(p), keep, os.Stderr))
		}
		return errors.Join(errs...)
	}
	prefix, dir, err := testbed.Select(o.get("--run-dir", "TESTBED_RUN_DIR"), o.get("--prefix", "TESTBED_PREFIX"))
	if err != nil {
		return err
	}
	return testbed.Teardown(prefix, dir, keep, os.Stderr)
}

func status(args []string) error {
	o, err := parse("status", args, []string{"--run-dir", "--prefix"}, []string{"--json"}, false)
	if err != nil {
		return err
	}
	if o.bools["--json"] {
		tb, err := o.selectRun()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(tb.RunDir, "testbed.json"))
		os.Stdout.Write(b)
		return err
	}
	var prefixes []string
	if o.get("--run-dir", "TESTBED_RUN_DIR")+o.get("--prefix", "TESTBED_PREFIX") != "" {
		p, _, err := testbed.Select(o.get("--run-dir", "TESTBED_RUN_DIR"), o.get("--prefix", "TESTBED_PREFIX"))
		if err != nil {
			return err
		}
		prefixes = []string{p}
	} else if prefixes = testbed.Known(); len(prefixes) == 0 {
		fmt.Println("no testbeds")
		return nil
	}
	for _, p := range prefixes {
		testbed.WriteStatus(os.Stdout, p)
	}
	return nil
}

func agent(ctx context.Context, args []string) error {
	o, err := parse("agent", args, []string{"--run-dir", "--prefix", "--ready-timeout"}, nil, false)
	if err != nil {
		return err
	}
	if len(o.rest) != 2 {
		return errors.New("usage: testbed agent start|stop|kill|restart|wait NODE")
	}
	action, node := o.rest[0], o.rest[1]
	secs, err := strconv.Atoi(cmp.Or(o.get("--ready-timeout", ""), "30"))
	if err != nil {
		return fmt.Errorf("--ready-timeout: %w", err)
	}
	timeout := time.Duration(secs) * time.Second
	tb, err := o.selectRun()
	if err != nil {
		return err
	}
	switch action {
	case "start":
		err = tb.StartAgent(node)
	case "stop":
		return tb.StopAgent(node, syscall.SIGTERM)
	case "kill":
		return tb.StopAgent(node, syscall.SIGKILL)
	case "restart":
		err = tb.RestartAgent(node)
	case "wait":
	default:
		return fmt.Errorf("agent: unknown action %s (start, stop, kill, restart, wait)", action)
	}
	if err != nil {
		return err
	}
	return tb.WaitReady(ctx, node, timeout)
}

func execIn(args []string) error {
	o, err := parse("exec", args, []string{"--run-dir", "--prefix"}, nil, false)
	if err != nil {
		return err
	}
	if len(o.rest) != 1 {
		return errors.New("usage: testbed exec POD|NODE|fabric -- COMMAND [ARG]")
	}
	if len(o.after) == 0 {
		return errors.New("exec: no command (put it after --)")
	}
	return enter(o, o.rest[0], o.after...)
}

func get(args []string) error {
	o, err := parse("get", args, []string{"--run-dir", "--prefix"}, nil, true)
	if err != nil {
		return err
	}
	if len(o.rest) < 2 {
		return errors.New("usage: testbed get POD URL [podapp get flags]")
	}
	tb, err := o.selectRun()
	if err != nil {
		return err
	}
	return enter(o, o.rest[0], append([]string{tb.Podapp, "get"}, o.rest[1:]...)...)
}

// enter replaces this process with argv run in target's network namespace.
func enter(o options, target string, argv ...string) error {
	tb, err := o.selectRun()
	if err != nil {
		return err
	}
	ns, err := tb.NetnsOf(target)
	if err != nil {
		return err
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return err
	}
	return syscall.Exec(nsenter, append([]string{"nsenter", "--net=" + filepath.Join(netns.NamedDir, ns), "--"}, argv...), os.Environ())
}
