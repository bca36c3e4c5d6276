package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testutil"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/node"
)

func ferry(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(t.Context(), args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestPolicyCheck(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		allow     bool
		wantLines []string
	}{
		{"allowed principal", []string{"--from", "spiffe://cluster.local/ns/foo/sa/curl"}, true,
			[]string{"ALLOW  spiffe://cluster.local/ns/foo/sa/curl (198.18.1.2) -> bar/httpbin (198.18.2.2:8000)", "decided by: AuthorizationPolicy bar/only-foo-curl"}},
		{"other principal", []string{"--from", "spiffe://cluster.local/ns/bar/sa/curl"}, false,
			[]string{"DENY  spiffe://cluster.local/ns/bar/sa/curl", "reason:"}},
		{"plaintext under mesh-wide STRICT", []string{"--from", "none"}, false,
			[]string{"DENY  none (plaintext)", "decided by: PeerAuthentication istio-system/strict"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"policy", "check", "--manifests", "testdata/policy.yaml", "--from-ip", "198.18.1.2",
				"--to-pod", "bar/httpbin", "--port", "8000"}, tc.args...)
			out, err := ferry(t, args...)
			if tc.allow != (err == nil) || (err != nil && !errors.Is(err, errDenied)) {
				t.Fatalf("allow=%v err=%v\n%s", tc.allow, err, out)
			}
			for _, l := range tc.wantLines {
				if !strings.Contains(out, l) {
					t.Errorf("output lacks %q:\n%s", l, out)
				}
			}
		})
	}
	out, _ := ferry(t, "policy", "check", "--manifests", "testdata/policy.yaml", "--from", "none", "--from-ip", "198.18.1.2",
		"--to", "198.18.2.2", "--port", "8000", "-o", "json")
	var res node.CheckResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Decision.Allow || res.Decision.Kind != "PeerAuthentication" {
		t.Errorf("json: %v %+v\n%s", err, res, out)
	}
	if _, err := ferry(t, "policy", "check", "--manifests", "testdata/policy.yaml", "--from", "spiffe://x", "--from-ip", "198.18.1.2",
		"--to-pod", "bar/httpbin", "--port", "8000"); err == nil || !strings.Contains(err.Error(), "--from") {
		t.Errorf("malformed --from: err = %v", err)
	}
	if _, err := ferry(t, "policy", "check", "--manifests", "testdata/policy.yaml", "--from", "none", "--from-ip", "198.18.1.2",
		"--to-pod", "bar/nope", "--port", "8000"); err == nil || !strings.Contains(err.Error(), "bar/nope") {
		t.Errorf("unknown pod: err = %v", err)
	}
}

// TestPolicyCheckFailsClosed is the security review's finding: an ALLOW
// policy with a misspelt field used to vanish, leaving its workload open to
// every caller (exit 0, ALLOW).
func TestPolicyCheckFailsClosed(t *testing.T) {
	b, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string][2]string{
		"misspelt field":    {"principals:", "principal:"},
		"principal in full": {`"cluster.local/ns/foo/sa/curl"`, `"spiffe://cluster.local/ns/foo/sa/curl"`},
		"case-folded field": {"principals:", "Principals:"},
		"unknown action":    {"action: ALLOW", "action: ALOW"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policy.yaml")
			os.WriteFile(path, []byte(strings.Replace(string(b), edit[0], edit[1], 1)), 0o644)
			for _, from := range []string{"spiffe://cluster.local/ns/foo/sa/curl", "spiffe://cluster.local/ns/bar/sa/curl"} {
				out, err := ferry(t, "policy", "check", "--manifests", path, "--from", from, "--from-ip", "198.18.1.2",
					"--to-pod", "bar/httpbin", "--port", "8000")
				if !errors.Is(err, errDenied) || !strings.HasPrefix(out, "DENY") {
					t.Errorf("from %s: err = %v, want a denial\n%s", from, err, out)
				}
				if !strings.Contains(out, "problem:    authz: AuthorizationPolicy bar/only-foo-curl") || !strings.Contains(out, "enforced meanwhile:") {
					t.Errorf("the problem is not reported with its effect:\n%s", out)
				}
				lines := strings.Split(out, "\n")
				if len(slices.Compact(slices.Sorted(slices.Values(lines)))) != len(lines) {
					t.Errorf("a line is printed twice:\n%s", out)
				}
			}
		})
	}
}

