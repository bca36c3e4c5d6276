package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Namespace creates namespace name with labels, or updates an existing one's
// labels to exactly these. It fails t on error.
func (c *Cluster) Namespace(t testing.TB, name string, labels map[string]string) *corev1.Namespace {
	t.Helper()
	ctx := t.Context()
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		ns, err = c.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			ns.Labels = labels
			ns, err = c.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		t.Fatalf("kubetest: namespace %s: %v", name, err)
	}
	return ns
}

// ServiceAccount creates the service account namespace/name if it does not
// exist (no controller manager runs, so not even "default" exists). It fails
// t on error.
func (c *Cluster) ServiceAccount(t testing.TB, namespace, name string) {
	t.Helper()
	_, err := c.Client.CoreV1().ServiceAccounts(namespace).Create(t.Context(), &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: service account %s/%s: %v", namespace, name, err)
	}
}

// Pod describes a pod for CreatePod.
type Pod struct {
	Namespace, Name string
	ServiceAccount  string // "default" when empty
	Node            string // spec.nodeName: the pod is "scheduled" there
	IP              string // status.podIP; the pod is Running when set
	HostNetwork     bool
	Labels          map[string]string
	Annotations     map[string]string
}

// CreatePod creates the pod (and its namespace and service account when
// missing) with one placeholder container, then, when p.IP is set, patches
// its status as a kubelet would: phase Running, podIP and podIPs. It returns
// the pod as last written and fails t on error.
func (c *Cluster) CreatePod(t testing.TB, p Pod) *corev1.Pod {
	t.Helper()
	ctx := t.Context()
	if _, err := c.Client.CoreV1().Namespaces().Get(ctx, p.Namespace, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		c.Namespace(t, p.Namespace, nil)
	}
	sa := p.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	c.ServiceAccount(t, p.Namespace, sa)
	pod, err := c.Client.CoreV1().Pods(p.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, Annotations: p.Annotations},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			NodeName:           p.Node,
			HostNetwork:        p.HostNetwork,
			Containers:         []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: create pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	if p.IP == "" {
		return pod
	}
	return c.SetPodStatus(t, pod.Namespace, pod.Name, corev1.PodRunning, p.IP)
}

// SetPodStatus patches a pod's status.phase, podIP and podIPs through the
// status subresource, as a kubelet would. It fails t on error.
func (c *Cluster) SetPodStatus(t testing.TB, namespace, name string, phase corev1.PodPhase, ip string) *corev1.Pod {
	t.Helper()
	status := map[string]any{"phase": phase, "podIP": ip, "podIPs": []map[string]string{{"ip": ip}}}
	if phase == corev1.PodRunning {
		// Ready, as a kubelet reports a pod whose probes pass: istiod
		// reports other pods unhealthy.
		status["conditions"] = []map[string]string{{"type": "Ready", "status": "True"}}
	}
	if ip == "" {
		status["podIP"], status["podIPs"] = nil, nil
	}
	patch, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := c.Client.CoreV1().Pods(namespace).Patch(t.Context(), name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		t.Fatalf("kubetest: patch pod %s/%s status: %v", namespace, name, err)
	}
	return pod
}

// TokenOptions tune Token.
type TokenOptions struct {
	// Audiences of the token; empty means the API server's (Issuer).
	Audiences []string
	// Pod, when set, binds the token to this pod (name and UID): the token
	// dies with the pod, and a TokenReview reports the pod's name, UID and
	// node in the user's extra fields.
	Pod *corev1.Pod
	// Expiration is the requested lifetime; zero means one hour.
	Expiration time.Duration
}

// Token mints a token for namespace/serviceAccount with the TokenRequest API
// (the service account must exist). It fails t on error.
func (c *Cluster) Token(t testing.TB, namespace, serviceAccount string, opts TokenOptions) string {
	t.Helper()
	tok, err := c.token(t.Context(), namespace, serviceAccount, opts)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return tok
}

func (c *Cluster) token(ctx context.Context, namespace, serviceAccount string, opts TokenOptions) (string, error) {
	exp := opts.Expiration
	if exp == 0 {
		exp = time.Hour
	}
	secs := int64(exp / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         opts.Audiences,
		ExpirationSeconds: &secs,
	}}
	if opts.Pod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: opts.Pod.Name, UID: opts.Pod.UID,
		}
	}
	res, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s/%s: %w", namespace, serviceAccount, err)
	}
	return res.Status.Token, nil
}

// ConfigForToken returns a client configuration that authenticates with the
// bearer token instead of the admin certificate.
func (c *Cluster) ConfigForToken(token string) *rest.Config {
	cfg := rest.AnonymousClientConfig(c.Config)
	cfg.BearerToken = token
	return cfg
}

// ClientAs returns a clientset authenticated as namespace/serviceAccount
// (with a fresh API-audience token), for testing RBAC. It fails t on error.
func (c *Cluster) ClientAs(t testing.TB, namespace, serviceAccount string) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(c.ConfigForToken(c.Token(t, namespace, serviceAccount, TokenOptions{})))
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return cs
}

// DeletePod deletes a pod at once, as a kubelet confirming the container's
// exit would (without a kubelet, a graceful delete of a scheduled pod never
// completes), and waits until it is gone. It fails t on error.
func (c *Cluster) DeletePod(t testing.TB, namespace, name string) {
	t.Helper()
	ctx := t.Context()
	zero := int64(0)
	err := c.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("kubetest: delete pod %s/%s: %v", namespace, name, err)
	}
	for range 100 {
		_, err := c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("kubetest: pod %s/%s still there after deletion", namespace, name)
}

// Kubeconfig writes a kubeconfig file for the cluster and returns its path,
// for processes the test starts (`ferry agent --kube --kubeconfig PATH`).
// With an empty token it authenticates as the admin (system:masters);
// otherwise with the bearer token (see Token). It fails t on error.
func (c *Cluster) Kubeconfig(t testing.TB, token string) string {
	t.Helper()
	user := map[string]any{"token": token}
	if token == "" {
		user = map[string]any{
			"client-certificate-data": c.Config.TLSClientConfig.CertData,
			"client-key-data":         c.Config.TLSClientConfig.KeyData,
		}
	}
	// JSON is YAML; []byte fields encode as base64, as kubeconfig wants.
	b, err := json.Marshal(map[string]any{
		"apiVersion": "v1",
		"kind":       "Config",
		"clusters": []any{map[string]any{"name": "kubetest", "cluster": map[string]any{
			"server": c.Config.Host, "certificate-authority-data": c.Config.TLSClientConfig.CAData,
		}}},
		"users":           []any{map[string]any{"name": "kubetest", "user": user}},
		"contexts":        []any{map[string]any{"name": "kubetest", "context": map[string]any{"cluster": "kubetest", "user": "kubetest"}}},
		"current-context": "kubetest",
	})
	if err != nil {
		t.Fatalf("kubetest: kubeconfig: %v", err)
	}
	f, err := os.CreateTemp(t.TempDir(), "kubeconfig-*")
	if err != nil {
		t.Fatalf("kubetest: kubeconfig: %v", err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatalf("kubetest: kubeconfig: %v", err)
	}
	return f.Name()
}
