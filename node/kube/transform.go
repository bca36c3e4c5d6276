package kube

import (
	"maps"
	"net/netip"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Annotations Ferry reads on pods; the pod transform drops every other one.
const (
	// RedirectionAnnotation is "enabled" on a pod whose traffic a node agent
	// captures (Istio's name and value).
	RedirectionAnnotation = "ambient.istio.io/redirection"
	// RedirectionEnabled is RedirectionAnnotation's value once captured.
	RedirectionEnabled = "enabled"
	// SidecarStatusAnnotation marks a pod with an injected sidecar. Only its
	// presence matters, so the transform keeps the key with an empty value
	// (the real value is a large JSON document).
	SidecarStatusAnnotation = "sidecar.istio.io/status"
	// BypassInboundCaptureAnnotation asks for outbound capture only.
	BypassInboundCaptureAnnotation = "ambient.istio.io/bypass-inbound-capture"
	// DryRunAnnotation marks an AuthorizationPolicy as log-only.
	DryRunAnnotation = "istio.io/dry-run"
)

// podInfo is the informer's copy of a v1 Pod: what Ferry uses and nothing
// else (about a fifth of a decoded corev1.Pod before labels). Strings that
// repeat across pods (namespace, service account, node, label keys and
// values) are interned.
type podInfo struct {
	metav1.ObjectMeta // name, namespace, uid, resourceVersion, labels, kept annotations
	serviceAccount    string
	nodeName          string
	ip                netip.Addr
	hostNetwork       bool
	phase             corev1.PodPhase
}

// GetObjectKind implements runtime.Object.
func (p *podInfo) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject implements runtime.Object.
func (p *podInfo) DeepCopyObject() runtime.Object {
	c := *p
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}

// terminal reports whether the pod has finished: its IP may already belong
// to another pod.
func (p *podInfo) terminal() bool {
	return p.phase == corev1.PodSucceeded || p.phase == corev1.PodFailed
}

// sameAs reports whether q differs from p only in fields Ferry ignores
// (resourceVersion), so an update between them changes no snapshot.
func (p *podInfo) sameAs(q *podInfo) bool {
	return p.Name == q.Name && p.Namespace == q.Namespace && p.UID == q.UID &&
		p.serviceAccount == q.serviceAccount && p.nodeName == q.nodeName && p.ip == q.ip &&
		p.hostNetwork == q.hostNetwork && p.phase == q.phase &&
		maps.Equal(p.Labels, q.Labels) && maps.Equal(p.Annotations, q.Annotations)
}

// transformPod is the pod informer's TransformFunc: *corev1.Pod → *podInfo.
// Anything else (tombstones, an already transformed pod) passes unchanged.
func transformPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	p := &podInfo{
		ObjectMeta: metav1.ObjectMeta{
			Name:              pod.Name,
			Namespace:         intern(pod.Namespace),
			UID:               pod.UID,
			ResourceVersion:   pod.ResourceVersion,
			DeletionTimestamp: pod.DeletionTimestamp,
			Labels:            internMap(pod.Labels),
		},
		serviceAccount: intern(pod.Spec.ServiceAccountName),
		nodeName:       intern(pod.Spec.NodeName),
		hostNetwork:    pod.Spec.HostNetwork,
		phase:          corev1.PodPhase(intern(string(pod.Status.Phase))),
	}
	if p.serviceAccount == "" {
		p.serviceAccount = "default"
	}
	if pod.Status.PodIP != "" {
		// A malformed IP (never written by a kubelet) leaves the pod without
		// one: it cannot be enrolled or routed to.
		p.ip, _ = netip.ParseAddr(pod.Status.PodIP)
	}
	for _, k := range []string{RedirectionAnnotation, BypassInboundCaptureAnnotation, SidecarStatusAnnotation} {
		v, ok := pod.Annotations[k]
		if !ok {
			continue
		}
		if p.Annotations == nil {
			p.Annotations = make(map[string]string, 1)
		}
		if k == SidecarStatusAnnotation {
			v = ""
		}
		p.Annotations[k] = intern(v)
	}
	return p, nil
}

// transformNamespace keeps a namespace's name, uid, resourceVersion and labels.
func transformNamespace(obj any) (any, error) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:            ns.Name,
		UID:             ns.UID,
		ResourceVersion: ns.ResourceVersion,
		Labels:          ns.Labels,
	}}, nil
}

// transformPolicy drops what a policy's conversion never reads: managed
// fields, status, and every annotation but istio.io/dry-run (the last-applied
// configuration annotation alone doubles an object's size).
func transformPolicy(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	u.SetManagedFields(nil)
	delete(u.Object, "status")
	if a := u.GetAnnotations(); len(a) > 0 {
		if v, ok := a[DryRunAnnotation]; ok {
			u.SetAnnotations(map[string]string{DryRunAnnotation: v})
		} else {
			u.SetAnnotations(nil)
		}
	}
	return u, nil
}

// intern returns the canonical copy of s, so equal strings share memory.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

func internMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[intern(k)] = intern(v)
	}
	return out
}
