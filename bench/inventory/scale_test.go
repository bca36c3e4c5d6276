package inventory

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/tunnel"
)

// The cluster each size builds: namespaces of podsPerNamespace pods spread
// over nodes of podsPerNode, and policies spread over the namespaces (each
// an ALLOW policy selecting one pod's app label by principals).
const (
	podsPerNamespace = 100
	podsPerNode      = 100
)

// The agent under test runs for node "bench", with one enrolled pod there.
var (
	targetIP  = netip.MustParseAddr("127.0.10.2")
	agentIP   = netip.MustParseAddr("127.0.10.1")
	idClient  = certs.Identity{TrustDomain: "cluster.local", Namespace: "bench", ServiceAccount: "client"}
	idTarget  = certs.Identity{TrustDomain: "cluster.local", Namespace: "bench", ServiceAccount: "target"}
	modes     = []string{"kube", "xds"}
	denyYAML  = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-client, namespace: bench}\nspec:\n  selector: {matchLabels: {app: target}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/bench/sa/client]}}]}]\n"
	nodeAgent = "ferry-bench"
)

// Result is one agent's figures at one size.
type Result struct {
	Mode     string `json:"mode"`
	Pods     int    `json:"pods"`
	Policies int    `json:"policies"`
	// SyncSeconds is from the agent's start to its readiness (the first
	// complete inventory applied).
	SyncSeconds float64 `json:"sync_s"`
	// RSSMiB and HeapMiB are the agent's resident memory and Go heap
	// (go_memstats_heap_alloc_bytes, garbage not yet collected included)
	// two seconds after it became ready.
	RSSMiB  float64 `json:"rss_mib"`
	HeapMiB float64 `json:"heap_mib"`
	// RSSAfterMiB is the agent's resident memory again after the policy
	// changes below (or the 2 minutes waited for one): what it holds once
	// the start-up sync's garbage has had time to go back to the kernel.
	RSSAfterMiB float64 `json:"rss_after_mib"`
	// EnforceMs are the times from writing a DENY policy (or deleting
	// it) through the API server to the agent refusing (or admitting) the
	// next HBONE connection, in milliseconds; the median is EnforceP50Ms.
	EnforceMs    []float64 `json:"enforce_ms"`
	EnforceP50Ms float64   `json:"enforce_p50_ms,omitempty"`
	// IstiodRSSMiB is istiod's resident memory (xDS mode).
	IstiodRSSMiB float64 `json:"istiod_rss_mib,omitempty"`
	// Error says why a figure is missing (a policy change not enforced in
	// 2 minutes: istiod saturated at 100k pods on 2 cores).
	Error string `json:"error,omitempty"`
}

