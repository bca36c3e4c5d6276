package kube

import (
	"cmp"
	"encoding/binary"
	"maps"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"weak"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/cache"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ferrymesh/ferry/node/inventory"
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

// podInfo is the pod store's copy of a v1 Pod: what Ferry uses and nothing
// else. Strings that repeat across pods (namespace, service account, node,
// label keys and values) are interned, and pods with equal labels (a
// Deployment's replicas) or equal kept annotations share one map.
//
// Its Pod is the one every snapshot lists until the pod changes, so a
// snapshot costs a pointer per pod. Of the metadata it holds the name,
// namespace and UID, not an ObjectMeta (a quarter of a kilobyte per pod,
// mostly empty): GetObjectMeta builds one when the reflector asks for a key.
type podInfo struct {
	inventory.Pod
	phase corev1.PodPhase
	// labels and annotations hold Pod.Labels and Pod.Annotations: the
	// interner forgets a map once no podInfo holds it.
	labels, annotations *sharedMap // annotations: only those Ferry reads
}

// GetObjectKind implements runtime.Object.
func (p *podInfo) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject implements runtime.Object. Every field is immutable or
// shared (the maps), so a shallow copy is a deep one.
func (p *podInfo) DeepCopyObject() kruntime.Object {
	c := *p
	return &c
}

// GetObjectMeta implements metav1.ObjectMetaAccessor, for the reflector's
// keys. (The pod store reads no resource version.)
func (p *podInfo) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: types.UID(p.UID)}
}

// terminal reports whether the pod has finished: its IP may already belong
// to another pod.
func (p *podInfo) terminal() bool {
	return p.phase == corev1.PodSucceeded || p.phase == corev1.PodFailed
}

// sameAs reports whether q holds what p holds: an update between them
// touched only what Ferry does not keep (a condition, a restart count), and
// changes no snapshot.
func (p *podInfo) sameAs(q *podInfo) bool {
	return p.Name == q.Name && p.Namespace == q.Namespace && p.UID == q.UID &&
		p.ServiceAccount == q.ServiceAccount && p.NodeName == q.NodeName && p.IP == q.IP && slices.Equal(p.IPs, q.IPs) &&
		p.HostNetwork == q.HostNetwork && p.phase == q.phase &&
		maps.Equal(p.Labels, q.Labels) && maps.Equal(p.Annotations, q.Annotations)
}

// transformer strips informer objects; it owns the map interner of one
// Source run.
type transformer struct {
	maps mapInterner
}

// pod is the pod store's TransformFunc: *corev1.Pod → *podInfo.
// Anything else (tombstones, an already transformed pod) passes unchanged.
func (tr *transformer) pod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	p := &podInfo{
		Pod: inventory.Pod{
			Name:           pod.Name,
			Namespace:      inventory.Intern(pod.Namespace),
			UID:            string(pod.UID),
			ServiceAccount: cmp.Or(inventory.Intern(pod.Spec.ServiceAccountName), "default"),
			NodeName:       inventory.Intern(pod.Spec.NodeName),
			HostNetwork:    pod.Spec.HostNetwork,
		},
		labels: tr.maps.intern(pod.Labels),
		phase:  corev1.PodPhase(inventory.Intern(string(pod.Status.Phase))),
	}
	if pod.Status.PodIP != "" {
		// A malformed IP (never written by a kubelet) leaves the pod without
		// one: it cannot be enrolled or routed to.
		p.IP, _ = netip.ParseAddr(pod.Status.PodIP)
	}
	for _, pip := range pod.Status.PodIPs {
		if ip, err := netip.ParseAddr(pip.IP); err == nil {
			p.IPs = append(p.IPs, ip)
		}
	}
	var kept map[string]string
	for _, k := range []string{RedirectionAnnotation, BypassInboundCaptureAnnotation, SidecarStatusAnnotation} {
		v, ok := pod.Annotations[k]
		if !ok {
			continue
		}
		if kept == nil {
			kept = make(map[string]string, 1)
		}
		if k == SidecarStatusAnnotation {
			v = ""
		}
		kept[k] = v
	}
	p.annotations = tr.maps.intern(kept)
	p.Labels, p.Annotations = p.labels.get(), p.annotations.get()
	return p, nil
}

// namespace keeps a namespace's name, uid, resourceVersion and labels.
func (tr *transformer) namespace(obj any) (any, error) {
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

// service keeps what serviceFromAPI reads.
func (tr *transformer) service(obj any) (any, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svc.Name, Namespace: svc.Namespace, UID: svc.UID, ResourceVersion: svc.ResourceVersion},
		Spec: corev1.ServiceSpec{
			ClusterIP: svc.Spec.ClusterIP, ClusterIPs: svc.Spec.ClusterIPs,
			Ports: svc.Spec.Ports, Selector: svc.Spec.Selector,
		},
	}, nil
}

