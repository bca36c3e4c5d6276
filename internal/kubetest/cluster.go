package kubetest

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ferrymesh/ferry/internal/kubepki"
)

// Issuer is the service-account token issuer (and default API audience) of
// every test cluster.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// Cluster is a running etcd + kube-apiserver pair. Its fields are set by
// Start and must not be modified; the clients are safe for concurrent use.
type Cluster struct {
	// Config authenticates as a member of system:masters (RBAC bypassed).
	// Copy it (rest.CopyConfig) before changing it.
	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// Dir holds the cluster's certificates, keys, etcd data and the logs
	// (etcd.log, kube-apiserver.log); it is removed when the test ends.
	Dir string
}

// serviceRange is the Service address range, from the benchmarking range
// 198.18.0.0/15 (never a private one) and apart from internal/kubenode's;
// firstServiceIP, the kubernetes Service's, is in the serving certificate.
var (
	serviceRange   = netip.MustParsePrefix("198.19.224.0/20")
	firstServiceIP = serviceRange.Addr().Next()
)

// Start starts etcd and kube-apiserver for t, installs the CRDs from
// deploy/crds and returns once the API server is ready. Everything is
// stopped and removed in t.Cleanup; the processes' logs are shown when t has
// failed. Start fails t on any error.
//
// The API server runs with RBAC authorization, the ServiceAccount admission
// plugin (a pod's service account must exist: see CreatePod), TokenRequest
// and TokenReview against its own signing key, and no endpoint reconciler.
func Start(t testing.TB) *Cluster {
	t.Helper()
	bins := Binaries(t)
	dir := t.TempDir()
	p, err := kubepki.NewPKI("kubetest", []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IP(firstServiceIP.AsSlice())})
	if err != nil {
		t.Fatalf("kubetest: pki: %v", err)
	}
	files := map[string][]byte{
		"ca.crt": p.CACert, "apiserver.crt": p.ServingCert, "apiserver.key": p.ServingKey,
		"sa.key": p.SAKey, "sa.pub": p.SAPub,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatalf("kubetest: %v", err)
		}
	}

	etcdURL := startWithRetry(t, func() (*proc, string, error) {
		client, peer, err := freePort(), freePort(), error(nil)
		if client == 0 || peer == 0 {
			return nil, "", errors.New("no free loopback port")
		}
		url := "http://127.0.0.1:" + strconv.Itoa(client)
		peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
		data := filepath.Join(dir, "etcd")
		_ = os.RemoveAll(data)
		pr, err := startProc(dir, "etcd", filepath.Join(bins, "etcd"),
			"--name=kubetest",
			"--data-dir="+data,
			"--listen-client-urls="+url, "--advertise-client-urls="+url,
			"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
			"--initial-cluster=kubetest="+peerURL,
			"--log-level=warn", "--logger=zap",
		)
		if err != nil {
			return nil, "", err
		}
		return pr, url, pr.waitHTTP(&http.Client{Timeout: time.Second}, url+"/health", 30*time.Second)
	})

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CACert)
	adminTLS, err := tls.X509KeyPair(p.AdminCert, p.AdminKey)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	probe := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{adminTLS},
	}}}
	t.Cleanup(probe.CloseIdleConnections)
	host := startWithRetry(t, func() (*proc, string, error) {
		port := freePort()
		if port == 0 {
			return nil, "", errors.New("no free loopback port")
		}
		host := "https://127.0.0.1:" + strconv.Itoa(port)
		pr, err := startProc(dir, "kube-apiserver", filepath.Join(bins, "kube-apiserver"),
			"--etcd-servers="+etcdURL,
			"--etcd-prefix=/registry",
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port="+strconv.Itoa(port),
			"--cert-dir="+dir,
			"--tls-cert-file="+filepath.Join(dir, "apiserver.crt"),
			"--tls-private-key-file="+filepath.Join(dir, "apiserver.key"),
			"--client-ca-file="+filepath.Join(dir, "ca.crt"),
			"--service-account-issuer="+Issuer,
			"--service-account-key-file="+filepath.Join(dir, "sa.pub"),
			"--service-account-signing-key-file="+filepath.Join(dir, "sa.key"),
			"--service-cluster-ip-range="+serviceRange.String(),
			"--authorization-mode=RBAC",
			"--allow-privileged=true",
			"--endpoint-reconciler-type=none",
			"--enable-priority-and-fairness=false",
			"--profiling=false",
			"--v=1",
		)
		if err != nil {
			return nil, "", err
		}
		return pr, host, pr.waitHTTP(probe, host+"/readyz", 90*time.Second)
	})

	cfg := &rest.Config{
		Host: host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: p.CACert, CertData: p.AdminCert, KeyData: p.AdminKey,
		},
		QPS: 200, Burst: 400,
		Timeout: 30 * time.Second,
	}
	c := &Cluster{Config: cfg, Dir: dir}
	if c.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	if c.Dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	if err := c.InstallCRDs(t.Context()); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return c
}

// startWithRetry runs start up to three times (a free port can be taken
// between choosing and binding it), registers the process's cleanup and
// returns start's address.
func startWithRetry(t testing.TB, start func() (*proc, string, error)) string {
	t.Helper()
	var err error
	for range 3 {
		var p *proc
		var addr string
		p, addr, err = start()
		if p != nil {
			t.Cleanup(func() {
				p.stop()
				if t.Failed() {
					t.Logf("kubetest: %s log:\n%s", p.name, p.logTail(40))
				}
			})
		}
		if err == nil {
			return addr
		}
		if p != nil {
			t.Logf("kubetest: %s did not start (%v):\n%s", p.name, err, p.logTail(20))
			p.stop()
		}
	}
	t.Fatalf("kubetest: %v", err)
	return ""
}

// proc is one child process, its output in dir/name.log.
type proc struct {
	name, log string
	cmd       *exec.Cmd
	exited    chan struct{}
	err       error // set before exited is closed
}

func startProc(dir, name, bin string, args ...string) (*proc, error) {
	return startProcEnv(dir, name, nil, bin, args...)
}

// startProcEnv is startProc with env added to the test's environment and
// dir as the working directory.
func startProcEnv(dir, name string, env []string, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if env != nil {
		cmd.Env, cmd.Dir = append(os.Environ(), env...), dir
	}
	// Own process group, and killed with the test binary if it dies first.
	// Pdeathsig fires when the forking thread exits, so the fork happens on
	// a thread locked for the child's lifetime (others' tests lock and
	// discard threads to enter network namespaces).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &proc{name: name, log: logPath, cmd: cmd, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// waitHTTP polls url until it answers 200, the process exits, or timeout.
func (p *proc) waitHTTP(c *http.Client, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", url, resp.Status)
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w", p.name, timeout, err)
		}
	}
}

// stop kills the process group and waits for the process to exit. Nothing
// a test cluster holds outlives the test, so there is no graceful shutdown
// (kube-apiserver's takes seconds). It is idempotent.
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

func (p *proc) logTail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	return tail(b, n)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago, or 0.
func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