// TestPrivilegedInventoryScale measures what the cluster's size costs one
// agent, in Kubernetes mode (it watches every pod and policy) and in xDS
// mode (istiod, fed by the same API server, sends them): memory, start-up
// sync, and the time from a policy written through the API to its
// enforcement on a real HBONE connection. Sizes come from
// FERRY_INVENTORY_SCALE (pods, comma-separated; default 200) and
// FERRY_INVENTORY_POLICIES (default 20); make bench runs 1000,10000,100000
// pods with 10000 policies and writes FERRY_INVENTORY_OUT (JSON).
func TestPrivilegedInventoryScale(t *testing.T) {
	testutil.Privileged(t)
	sizes := intsEnv(t, "FERRY_INVENTORY_SCALE", []int{200})
	policies := intsEnv(t, "FERRY_INVENTORY_POLICIES", []int{20})[0]
	ferry := buildFerry(t)
	kc := kubetest.Start(t)
	kc.ApplyDeploy(t)
	istiod := kc.StartIstiod(t, kubetest.BuildIstio(t), kubetest.IstiodOptions{
		// istiod's own debounce, not the tests' 10 ms.
		Env: []string{"PILOT_DEBOUNCE_AFTER=100ms", "PILOT_DEBOUNCE_MAX=10s"},
	})
	bulk, policyClient := bulkClients(t, kc)
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	caCert, caKey := ca.WriteFiles(t, dir)
	root := filepath.Join(dir, "istiod-root.pem")
	if err := os.WriteFile(root, istiod.Root, 0o644); err != nil {
		t.Fatal(err)
	}
	echo(t, netip.AddrPortFrom(targetIP, 8080))
	client := hboneClient(t, ca)

	// The node's own pods: the target and the agent's.
	kc.Namespace(t, "bench", map[string]string{"istio.io/dataplane-mode": "ambient"})
	kc.CreatePod(t, kubetest.Pod{Namespace: "bench", Name: "target", ServiceAccount: "target", Node: "bench", IP: targetIP.String(),
		Labels: map[string]string{"app": "target"}})
	agentPod := kc.CreatePod(t, kubetest.Pod{Namespace: "istio-system", Name: nodeAgent, ServiceAccount: "ferry", Node: "bench",
		IP: agentIP.String(), HostNetwork: true, Labels: map[string]string{"app": "ferry"}})
	token := filepath.Join(dir, "istio-token")
	if err := os.WriteFile(token, []byte(kc.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: agentPod})), 0o600); err != nil {
		t.Fatal(err)
	}
	kubeconfig := kc.Kubeconfig(t, kc.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Pod: agentPod}))

	var results []Result
	pods, pols := 0, 0
	for _, size := range sizes {
		start := time.Now()
		grow(t, bulk, policyClient, &pods, size, &pols, policies)
		t.Logf("cluster at %d pods, %d policies (%s)", pods, pols, time.Since(start).Round(time.Second))
		// istiod digests the burst for a while (minutes at 100k pods on
		// 2 cores): measure against a settled control plane.
		start = time.Now()
		waitIdle(t, istiod.PID())
		t.Logf("istiod idle after %s", time.Since(start).Round(time.Second))
		for _, mode := range modes {
			args := []string{"agent", "--node", "bench", "--kube", "--kubeconfig", kubeconfig, "--ca-cert", caCert, "--ca-key", caKey,
				"--redirect", "none", "--log-level", "warn"}
			if mode == "xds" {
				args = append(args, "--xds-addr", istiod.XDSAddr, "--ca-root", root, "--ca-token-file", token)
			}
			r := measure(t, ferry, args, client, kc, fmt.Sprintf("%s-%d", mode, pods))
			r.Mode, r.Pods, r.Policies = mode, pods, pols
			if mode == "xds" {
				r.IstiodRSSMiB = rssMiB(istiod.PID())
			}
			t.Logf("%s mode, %d pods, %d policies: ready in %.1fs, RSS %.0f MiB (%.0f MiB after), heap %.0f MiB, enforcement p50 %.0f ms %v",
				mode, r.Pods, r.Policies, r.SyncSeconds, r.RSSMiB, r.RSSAfterMiB, r.HeapMiB, r.EnforceP50Ms, r.EnforceMs)
			results = append(results, r)
		}
	}
	if out := os.Getenv("FERRY_INVENTORY_OUT"); out != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// measure starts an agent, waits for it to be ready, reads its memory (and,
