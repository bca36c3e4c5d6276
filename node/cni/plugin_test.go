package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// prevResult is what a bridge plugin hands the next plugin: a host-side veth
// (no sandbox) and the pod's eth0, with one address on each side.
// The plugin prints it back re-encoded by the CNI library, as every chained
// plugin does, which may drop or add an empty "dns": {}; the fixtures set it.
const prevResult = `{
  "cniVersion": "1.0.0",
  "interfaces": [
    {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:01"},
    {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/cni-0123"}
  ],
  "ips": [
    {"address": "10.1.0.1/24", "interface": 0},
    {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
    {"address": "fd00::5/64", "interface": 1}
  ],
  "routes": [{"dst": "0.0.0.0/0"}],
  "dns": {"nameservers": ["10.96.0.10"]}
}`

// netConfJSON is the configuration the runtime hands ferry-cni: its entry in
// the list, with the list's name and version and the previous result.
func netConfJSON(t testing.TB, sock string, extra map[string]any, withPrev bool) []byte {
	t.Helper()
	m := map[string]any{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": PluginType, "agent_socket": sock, "timeout": "5s"}
	if withPrev {
		var prev map[string]any
		if err := json.Unmarshal([]byte(prevResult), &prev); err != nil {
			t.Fatal(err)
		}
		m["prevResult"] = prev
	}
	for k, v := range extra {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const k8sArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef;K8S_POD_UID=6d1a8d6c-3b4e-4a36-9f3c-3a8c5d1c2e10;SOMETHING_NEW=x"

func cmdArgs(stdin []byte, cniArgs string) *skel.CmdArgs {
	return &skel.CmdArgs{
		ContainerID: "0123456789abcdef",
		Netns:       "/var/run/netns/cni-0123",
		IfName:      "eth0",
		Args:        cniArgs,
		Path:        "/opt/cni/bin",
		StdinData:   stdin,
	}
}

// sameJSON fails t unless a and b are the same JSON value.
func sameJSON(t testing.TB, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestAddCapturesPod(t *testing.T) {
	h := &fakeHooks{}
	sock, _ := serve(t, h)
	var out bytes.Buffer
	if err := cmdAdd(t.Context(), cmdArgs(netConfJSON(t, sock, nil, true), k8sArgs), &out); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	sameJSON(t, out.Bytes(), []byte(prevResult))
	added, _ := h.calls()
	want := Pod{
		ContainerID: "0123456789abcdef",
		Netns:       "/var/run/netns/cni-0123",
		Namespace:   "default",
		Name:        "web-1",
		UID:         "6d1a8d6c-3b4e-4a36-9f3c-3a8c5d1c2e10",
		IPs:         []netip.Addr{netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("fd00::5")},
	}
	if len(added) != 1 || !reflect.DeepEqual(added[0], want) {
		t.Errorf("AddPod got %+v, want [%+v]", added, want)
	}
}

func TestAddPrevResultOldVersion(t *testing.T) {
	h := &fakeHooks{}
	sock, _ := serve(t, h)
	prev := `{"cniVersion":"0.3.1","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"version":"4","address":"10.1.0.7/24","interface":0}],"dns":{"nameservers":["10.96.0.10"]}}`
	var p map[string]any
	if err := json.Unmarshal([]byte(prev), &p); err != nil {
		t.Fatal(err)
	}
	conf := netConfJSON(t, sock, map[string]any{"cniVersion": "0.3.1", "prevResult": p}, false)
	var out bytes.Buffer
	if err := cmdAdd(t.Context(), cmdArgs(conf, k8sArgs), &out); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	sameJSON(t, out.Bytes(), []byte(prev))
	if added, _ := h.calls(); len(added) != 1 || !reflect.DeepEqual(added[0].IPs, []netip.Addr{netip.MustParseAddr("10.1.0.7")}) {
		t.Errorf("AddPod got %+v", added)
	}
}

func TestAddHookErrorNamesPod(t *testing.T) {
	h := &fakeHooks{addErr: errors.New("attach sk_lookup in /var/run/netns/cni-0123: operation not permitted")}
	sock, _ := serve(t, h)
	var out bytes.Buffer
	err := cmdAdd(t.Context(), cmdArgs(netConfJSON(t, sock, nil, true), k8sArgs), &out)
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("ADD = %v, want a *types.Error", err)
	}
	if want := "ferry-cni: add pod default/web-1: attach sk_lookup in /var/run/netns/cni-0123: operation not permitted"; e.Msg != want {
		t.Errorf("msg %q, want %q", e.Msg, want)
	}
	if out.Len() != 0 {
		t.Errorf("a failed ADD printed a result: %s", out.Bytes())
	}
}

func TestAddFailsClosed(t *testing.T) {
	down := filepath.Join(t.TempDir(), "cni.sock") // no agent
	for _, tc := range []struct {
		name  string
		args  string
		extra map[string]any
		pass  bool
	}{
		{"enrolable pod", k8sArgs, nil, false},
		{"kube-system by default", "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1", nil, true},
		{"not a Kubernetes pod", "", nil, true},
		{"only unknown args", "IgnoreUnknown=1;FOO=bar", nil, true},
		{"configured exclusion", "K8S_POD_NAMESPACE=infra;K8S_POD_NAME=x", map[string]any{"exclude_namespaces": []string{"infra"}}, true},
		{"kube-system not excluded", "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1", map[string]any{"exclude_namespaces": []string{}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := cmdAdd(t.Context(), cmdArgs(netConfJSON(t, down, tc.extra, true), tc.args), &out)
			if tc.pass {
				if err != nil {
					t.Fatalf("ADD = %v, want a pass-through", err)
				}
				sameJSON(t, out.Bytes(), []byte(prevResult))
				return
			}
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "agent unreachable") || !strings.Contains(e.Msg, down) {
				t.Fatalf("ADD = %#v, want code 11 (try again later) naming the socket", err)
			}
			if out.Len() != 0 {
				t.Errorf("a failed ADD printed a result: %s", out.Bytes())
			}
		})
	}
}

func TestAddTimesOut(t *testing.T) {
	h := &fakeHooks{block: true, cancelled: make(chan error, 1)}
	sock, _ := serve(t, h)
	start := time.Now()
	err := cmdAdd(t.Context(), cmdArgs(netConfJSON(t, sock, map[string]any{"timeout": "200ms"}, true), k8sArgs), &bytes.Buffer{})
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "default/web-1") {
		t.Fatalf("ADD = %#v, want code 11 naming the pod", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("ADD took %v with a 200ms timeout", d)
	}
	<-h.cancelled
}

func TestAddNeedsPrevResult(t *testing.T) {
	sock, _ := serve(t, &fakeHooks{})
	for name, cmd := range map[string]func([]byte) error{
		"ADD":   func(b []byte) error { return cmdAdd(t.Context(), cmdArgs(b, k8sArgs), &bytes.Buffer{}) },
		"CHECK": func(b []byte) error { return cmdCheck(t.Context(), cmdArgs(b, k8sArgs)) },
	} {
		err := cmd(netConfJSON(t, sock, nil, false))
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "prevResult") {
			t.Errorf("%s without prevResult = %v, want a configuration error about prevResult", name, err)
		}
	}
}

func TestBadConf(t *testing.T) {
	err := cmdAdd(t.Context(), cmdArgs(netConfJSON(t, "x", map[string]any{"timeout": "soon"}, true), k8sArgs), &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("ADD with a bad timeout = %v", err)
	}
}

func TestDelIsIdempotent(t *testing.T) {
	down := filepath.Join(t.TempDir(), "cni.sock")
	refusing := &fakeHooks{delErr: errors.New("pod unknown")}
	refusingSock, _ := serve(t, refusing)
	ok := &fakeHooks{}
	okSock, _ := serve(t, ok)
	gone := cmdArgs(nil, k8sArgs)
	gone.Netns = ""
	for _, tc := range []struct {
		name, sock string
		args       *skel.CmdArgs
		warn       bool
	}{
		{"agent unreachable", down, cmdArgs(nil, k8sArgs), true},
		{"agent refuses", refusingSock, cmdArgs(nil, k8sArgs), true},
		{"netns gone", okSock, gone, false},
		{"twice", okSock, gone, false},
		{"not a Kubernetes pod", down, cmdArgs(nil, ""), false},
		{"excluded", down, cmdArgs(nil, "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=x"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.args.StdinData = netConfJSON(t, tc.sock, nil, false)
			var stderr bytes.Buffer
			if err := cmdDel(t.Context(), tc.args, &stderr); err != nil {
				t.Fatalf("DEL = %v, want nil", err)
			}
			if tc.warn != (stderr.Len() > 0) || (tc.warn && !strings.Contains(stderr.String(), "default/web-1")) {
				t.Errorf("stderr %q, want a warning naming the pod: %v", stderr.String(), tc.warn)
			}
		})
	}
	if _, deleted := ok.calls(); len(deleted) != 2 || deleted[0].Netns != "" || deleted[0].Name != "web-1" {
		t.Errorf("DelPod got %+v", deleted)
	}
	// Even an unreadable configuration does not fail a DEL.
	args := cmdArgs([]byte(`{"name":"n","type":"ferry-cni","timeout":"never"}`), k8sArgs)
	if err := cmdDel(t.Context(), args, &bytes.Buffer{}); err != nil {
		t.Errorf("DEL with a bad configuration = %v", err)
	}
}

func TestCheck(t *testing.T) {
	sock, _ := serve(t, &fakeHooks{})
	if err := cmdCheck(t.Context(), cmdArgs(netConfJSON(t, sock, nil, true), k8sArgs)); err != nil {
		t.Errorf("CHECK with the agent up = %v", err)
	}
	down := filepath.Join(t.TempDir(), "cni.sock")
	err := cmdCheck(t.Context(), cmdArgs(netConfJSON(t, down, nil, true), k8sArgs))
	if err == nil || !strings.Contains(err.Error(), "default/web-1") {
		t.Errorf("CHECK with the agent down = %v, want an error naming the pod", err)
	}
	if err := cmdCheck(t.Context(), cmdArgs(netConfJSON(t, down, nil, true), "")); err != nil {
		t.Errorf("CHECK of a non-Kubernetes sandbox = %v", err)
	}
}

func TestParseArgs(t *testing.T) {
	got := parseArgs("IgnoreUnknown=1;K8S_POD_NAME=a=b;;novalue;=x;K8S_POD_NAMESPACE=")
	want := map[string]string{"IgnoreUnknown": "1", "K8S_POD_NAME": "a=b", "K8S_POD_NAMESPACE": ""}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseArgs = %v, want %v", got, want)
	}
}

