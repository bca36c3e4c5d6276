package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/netns"
)

var closeInherited sync.Once

// ErrNotReady reports that an agent did not become ready in time, or exited
// before it did.
var ErrNotReady = errors.New("testbed: agent not ready")

// startPod starts the pod's podapp server: on every address of its own
// namespace, or on its address alone when it shares its node's
// (LayoutDirect).
func (tb *Testbed) startPod(p Pod) error {
	addr := ":8000"
	if tb.Layout == LayoutDirect {
		addr = p.IP + ":8000"
	}
	pid, err := spawn(p.Netns, p.Log, []string{"POD_NAME=" + p.String()}, tb.Podapp, "serve", "--addr", addr, "--name", p.String())
	if err != nil {
		return fmt.Errorf("testbed: pod %s: %w", p, err)
	}
	return writePID(tb.pidFile("pod-"+p.Namespace+"-"+p.Name), pid)
}

// AgentArgv returns the command line of node's agent.
func (tb *Testbed) AgentArgv(node Node) []string {
	argv := []string{tb.Ferry, "agent", "--node", node.Name, "--manifests", tb.Manifests,
		"--ca-cert", tb.CACert, "--ca-key", tb.CAKey, "--redirect", tb.Redirect,
		"--bpf-pin-dir", node.PinDir, "--log-level", tb.LogLevel, "--capture", tb.Capture}
	if tb.Capture == "pod" {
		argv = append(argv, "--cni-socket", tb.CNISocket(node), "--state-dir", tb.path("state", node.Name),
			"--probe-source", ProbeSource, "--probe-cgroup", tb.KubeletCgroup(node), "--cri-socket", "")
	}
	return append(argv, tb.AgentArgs...)
}

// CNISocket is where node's agent listens for the ferry-cni plugin
// (--capture pod).
func (tb *Testbed) CNISocket(node Node) string { return tb.path("state", node.Name, "cni.sock") }