// with FERRY_INVENTORY_PROFILES, saves its heap profile there, named
// heap-NAME.pb.gz) and times five policy changes, then stops it.
func measure(t *testing.T, ferry string, args []string, client *tunnel.Client, kc *kubetest.Cluster, name string) Result {
	t.Helper()
	lo := netip.MustParseAddr("127.0.0.1")
	control := testutil.ControlAddrs(t, 3)
	admin, metrics, ready := control[0], control[1], control[2]
	// Without capture the HBONE server tells the pod a connection is for by
	// its own address: it listens on the target's.
	hbone := netip.AddrPortFrom(targetIP, freePort(t, targetIP))
	args = append(args, "--outbound-addr", freeAddr(t, lo), "--inbound-addr", freeAddr(t, lo), "--hbone-addr", hbone.String(),
		"--admin-addr", admin, "--metrics-addr", metrics, "--readiness-addr", ready)
	cmd := exec.Command(ferry, args...)
	cmd.Env = append(os.Environ(), "POD_NAME="+nodeAgent, "POD_NAMESPACE=istio-system", "POD_IP="+agentIP.String())
	logf, err := os.Create(filepath.Join(t.TempDir(), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("agent log:\n%s", tailLines(string(b), 30))
		}
	}()
	for {
		if resp, err := http.Get("http://" + ready + "/healthz/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Since(start) > 10*time.Minute {
			t.Fatal("agent not ready after 10 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := Result{SyncSeconds: time.Since(start).Seconds()}
	time.Sleep(2 * time.Second) // let start-up garbage go
	r.RSSMiB = rssMiB(cmd.Process.Pid)
	r.HeapMiB = heapMiB(t, metrics)
	if dir := os.Getenv("FERRY_INVENTORY_PROFILES"); dir != "" {
		saveHeapProfile(t, admin, filepath.Join(dir, "heap-"+name+".pb.gz"))
	}

	var lastErr error
	allowed := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := client.Dial(ctx, tunnel.DialRequest{Src: idClient, Dst: idTarget, SrcAddr: netip.AddrPortFrom(lo, 0),
			HBONEAddr: hbone, Authority: netip.AddrPortFrom(targetIP, 8080)})
		lastErr = err
		if err != nil {
			return false
		}
		st.Close()
		return true
	}
	if !allowed() {
		t.Fatalf("the client is refused before any policy: %v", lastErr)
	}
	// The next agent starts without the policy, whatever happened here.
	defer kc.Dynamic.Resource(kubetest.AuthorizationPolicies).Namespace("bench").Delete(context.Background(), "deny-client", metav1.DeleteOptions{})
	for i := range 5 {
		deny := i%2 == 0
		begin := time.Now()
		if deny {
			if _, err := kc.Apply(context.Background(), []byte(denyYAML), kubetest.ApplyOptions{}); err != nil {
				t.Fatal(err)
			}
		} else if err := kc.Dynamic.Resource(kubetest.AuthorizationPolicies).Namespace("bench").Delete(context.Background(), "deny-client", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		for allowed() == deny {
			if time.Since(begin) > 2*time.Minute {
				r.Error = fmt.Sprintf("policy change %d not enforced after 2 minutes", i)
				t.Log(r.Error)
				r.RSSAfterMiB = rssMiB(cmd.Process.Pid)
				return r
			}
			time.Sleep(5 * time.Millisecond)
		}
		r.EnforceMs = append(r.EnforceMs, float64(time.Since(begin).Microseconds())/1000)
	}
	sorted := slices.Clone(r.EnforceMs)
	slices.Sort(sorted)
	r.EnforceP50Ms = sorted[len(sorted)/2]
	r.RSSAfterMiB = rssMiB(cmd.Process.Pid)
	return r
}

// grow adds pods (with their namespaces) and policies until the cluster
// holds size pods and want policies, 16 writers at a time.
func grow(t *testing.T, c kubernetes.Interface, policyClient dynamic.NamespaceableResourceInterface, pods *int, size int, pols *int, want int) {
	t.Helper()
	ctx := context.Background()
	var next atomic.Int64
	next.Store(int64(*pods))
	work := func(n int, f func(i int) error) {
		var wg sync.WaitGroup
		var failed atomic.Value
		for range 16 {
			wg.Go(func() {
				for {
					i := int(next.Add(1) - 1)
					if i >= n || failed.Load() != nil {
						return
					}
					if err := f(i); err != nil {
						failed.Store(err)
					}
				}
			})
		}
		wg.Wait()
		if err := failed.Load(); err != nil {
			t.Fatal(err)
		}
	}
	ns := func(i int) string { return "scale-" + strconv.Itoa(i/podsPerNamespace) }
	for i := *pods; i < size; i += podsPerNamespace {
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns(i),
			Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		_, err = c.CoreV1().ServiceAccounts(ns(i)).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	work(size, func(i int) error {
		ip := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
		name := "p" + strconv.Itoa(i)
		_, err := c.CoreV1().Pods(ns(i)).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "a" + strconv.Itoa(i%podsPerNamespace)}},
			Spec: corev1.PodSpec{ServiceAccountName: "app", NodeName: "node-" + strconv.Itoa(i/podsPerNode),
				Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		patch := fmt.Sprintf(`{"status":{"phase":"Running","podIP":%q,"podIPs":[{"ip":%q}],"conditions":[{"type":"Ready","status":"True"}]}}`, ip, ip)
		_, err = c.CoreV1().Pods(ns(i)).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status")
		return err
	})
	*pods = size
	next.Store(int64(*pols))
	namespaces := max(1, size/podsPerNamespace)
	work(want, func(i int) error {
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "pol-" + strconv.Itoa(i), "namespace": "scale-" + strconv.Itoa(i%namespaces)},
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": map[string]any{"app": "a" + strconv.Itoa(i%podsPerNamespace)}},
				"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{
					"principals": []any{"cluster.local/ns/scale-" + strconv.Itoa(i%namespaces) + "/sa/app"}}}}}},
			},
		}}
		_, err := policyClient.Namespace(obj.GetNamespace()).Create(ctx, obj, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	})
	*pols = max(*pols, want)
}

