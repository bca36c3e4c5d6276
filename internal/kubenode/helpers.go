package kubenode

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Binaries runs scripts/kube-test-binaries --node in moduleRoot (building
// and caching the binaries on first use: 15-25 minutes cold, under a second
// warm) and returns the directory for Config.BinDir.
func Binaries(ctx context.Context, moduleRoot string) (string, error) {
	script := filepath.Join(moduleRoot, "scripts", "kube-test-binaries")
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, script, "--node")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("kubenode: %s --node: %w\n%s", script, err, stderr.Bytes())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := lines[len(lines)-1]
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("kubenode: %s printed %q, want a directory", script, stdout.String())
	}
	return dir, nil
}

// BuildImage builds the Go package pkg of moduleRoot as a static binary,
// wraps it as image ref (the binary at /NAME, NAME being pkg's last
// element, and the entrypoint /NAME followed by args) and imports it into
// the node's containerd.
func (n *Node) BuildImage(ctx context.Context, moduleRoot, pkg, ref string, args ...string) error {
	name := path.Base(pkg)
	tmp, err := os.MkdirTemp("", "kubenode-image-")
	if err != nil {
		return fmt.Errorf("kubenode: %w", err)
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, name)
	if err := BuildStatic(ctx, moduleRoot, pkg, bin); err != nil {
		return err
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return fmt.Errorf("kubenode: %w", err)
	}
	archive := filepath.Join(tmp, "image.tar")
	if err := WriteImageFile(archive, Image{Ref: ref, Files: map[string][]byte{"/" + name: b}, Entrypoint: append([]string{"/" + name}, args...)}); err != nil {
		return err
	}
	return n.ImportImage(ctx, archive)
}

// Poll calls check every 250 ms until it returns nil, or until ctx ends or
// timeout (if not 0) has passed; then it returns check's last error.
func Poll(ctx context.Context, timeout time.Duration, check func() error) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// WaitPod polls the pod every 200 ms until done returns true or an error,
// or ctx ends; it returns the pod as last read.
func WaitPod(ctx context.Context, c kubernetes.Interface, namespace, name string, done func(*corev1.Pod) (bool, error)) (*corev1.Pod, error) {
	for {
		pod, err := c.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			ok, derr := done(pod)
			if derr != nil {
				return pod, derr
			}
			if ok {
				return pod, nil
			}
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("phase %s", pod.Status.Phase)
			}
			return pod, fmt.Errorf("kubenode: pod %s/%s: %w (%w)", namespace, name, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// PodRunning is a WaitPod condition: the pod runs and has an IP. A pod
// that ended fails the wait.
func PodRunning(p *corev1.Pod) (bool, error) {
	switch p.Status.Phase {
	case corev1.PodFailed, corev1.PodSucceeded:
		return false, fmt.Errorf("kubenode: pod %s/%s ended: %s", p.Namespace, p.Name, p.Status.Phase)
	}
	return p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "", nil
}

// PodDone is a WaitPod condition: the pod ended (Succeeded or Failed).
func PodDone(p *corev1.Pod) (bool, error) {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed, nil
}
