package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/ferrymesh/ferry/node/cni"
)

// serveCNI answers the ferry-cni plugin on ln (--capture pod): each pod
// sandbox the container runtime creates on this node is captured, if
// enrolled, before the plugin lets the runtime start its containers.
func (a *Agent) serveCNI(ctx context.Context, ln net.Listener) error {
	s := &cni.Server{Hooks: cniHooks{a}, Logger: a.log.With("component", "cni"),
		Observe: func(op string, _ time.Duration, err error) {
			result := "ok"
			if err != nil {
				result = "error"
			}
			a.metrics.CNIRequests.WithLabelValues(op, result).Inc()
		}}
	return s.Serve(ctx, ln)
}

// cniHooks are the agent's answers to the plugin.
type cniHooks struct{ a *Agent }

// AddPod captures pod if it is enrolled. The plugin reports a sandbox before
// the kubelet has reported the pod's address, so the pod's labels and
// namespace come from the inventory, waited for while ctx lasts, and its
// addresses from the plugin. The agent's view takes them from the capture
// until the API lists them, and AddPod returns once it has, so the pod is
// served from its first connection.
func (h cniHooks) AddPod(ctx context.Context, pod cni.Pod) error {
	enrolled, err := h.a.enrolment(ctx, pod)
	if err != nil {
		return err
	}
	if !enrolled {
		return nil
	}
	if err := h.a.pods.add(pod); err != nil {
		return err
	}
	done := make(chan struct{})
	select {
	case h.a.reapply <- done:
	case <-ctx.Done():
		return nil // captured; the view catches up with the next snapshot
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// DelPod releases pod's capture. The plugin ignores the answer: a pod
// deleted while the agent was down is released by the reconcile loop.
func (h cniHooks) DelPod(ctx context.Context, pod cni.Pod) error {
	h.a.pods.delete(pod)
	return nil
}

// enrolment waits until the inventory lists pod (same namespace, name and,
// when both know it, UID) and says whether it is enrolled. ctx ending first
// is an error: the plugin fails the sandbox and the runtime retries it, so a
// pod never starts uncaptured because the agent had not heard of it yet.
func (a *Agent) enrolment(ctx context.Context, pod cni.Pod) (bool, error) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if s := a.current(); s != nil {
			p, ok := s.view.localPod(pod.Namespace, pod.Name)
			if ok && (p.UID == "" || pod.UID == "" || p.UID == pod.UID) {
				if len(pod.IPs) > 0 {
					p.IP = pod.IPs[0]
				}
				return Enrolled(p, s.view.snap.Namespaces[p.Namespace], a.cfg.SystemNamespace), nil
			}
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("pod %s is not in the agent's inventory yet (%v): retry", pod, ctx.Err())
		case <-t.C:
		}
	}
}

// keepCNIInstalled keeps the ferry-cni plugin chained in the node's CNI
// configuration (--cni-conf-dir) until ctx ends: the network plugin may
// write its configuration after the agent starts, or rewrite it, as
// istio-cni also has to handle. Install is idempotent and rewrites nothing
// that is already right.
func (a *Agent) keepCNIInstalled(ctx context.Context) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("node: cni install: %w", err)
	}
	conf := cni.Conf{AgentSocket: a.cfg.CNISocket}
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	var last string
	for {
		err := cni.Install(a.cfg.CNIConfDir, a.cfg.CNIBinDir, self, conf)
		switch {
		case err == nil:
			a.ready.set(TaskCNI, true, "")
		case errors.Is(err, cni.ErrNoConfig):
			a.ready.set(TaskCNI, false, "no CNI configuration in "+a.cfg.CNIConfDir+" yet")
		default:
			a.ready.set(TaskCNI, false, err.Error())
		}
		if err != nil && err.Error() != last {
			a.log.Warn("ferry-cni plugin not installed: pods starting now are not captured until it is; retrying", "dir", a.cfg.CNIConfDir, "err", err)
		}
		if err == nil && last != "" {
			a.log.Info("ferry-cni plugin installed", "dir", a.cfg.CNIConfDir)
		}
		last = ""
		if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// probeCgroupCheck is how often the agent looks whether the kubelet's
// cgroup was made anew (a kubelet restart): a stat(2) each time.
const probeCgroupCheck = 2 * time.Second

// keepProbesAttached keeps the probe program on the kubelet's cgroup
// (--probe-cgroup) across kubelet restarts until ctx ends
// (podCapture.followProbeCgroup). A failure is logged once and retried:
// probes to STRICT pods fail meanwhile.
func (a *Agent) keepProbesAttached(ctx context.Context) error {
	t := time.NewTicker(probeCgroupCheck)
	defer t.Stop()
	var last string
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		moved, err := a.pods.followProbeCgroup()
		switch {
		case err != nil && err.Error() != last:
			a.log.Error("the kubelet's cgroup was made anew and the probe program cannot follow it: kubelet probes to captured pods are captured (STRICT pods refuse them) until it can; retrying",
				"cgroup", a.cfg.ProbeCgroup, "err", err)
		case moved:
			a.log.Info("the kubelet's cgroup was made anew (a kubelet restart): the probe program follows it", "cgroup", a.cfg.ProbeCgroup)
		}
		last = ""
		if err != nil {
			last = err.Error()
		}
	}
}