// serviceFromAPI converts a Service the API server validated: its TCP ports
// and parseable cluster IPs ("None" is a headless Service's).
func serviceFromAPI(svc *corev1.Service) inventory.Service {
	s := inventory.Service{Name: svc.Name, Namespace: svc.Namespace, Selector: svc.Spec.Selector}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, v := range ips {
		if ip, err := netip.ParseAddr(v); err == nil {
			s.ClusterIPs = append(s.ClusterIPs, ip)
		}
	}
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP || p.Port < 1 || p.Port > 65535 {
			continue
		}
		sp := inventory.ServicePort{Port: uint16(p.Port)}
		switch {
		case p.TargetPort.Type == intstr.String:
			sp.TargetPortName = p.TargetPort.StrVal
		case p.TargetPort.IntVal > 0 && p.TargetPort.IntVal <= 65535:
			sp.TargetPort = uint16(p.TargetPort.IntVal)
		}
		s.Ports = append(s.Ports, sp)
	}
	return s
}

// policyObject is the informer's copy of an AuthorizationPolicy or
// PeerAuthentication: its identity and the object as decoded, so that the
// informer holds Ferry's form of each policy and not its JSON tree (nor a
// whole ObjectMeta: 232 bytes).
type policyObject struct {
	name, namespace string
	uid             types.UID
	resourceVersion string
	decoded         decodedPolicy
}

// GetObjectKind implements runtime.Object.
func (p *policyObject) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject implements runtime.Object. The decoded policy is never
// modified and stays shared.
func (p *policyObject) DeepCopyObject() kruntime.Object {
	c := *p
	return &c
}

// GetObjectMeta implements metav1.ObjectMetaAccessor, for the informer's
// keys and resource versions.
func (p *policyObject) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Name: p.name, Namespace: p.namespace, UID: p.uid, ResourceVersion: p.resourceVersion}
}

// policy returns the transform of kind's informer: it decodes each object
// (decodePolicy) after dropping what decoding never reads: managed fields,
// status, and every annotation but istio.io/dry-run (the last-applied
// configuration annotation alone doubles an object's size).
func (tr *transformer) policy(kind string) cache.TransformFunc {
	return func(obj any) (any, error) {
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
		return &policyObject{name: u.GetName(), namespace: u.GetNamespace(), uid: u.GetUID(),
			resourceVersion: u.GetResourceVersion(), decoded: decodePolicy(kind, u)}, nil
	}
}

// sharedMap is an immutable string map shared by every pod with the same
// contents. A nil *sharedMap is the empty map.
type sharedMap struct{ m map[string]string }

func (s *sharedMap) get() map[string]string {
	if s == nil {
		return nil
	}
	return s.m
}

// mapInterner hands out one sharedMap per distinct contents, holding them
// weakly: a map no pod uses any more is collected and forgotten. It is safe
// for concurrent use; the zero value is ready.
type mapInterner struct {
	mu      sync.Mutex
	entries map[string]weak.Pointer[sharedMap]
}

// intern returns the sharedMap with m's contents (nil for an empty m). m is
// not retained.
func (in *mapInterner) intern(m map[string]string) *sharedMap {
	if len(m) == 0 {
		return nil
	}
	key := mapKey(m)
	in.mu.Lock()
	defer in.mu.Unlock()
	if s := in.entries[key].Value(); s != nil {
		return s
	}
	cp := make(map[string]string, len(m))
	for k, v := range m {
		cp[inventory.Intern(k)] = inventory.Intern(v)
	}
	s := &sharedMap{m: cp}
	if in.entries == nil {
		in.entries = map[string]weak.Pointer[sharedMap]{}
	}
	in.entries[key] = weak.Make(s)
	runtime.AddCleanup(s, in.forget, key)
	return s
}

// forget drops key's entry once its map has been collected, unless a new map
// took its place meanwhile.
func (in *mapInterner) forget(key string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.entries[key].Value() == nil {
		delete(in.entries, key)
	}
}

func (in *mapInterner) len() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.entries)
}

// mapKey encodes m's contents unambiguously, in key order.
func mapKey(m map[string]string) string {
	keys := slices.Sorted(maps.Keys(m))
	var b []byte
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(m[k])))
		b = append(b, m[k]...)
	}
	return string(b)
}