func intsEnv(t *testing.T, name string, def []int) []int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var out []int
	for f := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			t.Fatalf("$%s: %v", name, err)
		}
		out = append(out, n)
	}
	return out
}

func buildFerry(t *testing.T) string {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "ferry")
	if out, err := exec.Command("go", "build", "-C", root, "-o", bin, "./cmd/ferry").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// waitIdle waits until process pid uses less than 5% of a core over 3 s
// (at most 15 minutes).
func waitIdle(t *testing.T, pid int) {
	deadline := time.Now().Add(15 * time.Minute)
	last := cpuSeconds(pid)
	for time.Now().Before(deadline) {
		time.Sleep(3 * time.Second)
		now := cpuSeconds(pid)
		if now-last < 0.15 {
			return
		}
		last = now
	}
	t.Logf("pid %d still busy after 15 minutes", pid)
}

// cpuSeconds is the user and system CPU time process pid has used.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces): state is the
	// first, utime the 12th, stime the 13th.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100 // USER_HZ
}

func rssMiB(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// heapMiB reads go_memstats_heap_alloc_bytes from the agent's metrics.
// saveHeapProfile writes the agent's heap profile (its admin endpoint's
// /debug/pprof/heap, after a collection) to path: what the memory is.
func saveHeapProfile(t *testing.T, admin, path string) {
	resp, err := http.Get("http://" + admin + "/debug/pprof/heap?gc=1")
	if err != nil {
		t.Logf("heap profile: %v", err)
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		err = os.WriteFile(path, b, 0o644)
	}
	if err != nil {
		t.Logf("heap profile: %v", err)
	}
}

func heapMiB(t *testing.T, addr string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_heap_alloc_bytes "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f / (1 << 20)
		}
	}
	return 0
}

func freePort(t *testing.T, ip netip.Addr) uint16 {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return netip.MustParseAddrPort(ln.Addr().String()).Port()
}

func freeAddr(t *testing.T, ip netip.Addr) string {
	return netip.AddrPortFrom(ip, freePort(t, ip)).String()
}

func echo(t *testing.T, addr netip.AddrPort) {
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
}

func hboneClient(t *testing.T, ca *certstest.CA) *tunnel.Client {
	store := ca.Store(t, idClient)
	c, err := tunnel.NewClient(tunnel.ClientConfig{
		TLS: func(src, want certs.Identity) (*tls.Config, error) { return store.ClientConfig(src, want), nil },
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// bulkClients are clients for building the cluster fast: no client-side
// rate limit.
func bulkClients(t *testing.T, kc *kubetest.Cluster) (kubernetes.Interface, dynamic.NamespaceableResourceInterface) {
	cfg := rest.CopyConfig(kc.Config)
	cfg.QPS, cfg.Burst = 5000, 10000
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, d.Resource(kubetest.AuthorizationPolicies)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
