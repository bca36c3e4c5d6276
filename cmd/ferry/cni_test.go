package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/cni"
)

// TestMain makes this test binary the plugin when it runs as ferry-cni, the
// name TestPluginBinary installs it under, as the ferry binary does.
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == cni.PluginType {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestCommandArgs(t *testing.T) {
	for _, tc := range []struct{ argv, want []string }{
		{[]string{"/usr/bin/ferry", "agent", "--node", "n"}, []string{"agent", "--node", "n"}},
		{[]string{"/opt/cni/bin/ferry-cni"}, []string{"cni"}},
		{[]string{"ferry-cni", "-h"}, []string{"cni", "-h"}},
		{[]string{"./ferry-cni-old"}, []string{}},
	} {
		if got := commandArgs(tc.argv); !slices.Equal(got, tc.want) {
			t.Errorf("commandArgs(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}

// pluginHooks captures every pod except one named "broken".
type pluginHooks struct {
	mu    sync.Mutex
	added []cni.Pod
}

func (h *pluginHooks) AddPod(_ context.Context, p cni.Pod) error {
	if p.Name == "broken" {
		return errors.New("attach sk_lookup: operation not permitted")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.added = append(h.added, p)
	return nil
}

func (h *pluginHooks) DelPod(context.Context, cni.Pod) error { return nil }

const bridgeConflist = `{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.244.1.0/24"}}]}`

const bridgeResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/cni-test"}],"ips":[{"address":"10.244.1.7/24","gateway":"10.244.1.1","interface":0}],"dns":{"nameservers":["10.96.0.10"]}}`

// TestPluginBinary installs this binary as ferry-cni with `ferry cni install`
// and runs it as the container runtime would (CNI_* environment, its entry
// of the installed list plus prevResult on stdin) against a test agent.
func TestPluginBinary(t *testing.T) {
	testutil.System(t) // execs the plugin
	dir := t.TempDir()
	confDir, binDir, sock := filepath.Join(dir, "net.d"), filepath.Join(dir, "bin"), filepath.Join(dir, "run", "cni.sock")
	for _, d := range []string{confDir, binDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(confDir, "10-bridge.conflist"), []byte(bridgeConflist), 0o644); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := ferry(t, "cni", "install", "--cni-conf-dir", confDir, "--cni-bin-dir", binDir, "--binary", self,
		"--cni-socket", sock, "--cni-timeout", "10s", "--cni-exclude-namespaces", "kube-system,infra"); err != nil {
		t.Fatalf("cni install: %v\n%s", err, out)
	}

	// The runtime hands each plugin its entry, the list's name and version,
	// and the previous plugin's result.
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	b, err := os.ReadFile(filepath.Join(confDir, "10-bridge.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &list); err != nil || len(list.Plugins) != 2 || list.Plugins[1]["type"] != cni.PluginType {
		t.Fatalf("installed list: %v\n%s", err, b)
	}
	conf := list.Plugins[1]
	conf["cniVersion"], conf["name"] = list.CNIVersion, list.Name
	var prev map[string]any
	if err := json.Unmarshal([]byte(bridgeResult), &prev); err != nil {
		t.Fatal(err)
	}
	conf["prevResult"] = prev
	stdin, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}

	plugin := func(command, ns, name string) (stdout string, code int) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), filepath.Join(binDir, cni.PluginType))
		cmd.Env = []string{
			"CNI_COMMAND=" + command,
			"CNI_CONTAINERID=0123456789abcdef",
			"CNI_NETNS=/var/run/netns/ferry-test-absent",
			"CNI_IFNAME=eth0",
			"CNI_PATH=" + binDir,
			"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + name + ";K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef;K8S_POD_UID=u-1",
		}
		cmd.Stdin = bytes.NewReader(stdin)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		if ee := (*exec.ExitError)(nil); err != nil && !errors.As(err, &ee) {
			t.Fatalf("%s: %v", command, err)
		}
		t.Logf("%s %s/%s: exit %d\nstdout: %s\nstderr: %s", command, ns, name, cmd.ProcessState.ExitCode(), out.String(), errOut.String())
		return out.String(), cmd.ProcessState.ExitCode()
	}
	cniError := func(stdout string) (code uint, msg string) {
		t.Helper()
		var e struct {
			Code uint   `json:"code"`
			Msg  string `json:"msg"`
		}
		if err := json.Unmarshal([]byte(stdout), &e); err != nil {
			t.Fatalf("stdout is not a CNI error: %v\n%s", err, stdout)
		}
		return e.Code, e.Msg
	}
	sameJSON := func(got, want string) {
		t.Helper()
		var g, w any
		if err := json.Unmarshal([]byte(got), &g); err != nil {
			t.Fatalf("stdout is not JSON: %v\n%s", err, got)
		}
		if err := json.Unmarshal([]byte(want), &w); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("stdout\n%s\nwant\n%s", got, want)
		}
	}

	h := &pluginHooks{}
	ln, err := cni.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- (&cni.Server{Hooks: h}).Serve(ctx, ln) }()
	stopAgent := sync.OnceFunc(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(stopAgent)

	if out, code := plugin("VERSION", "default", "web-1"); code != 0 || !strings.Contains(out, `"1.0.0"`) {
		t.Errorf("VERSION: exit %d, %s", code, out)
	}
	out, code := plugin("ADD", "default", "web-1")
	if code != 0 {
		t.Fatalf("ADD: exit %d", code)
	}
	sameJSON(out, bridgeResult)
	h.mu.Lock()
	added := slices.Clone(h.added)
	h.mu.Unlock()
	if len(added) != 1 || added[0].String() != "default/web-1" || added[0].Netns != "/var/run/netns/ferry-test-absent" ||
		added[0].UID != "u-1" || len(added[0].IPs) != 1 || added[0].IPs[0].String() != "10.244.1.7" {
		t.Errorf("the agent got %+v", added)
	}
	if _, code := plugin("CHECK", "default", "web-1"); code != 0 {
		t.Errorf("CHECK with the agent up: exit %d", code)
	}
	out, code = plugin("ADD", "default", "broken")
	if c, msg := cniError(out); code == 0 || msg != "ferry-cni: add pod default/broken: attach sk_lookup: operation not permitted" {
		t.Errorf("ADD refused by the agent: exit %d, code %d, msg %q", code, c, msg)
	}

	stopAgent()
	out, code = plugin("ADD", "default", "web-2")
	if c, msg := cniError(out); code == 0 || c != 11 || !strings.Contains(msg, "agent unreachable") {
		t.Errorf("ADD with the agent down: exit %d, code %d, msg %q; want a failure, code 11", code, c, msg)
	}
	out, code = plugin("ADD", "infra", "dns-1")
	if code != 0 {
		t.Errorf("ADD in an excluded namespace with the agent down: exit %d", code)
	}
	sameJSON(out, bridgeResult)
	if _, code := plugin("DEL", "default", "web-1"); code != 0 {
		t.Errorf("DEL with the agent down: exit %d", code)
	}
	if _, code := plugin("CHECK", "default", "web-1"); code == 0 {
		t.Errorf("CHECK with the agent down succeeded")
	}

	if out, err := ferry(t, "cni", "uninstall", "--cni-conf-dir", confDir, "--cni-bin-dir", binDir); err != nil {
		t.Fatalf("cni uninstall: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(confDir, "10-bridge.conflist")); err != nil || strings.Contains(string(b), cni.PluginType) {
		t.Errorf("after uninstall: %v\n%s", err, b)
	}
	if _, err := os.Stat(filepath.Join(binDir, cni.PluginType)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("binary after uninstall: %v", err)
	}
}