// startAgent runs a local-mode agent on loopback and returns its admin address.
func startAgent(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := certs.InitCA(filepath.Join(dir, "ca")); err != nil {
		t.Fatal(err)
	}
	manifests := filepath.Join(dir, "m.yaml")
	os.WriteFile(manifests, []byte(`apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: foo}
spec: {nodeName: a, serviceAccountName: web}
status: {podIP: 127.0.40.2}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: bar}
spec: {nodeName: b}
status: {podIP: 127.0.41.2}
`), 0o644)
	// A port found free can be taken by another test process before the
	// agent binds it: start again on fresh ports when that happens.
	for attempt := 1; ; attempt++ {
		addr, err := tryStartAgent(t, dir, manifests)
		if err == nil {
			return addr
		}
		if attempt == 5 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("attempt %d: %v; retrying on other ports", attempt, err)
	}
}

// tryStartAgent starts an agent on ports free a moment ago and returns its
// admin address once it is ready, or the error it stopped with.
func tryStartAgent(t *testing.T, dir, manifests string) (string, error) {
	port := func(ip string) string {
		ln, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}
	pod := func() string { return port("127.0.40.2") }
	control := testutil.ControlAddrs(t, 3)
	cfg := node.Config{
		NodeName: "a", Manifests: manifests, CACert: filepath.Join(dir, "ca", "root-cert.pem"), CAKey: filepath.Join(dir, "ca", "root-key.pem"),
		TrustDomain: "cluster.local", SystemNamespace: "istio-system", Redirect: node.RedirectNone,
		OutboundAddr: pod(), InboundAddr: pod(), HBONEAddr: pod(),
		AdminAddr: control[0], MetricsAddr: control[1], ReadinessAddr: control[2],
		DrainTimeout: time.Second,
	}
	a, err := node.New(cfg, node.Deps{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	for range 200 {
		select {
		case err := <-done:
			cancel()
			if err == nil {
				err = errors.New("agent stopped before it was ready")
			}
			return "", err
		default:
		}
		if resp, err := http.Get("http://" + cfg.ReadinessAddr + "/healthz/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Cleanup(func() {
					cancel()
					if err := <-done; err != nil {
						t.Error(err)
					}
				})
				return cfg.AdminAddr, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
	return "", errors.New("agent never ready")
}

func TestAdminCommands(t *testing.T) {
	admin := startAgent(t)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"status"}, []string{"Node:        a", "Readiness:   ready", "Workloads:   2 known, 1 captured on this node", "IPv6:        not carried: TCP refused (fail closed) for 0 enrolled pods", "From node:   not captured"}},
		{[]string{"workloads"}, []string{"NAMESPACE  POD NAME  ADDRESS     NODE  PROTOCOL  CAPTURED  IDENTITY",
			"bar        db        127.0.41.2  b     TCP       false     spiffe://cluster.local/ns/bar/sa/default",
			"foo        web       127.0.40.2  a     HBONE     true      spiffe://cluster.local/ns/foo/sa/web"}},
		{[]string{"workloads", "--namespace", "bar"}, []string{"bar        db"}},
		{[]string{"certs"}, []string{"spiffe://cluster.local/ns/foo/sa/web  valid"}},
		{[]string{"policies"}, []string{"NAMESPACE  POLICY NAME  KIND  ACTION  SCOPE  PROBLEMS"}},
		{[]string{"connections"}, []string{"DIRECTION  SOURCE"}},
		{[]string{"log"}, []string{"current log level is info"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, err := ferry(t, append(tc.args, "--admin", admin)...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if slices.Contains(tc.args, "--namespace") && strings.Contains(out, "foo        web") {
				t.Errorf("--namespace filter ignored:\n%s", out)
			}
		})
	}
	out, err := ferry(t, "workloads", "-o", "json", "--admin", admin)
	var ws []node.WorkloadDump
	if err != nil || json.Unmarshal([]byte(out), &ws) != nil || len(ws) != 2 {
		t.Errorf("workloads -o json: %v\n%s", err, out)
	}
	if out, err := ferry(t, "status", "-o", "yaml", "--admin", admin); err != nil || !strings.Contains(out, "ready: true") {
		t.Errorf("status -o yaml: %v\n%s", err, out)
	}
	if _, err := ferry(t, "status", "--admin", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "is the agent running") {
		t.Errorf("no agent: err = %v", err)
	}
}

func TestUnknownCommand(t *testing.T) {
	if _, err := ferry(t, "frobnicate"); err == nil || !strings.Contains(err.Error(), "frobnicate") {
		t.Fatalf("err = %v", err)
	}
	if out, err := ferry(t, "version"); err != nil || out != "ferry dev\n" {
		t.Fatalf("version: %q %v", out, err)
	}
}
