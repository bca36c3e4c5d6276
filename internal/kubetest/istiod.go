package kubetest

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IstioBinaries are the Istio programs scripts/istio-binaries builds.
type IstioBinaries struct {
	PilotDiscovery, Istioctl string
	// Module is the unpacked istio.io/istio module they were built from
	// (its CRDs and protos).
	Module string
}

// BuildIstio returns the cached istiod (pilot-discovery) and istioctl,
// building them on first use (8-12 minutes cold). It fails t when they cannot
// be provisioned.
func BuildIstio(t testing.TB) IstioBinaries {
	t.Helper()
	out := runScript(t, "istio-binaries")
	var b IstioBinaries
	for line := range strings.SplitSeq(out, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "pilot-discovery":
			b.PilotDiscovery = v
		case "istioctl":
			b.Istioctl = v
		case "module":
			b.Module = v
		}
	}
	if b.PilotDiscovery == "" || b.Istioctl == "" || b.Module == "" {
		t.Fatalf("kubetest: istio-binaries printed %q", out)
	}
	return b
}

// IstiodOptions tune StartIstiod.
type IstiodOptions struct {
	// TrustedNodeAccounts are the NAMESPACE/SERVICEACCOUNT node agents
	// whose certificate requests may impersonate pods on their node
	// (CA_TRUSTED_NODE_ACCOUNTS).
	TrustedNodeAccounts []string
	// Env is added to istiod's environment after StartIstiod's own
	// settings, which it overrides (e.g. PILOT_DEBOUNCE_AFTER: tests push
	// after 10ms, istiod's default is 100ms).
	Env []string
}

// Istiod is a real istiod (pilot-discovery) serving the Cluster, its ports
// on loopback: ambient's workload xDS and the CA on XDSAddr (TLS),
// plaintext xDS on PlainXDSAddr, and the debug endpoints on DebugURL.
type Istiod struct {
	XDSAddr, PlainXDSAddr string
	DebugURL              string
	// Root is the mesh root istiod publishes in ConfigMap
	// istio-ca-root-cert (PEM).
	Root []byte

	c    *Cluster
	bins IstioBinaries
	opts IstiodOptions
	dir  string
	proc *proc
	env  []string
	args []string
}

// StartIstiod installs Istio's CRDs and the istio-system namespace, starts
// istiod in ambient mode against c and waits until it is ready and has
// published its root. It is stopped in t.Cleanup (its log shown when t
// failed); Restart replaces the process on the same ports.
func (c *Cluster) StartIstiod(t testing.TB, bins IstioBinaries, opts IstiodOptions) *Istiod {
	t.Helper()
	ctx := t.Context()
	crds, err := os.ReadFile(filepath.Join(bins.Module, "manifests", "charts", "base", "files", "crd-all.gen.yaml"))
	if err != nil {
		t.Fatalf("kubetest: Istio CRDs: %v", err)
	}
	if _, err := c.Apply(ctx, crds, ApplyOptions{}); err != nil {
		t.Fatalf("kubetest: Istio CRDs: %v", err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{}); err != nil {
		c.Namespace(t, "istio-system", nil)
	}

	i := &Istiod{c: c, bins: bins, opts: opts, dir: t.TempDir()}
	kubeconfig := c.Kubeconfig(t, "")
	ports := make([]int, 6)
	for k := range ports {
		if ports[k] = freePort(); ports[k] == 0 {
			t.Fatal("kubetest: no free loopback port")
		}
	}
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	i.PlainXDSAddr, i.XDSAddr, i.DebugURL = addr(ports[0]), addr(ports[1]), "http://"+addr(ports[2])
	i.env = []string{
		"PILOT_ENABLE_AMBIENT=true", "POD_NAMESPACE=istio-system", "POD_NAME=istiod-kubetest", "REVISION=default",
		"CLUSTER_ID=Kubernetes", "INJECTION_WEBHOOK_CONFIG_NAME=", "VALIDATION_WEBHOOK_CONFIG_NAME=",
		"CA_TRUSTED_NODE_ACCOUNTS=" + strings.Join(opts.TrustedNodeAccounts, ","),
		"ISTIOD_CUSTOM_HOST=localhost,127.0.0.1",
		// Pushes as soon as a change arrives: tests wait for them.
		"PILOT_DEBOUNCE_AFTER=10ms", "PILOT_DEBOUNCE_MAX=100ms",
	}
	i.env = append(i.env, opts.Env...)
	i.args = []string{"discovery", "--kubeconfig", kubeconfig,
		"--grpcAddr", i.PlainXDSAddr, "--secureGRPCAddr", i.XDSAddr, "--httpAddr", addr(ports[2]),
		"--httpsAddr", addr(ports[3]), "--monitoringAddr", addr(ports[4]), "--ctrlz_port", strconv.Itoa(ports[5]),
		"--log_output_level", "default:info"}
	if err := i.start(); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(func() {
		i.proc.stop()
		if t.Failed() {
			t.Logf("kubetest: istiod log:\n%s", i.proc.logTail(60))
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	for {
		cm, err := c.Client.CoreV1().ConfigMaps("istio-system").Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err == nil && cm.Data["root-cert.pem"] != "" {
			i.Root = []byte(cm.Data["root-cert.pem"])
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubetest: istiod published no istio-ca-root-cert in 60s (%v)\n%s", err, i.proc.logTail(40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return i
}

func (i *Istiod) start() error {
	p, err := startProcEnv(i.dir, "istiod", i.env, i.bins.PilotDiscovery, i.args...)
	if err != nil {
		return err
	}
	i.proc = p
	if err := p.waitHTTP(&http.Client{Timeout: time.Second}, i.DebugURL+"/ready", 60*time.Second); err != nil {
		return fmt.Errorf("%w\n%s", err, p.logTail(40))
	}
	return nil
}

// Restart kills istiod and starts it again on the same ports, with the same
// CA (its key is in Secret istio-system/istio-ca-secret).
func (i *Istiod) Restart() error {
	i.proc.stop()
	log := filepath.Join(i.dir, "istiod.log")
	if err := os.Rename(log, log+"."+strconv.FormatInt(time.Now().UnixNano(), 10)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return i.start()
}

// Stop kills istiod (Restart starts it again).
func (i *Istiod) Stop() { i.proc.stop() }

// PID is istiod's process ID (its memory is part of what xDS mode costs).
func (i *Istiod) PID() int { return i.proc.cmd.Process.Pid }