func TestConfJSON(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Conf
		out      string
	}{
		{"defaults", `{}`, Conf{}, `{"agent_socket":"/var/run/ferry/cni.sock","timeout":"30s","exclude_namespaces":["kube-system"]}`},
		{"all set", `{"agent_socket":"/run/f.sock","timeout":"1m30s","exclude_namespaces":["a","b"],"other":1}`,
			Conf{AgentSocket: "/run/f.sock", Timeout: 90 * time.Second, ExcludeNamespaces: []string{"a", "b"}},
			`{"agent_socket":"/run/f.sock","timeout":"1m30s","exclude_namespaces":["a","b"]}`},
		{"exclude none", `{"exclude_namespaces":[]}`, Conf{ExcludeNamespaces: []string{}},
			`{"agent_socket":"/var/run/ferry/cni.sock","timeout":"30s","exclude_namespaces":[]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Conf
			if err := json.Unmarshal([]byte(tc.in), &c); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c, tc.want) {
				t.Errorf("decoded %+v, want %+v", c, tc.want)
			}
			b, err := json.Marshal(c)
			if err != nil || string(b) != tc.out {
				t.Errorf("encoded %s (%v), want %s", b, err, tc.out)
			}
		})
	}
	for _, bad := range []string{`{"timeout":"soon"}`, `{"timeout":"-1s"}`, `{"timeout":30}`} {
		if err := json.Unmarshal([]byte(bad), new(Conf)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}