// CNI runs the ferry-cni plugin for pod as a container runtime does after
// the pod's network is set up (command ADD) or before it is torn down (DEL),
// with the pod's address as the network plugin's result. The plugin is
// `ferry cni`, talking to the agent of the pod's node.
func (tb *Testbed) CNI(ctx context.Context, command string, p Pod) error {
	n, ok := tb.Node(p.Node)
	if !ok {
		return fmt.Errorf("testbed: pod %s: no node %s", p, p.Node)
	}
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"testbed","type":"ferry-cni","agent_socket":%q,`+
		`"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":%q}],"ips":[{"address":"%s/32","interface":0}]}}`,
		tb.CNISocket(n), filepath.Join(netns.NamedDir, p.Netns), p.IP)
	cmd := exec.CommandContext(ctx, tb.Ferry, "cni")
	cmd.Stdin = strings.NewReader(conf)
	id := tb.Prefix + "-" + p.Namespace + "-" + p.Name
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+id,
		"CNI_NETNS="+filepath.Join(netns.NamedDir, p.Netns), "CNI_IFNAME=eth0", "CNI_PATH="+filepath.Dir(tb.Ferry),
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE="+p.Namespace+";K8S_POD_NAME="+p.Name+";K8S_POD_INFRA_CONTAINER_ID="+id)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("testbed: ferry-cni %s %s: %v: %s", command, p, err, bytes.TrimSpace(out))
	}
	return nil
}

// StartAgent starts the agent of the named node, without waiting for it to
// be ready. It makes the CA and the pin directory first if needed.
func (tb *Testbed) StartAgent(name string) error {
	n, ok := tb.Node(name)
	if !ok {
		return fmt.Errorf("testbed: no node %s", name)
	}
	if pid, ok := tb.AgentPID(name); ok {
		return fmt.Errorf("testbed: agent on %s already runs (pid %d)", name, pid)
	}
	if tb.Ferry == "" {
		return errors.New("testbed: no ferry binary: this testbed was brought up without agents and without a ferry binary")
	}
	if err := tb.ensureCA(); err != nil {
		return err
	}
	if err := ensureBPFFS(); err != nil {
		return err
	}
	if err := os.MkdirAll(n.PinDir, 0o755); err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	argv := tb.AgentArgv(n)
	appendLog(n.AgentLog, "start: "+strings.Join(argv, " "))
	pid, err := spawn(n.Netns, n.AgentLog, nil, argv[0], argv[1:]...)
	if err != nil {
		return fmt.Errorf("testbed: agent on %s: %w", name, err)
	}
	return writePID(tb.pidFile("agent-"+name), pid)
}

// StopAgent sends sig (SIGTERM to stop, SIGKILL to kill) to the named
// node's agent and waits for it to exit, killing it if it ignores sig for
// 10 s. Stopping an agent that does not run is not an error.
func (tb *Testbed) StopAgent(name string, sig syscall.Signal) error {
	n, ok := tb.Node(name)
	if !ok {
		return fmt.Errorf("testbed: no node %s", name)
	}
	pidFile := tb.pidFile("agent-" + name)
	pid, ok := tb.AgentPID(name)
	if !ok {
		os.Remove(pidFile)
		return nil
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("testbed: signal agent on %s: %w", name, err)
	}
	if !waitExit([]int{pid}, 10*time.Second) {
		syscall.Kill(pid, syscall.SIGKILL)
		waitExit([]int{pid}, 5*time.Second)
	}
	appendLog(n.AgentLog, "stopped with "+unix.SignalName(sig))
	return os.Remove(pidFile)
}

// RestartAgent stops the named node's agent with SIGTERM and starts it again.
func (tb *Testbed) RestartAgent(name string) error {
	if err := tb.StopAgent(name, syscall.SIGTERM); err != nil {
		return err
	}
	return tb.StartAgent(name)
}

// AgentPID returns the pid of the named node's agent if it runs.
func (tb *Testbed) AgentPID(name string) (int, bool) {
	return alive(tb.pidFile("agent-" + name))
}

// PodPID returns the pid of the pod's server if it runs.
func (tb *Testbed) PodPID(p Pod) (int, bool) {
	return alive(tb.pidFile("pod-" + p.Namespace + "-" + p.Name))
}

// WaitReady waits until the named node's agent answers its readiness check,
// for at most timeout; it fails early, with ErrNotReady and the log's tail,
// if the agent exits.
func (tb *Testbed) WaitReady(ctx context.Context, name string, timeout time.Duration) error {
	n, ok := tb.Node(name)
	if !ok {
		return fmt.Errorf("testbed: no node %s", name)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := HTTPClient(n.Netns, time.Second)
	for {
		if _, ok := tb.AgentPID(name); !ok {
			return fmt.Errorf("%w: agent on %s exited (log %s):\n%s", ErrNotReady, name, n.AgentLog, tail(n.AgentLog, 30))
		}
		if get(ctx, c, "http://"+n.IP+":15021/healthz/ready") == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: agent on %s after %v (log %s):\n%s", ErrNotReady, name, timeout, n.AgentLog, tail(n.AgentLog, 30))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitServing waits until the pod's server answers on its own IP.
func (tb *Testbed) waitServing(ctx context.Context, p Pod, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := HTTPClient(p.Netns, time.Second)
	for {
		err := get(ctx, c, "http://"+p.IP+":8000/")
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testbed: pod %s: server not answering on %s:8000 after %v (log %s): %w", p, p.IP, timeout, p.Log, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// HTTPClient returns a client whose connections are made inside the named
// network namespace, without keep-alives.
func HTTPClient(ns string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return Dial(ctx, ns, &net.Dialer{}, network, addr)
		},
	}}
}

// Dial connects to addr with d from inside the named network namespace; the
// connection is usable from any goroutine.
func Dial(ctx context.Context, ns string, d *net.Dialer, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := netns.DoNamed(ns, func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// get fails unless url answers 200.
func get(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// ensureCA makes the testbed's CA with `ferry ca init` unless it exists.
func (tb *Testbed) ensureCA() error {
	if _, err := os.Stat(tb.CACert); err == nil {
		return nil
	}
	out, err := exec.Command(tb.Ferry, "ca", "init", "--out", filepath.Dir(tb.CACert)).CombinedOutput()
	os.WriteFile(tb.path("logs", "ca.log"), out, 0o644)
	if err != nil {
		return fmt.Errorf("testbed: ferry ca init: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Run runs argv in the named network namespace and returns its standard
// output; when it fails, the error carries its standard error. It uses
// nsenter, which keeps the host's /sys, unlike ip netns exec.
func Run(ctx context.Context, ns string, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + filepath.Join(netns.NamedDir, ns), "--"}, argv...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// spawn starts argv in the named namespace, in a session of its own that
// outlives the caller, appending its output to logPath, and returns its pid.
// nsenter, not `ip netns exec`: the latter remounts /sys and so hides the
// host's bpffs from the agent. The caller reaps the process when it is the
// parent, so a dead process never looks alive as a zombie.
func spawn(ns, logPath string, env []string, bin string, args ...string) (int, error) {
	// Descriptors this process inherited without close-on-exec (a lock
	// held by flock(1) around the tests) would otherwise live on in agents
	// and pods that outlive a killed test.
	closeInherited.Do(func() { unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC) })
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=" + filepath.Join(netns.NamedDir, ns), "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	go cmd.Wait()
	return cmd.Process.Pid, nil
}

func (tb *Testbed) pidFile(name string) string { return tb.path("pids", name+".pid") }

func writePID(path string, pid int) error {
	return os.WriteFile(path, []byte(strconv.Itoa(pid)+"\n"), 0o644)
}

// alive returns the pid recorded in pidFile if that process still runs.
func alive(pidFile string) (int, bool) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, running(pid)
}

// running reports whether pid is a live process: a zombie, waiting for a
// parent (perhaps a slow init) to reap it, has exited.
func running(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := bytes.Cut(b, []byte(") "))
	return len(rest) == 0 || rest[0] != 'Z'
}

// waitExit waits until none of pids runs, for at most d; it reports whether
// they all exited.
func waitExit(pids []int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !slices.ContainsFunc(pids, running) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// appendLog writes a "=== TIME msg" marker into a process's log.
func appendLog(path, msg string) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	fmt.Fprintf(f, "=== %s %s\n", time.Now().UTC().Format("2006-01-02T15:04:05.000000000Z"), msg)
	f.Close()
}

// tail returns the last n lines of a file, indented.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	lines = lines[max(0, len(lines)-n):]
	return "  " + strings.Join(lines, "\n  ")
}
