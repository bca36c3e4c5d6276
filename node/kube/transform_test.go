package kube

import (
	"fmt"
	"maps"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/inventory"
)

// fullPod is a pod as the API server sends it: a spec, a status, managed
// fields and annotations Ferry has no use for.
func fullPod(i int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            fmt.Sprintf("web-7d9f8c6b5-%05d", i),
			Namespace:       "shop",
			UID:             types.UID(fmt.Sprintf("0b9f4c1e-2c33-4a8e-9a61-%012d", i)),
			ResourceVersion: "12345",
			Labels: map[string]string{
				"app": "web", "version": "v1", "pod-template-hash": "7d9f8c6b5",
				"app.kubernetes.io/part-of": "shop",
			},
			Annotations: map[string]string{
				RedirectionAnnotation:                              RedirectionEnabled,
				SidecarStatusAnnotation:                            `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy"]}`,
				"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 2000),
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-7d9f8c6b5"}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: "Update"}},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			NodeName:           "node-3",
			Containers: []corev1.Container{{
				Name: "web", Image: "registry.example/web:1.2.3",
				Env: []corev1.EnvVar{{Name: "A", Value: "b"}},
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU: resource.MustParse("100m"),
				}},
			}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning,
			PodIP: fmt.Sprintf("10.1.%d.%d", i/250, i%250+1),
			Conditions: []corev1.PodCondition{{
				Type: corev1.PodReady, Status: corev1.ConditionTrue,
			}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "web", Ready: true, RestartCount: 2}},
		},
	}
}

func TestTransformPod(t *testing.T) {
	tr := &transformer{}
	obj, err := tr.pod(fullPod(7))
	if err != nil {
		t.Fatal(err)
	}
	p := obj.(*podInfo)
	want := podInfo{
		Pod: inventory.Pod{ServiceAccount: "web", NodeName: "node-3", IP: netip.MustParseAddr("10.1.0.8")}, phase: corev1.PodRunning,
	}
	if p.Name != "web-7d9f8c6b5-00007" || p.Namespace != "shop" || p.UID == "" ||
		p.ServiceAccount != want.ServiceAccount || p.NodeName != want.NodeName || p.IP != want.IP || p.phase != want.phase {
		t.Errorf("transformed pod = %+v", p)
	}
	if l := p.Labels; len(l) != 4 || l["app"] != "web" || !maps.Equal(l, p.labels.get()) {
		t.Errorf("labels = %v", l)
	}
	wantAnn := map[string]string{RedirectionAnnotation: RedirectionEnabled, SidecarStatusAnnotation: ""}
	if !maps.Equal(p.Annotations, wantAnn) || !maps.Equal(p.annotations.get(), wantAnn) {
		t.Errorf("annotations = %v, want %v", p.Annotations, wantAnn)
	}
	if key, err := cache.MetaNamespaceKeyFunc(p); err != nil || key != "shop/web-7d9f8c6b5-00007" {
		t.Errorf("informer key = %q, %v", key, err)
	}

	// Idempotent, and tombstones pass through.
	again, err := tr.pod(p)
	if err != nil || again != any(p) {
		t.Errorf("transform of a transformed pod = %v, %v", again, err)
	}
	if !p.sameAs(p.DeepCopyObject().(*podInfo)) {
		t.Error("DeepCopyObject differs")
	}

	// Defaults and odd values.
	bare, _ := tr.pod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "y"}, Status: corev1.PodStatus{PodIP: "not-an-ip"}})
	if b := bare.(*podInfo); b.ServiceAccount != "default" || b.IP.IsValid() || b.annotations != nil || b.labels != nil {
		t.Errorf("bare pod = %+v", b)
	}

	// Equal label sets share one map.
	other, _ := tr.pod(fullPod(8))
	if other.(*podInfo).labels != p.labels || other.(*podInfo).annotations != p.annotations {
		t.Error("equal maps not shared")
	}
}

// TestMapInternerForgets checks that the interner keeps maps only while pods
// use them.
func TestMapInternerForgets(t *testing.T) {
	var in mapInterner
	a := in.intern(map[string]string{"app": "a"})
	b := in.intern(map[string]string{"app": "b"})
	if in.intern(map[string]string{"app": "a"}) != a || a == b {
		t.Fatal("interning broken")
	}
	if k1, k2 := mapKey(map[string]string{"a": "bc"}), mapKey(map[string]string{"ab": "c"}); k1 == k2 {
		t.Fatal("mapKey ambiguous")
	}
	runtime.KeepAlive(a)
	a, b = nil, nil
	// Cleanups run after a GC, asynchronously: bounded retries.
	for i := 0; i < 100 && in.len() > 0; i++ {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	if n := in.len(); n != 0 {
		t.Errorf("%d entries left after their maps died", n)
	}
	_ = b
}

func TestPodSameAs(t *testing.T) {
	tr := &transformer{}
	base, _ := tr.pod(fullPod(1))
	for name, mutate := range map[string]func(*corev1.Pod){
		"resourceVersion": func(p *corev1.Pod) { p.ResourceVersion = "99" },
		"restart count":   func(p *corev1.Pod) { p.Status.ContainerStatuses[0].RestartCount++ },
		"conditions":      func(p *corev1.Pod) { p.Status.Conditions = nil },
		"other annotation": func(p *corev1.Pod) {
			p.Annotations["kubectl.kubernetes.io/restartedAt"] = "now"
		},
	} {
		pod := fullPod(1)
		mutate(pod)
		got, _ := tr.pod(pod)
		if !base.(*podInfo).sameAs(got.(*podInfo)) {
			t.Errorf("%s: want no change", name)
		}
	}
	for name, mutate := range map[string]func(*corev1.Pod){
		"ip":          func(p *corev1.Pod) { p.Status.PodIP = "10.9.9.9" },
		"phase":       func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed },
		"label":       func(p *corev1.Pod) { p.Labels["istio.io/dataplane-mode"] = "none" },
		"redirection": func(p *corev1.Pod) { delete(p.Annotations, RedirectionAnnotation) },
		"node":        func(p *corev1.Pod) { p.Spec.NodeName = "node-4" },
	} {
		pod := fullPod(1)
		mutate(pod)
		got, _ := tr.pod(pod)
		if base.(*podInfo).sameAs(got.(*podInfo)) {
			t.Errorf("%s: change not seen", name)
		}
	}
}

// TestPodMemory bounds what the pod store holds per pod, measured on the
// heap over 100k transformed pods in 2,000 Deployments of 50 replicas (four
// labels each, one of them the pod-template-hash). It logs the figure.
func TestPodMemory(t *testing.T) {
	const n = 100_000
	src := make([]*corev1.Pod, n)
	for i := range src {
		src[i] = fullPod(i)
		src[i].Labels["app"] = fmt.Sprintf("app-%d", i/50)
		src[i].Labels["pod-template-hash"] = fmt.Sprintf("%x", 0x7d9f8c6b5+i/50)
		if i%3 == 0 {
			src[i].Annotations = nil // not (yet) captured
		}
	}
	list := make([]any, n)
	for i, p := range src {
		list[i] = p
	}
	store, bytes := testutil.Retained(func() *podStore {
		s := &podStore{transform: (&transformer{}).pod, changed: func() {}}
		if err := s.Replace(list, "1"); err != nil {
			t.Fatal(err)
		}
		return s
	})
	per := int(bytes) / n
	if pods, _, _ := store.take(); len(pods) != n {
		t.Fatalf("%d pods held, want %d", len(pods), n)
	}
	runtime.KeepAlive(src)
	t.Logf("%d bytes per pod in the pod store (%d MB for %d pods)", per, per*n>>20, n)
	if per > 512 {
		t.Errorf("%d bytes per pod, want under 512", per)
	}
}

// TestPolicyMemory: what the informer holds per AuthorizationPolicy, each
// with a selector and a rule naming one principal (as bench/inventory's).
func TestPolicyMemory(t *testing.T) {
	const n = 10_000
	src := make([]*unstructured.Unstructured, n)
	for i := range src {
		ns := "scale-" + strconv.Itoa(i%1000)
		src[i] = &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "pol-" + strconv.Itoa(i), "namespace": ns,
				"uid": fmt.Sprintf("6f1d2c3b-0000-4000-8000-%012d", i), "resourceVersion": strconv.Itoa(1000 + i)},
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": map[string]any{"app": "a" + strconv.Itoa(i)}},
				"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{
					"principals": []any{"cluster.local/ns/" + ns + "/sa/app"}}}}}},
			},
		}}
	}
	transform := (&transformer{}).policy(authz.KindAuthorizationPolicy)
	kept, bytes := testutil.Retained(func() []any {
		kept := make([]any, n)
		for i, u := range src {
			kept[i], _ = transform(u)
		}
		return kept
	})
	per := int(bytes) / n
	runtime.KeepAlive(kept)
	runtime.KeepAlive(src)
	if o := kept[n-1].(*policyObject); o.decoded.err != nil || len(o.decoded.errs) > 0 {
		t.Fatalf("last policy: %v %v", o.decoded.err, o.decoded.errs)
	}
	t.Logf("%d bytes per policy in the informer (%d MB for %d policies)", per, per*n>>20, n)
	if per > 1280 {
		t.Errorf("%d bytes per policy, want under 1280", per)
	}
}

func TestPolicyBook(t *testing.T) {
	obj := func(rv string, spec map[string]any, ann map[string]string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "p", "namespace": "shop", "uid": "u1", "resourceVersion": rv},
		}}
		if spec != nil {
			u.Object["spec"] = spec
		}
		u.SetAnnotations(ann)
		return u
	}
	goodSpec := map[string]any{
		"action":   "ALLOW",
		"selector": map[string]any{"matchLabels": map[string]any{"app": "web"}},
		"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{
			"principals": []any{"cluster.local/ns/shop/sa/front"},
		}}}}},
	}
	misspelt := map[string]any{"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{
		"principal": []any{"x"},
	}}}}}}
	tr := &transformer{}
	run := func(b *policyBook, objs ...*unstructured.Unstructured) *inventory.Snapshot {
		t.Helper()
		var pos []*policyObject
		for _, u := range objs {
			o, err := tr.policy(authz.KindAuthorizationPolicy)(u)
			if err != nil {
				t.Fatal(err)
			}
			pos = append(pos, o.(*policyObject))
		}
		snap := &inventory.Snapshot{}
		seen := map[types.UID]bool{}
		b.add(snap, authz.KindAuthorizationPolicy, pos, seen)
		snap.PolicyRevision = b.forget(seen)
		return snap
	}

	// The revision names the policies: it changes with an object's version
	// or the set of objects, and only then.
	var revs policyBook
	r1 := run(&revs, obj("1", goodSpec, nil)).PolicyRevision
	if r2 := run(&revs, obj("1", goodSpec, nil)).PolicyRevision; r1 == 0 || r2 != r1 {
		t.Errorf("same policies: revisions %d then %d, want one non-zero", r1, r2)
	}
	r3 := run(&revs, obj("2", goodSpec, nil)).PolicyRevision
	r4 := run(&revs).PolicyRevision
	if r3 == r1 || r4 == r3 || r4 == r1 {
		t.Errorf("revisions %d, %d (new version), %d (object gone): want each new", r1, r3, r4)
	}

	// A new object with an error is published as decoded, its problem on it.
	var fresh policyBook
	s := run(&fresh, obj("1", misspelt, nil))
	if len(s.AuthorizationPolicies) != 1 || len(s.AuthorizationPolicies[0].Problems) != 1 ||
		s.AuthorizationPolicies[0].Problems[0].Field != "rules[0].from[0].source.principal" {
		t.Fatalf("never-good object: %+v", s.AuthorizationPolicies)
	}

	// A good version, then a bad edit: the good one stays, the problem is reported.
	var b policyBook
	good := obj("1", goodSpec, map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"})
	s = run(&b, good)
	if good.GetAnnotations() != nil {
		t.Errorf("annotations kept: %v", good.GetAnnotations())
	}
	ap := s.AuthorizationPolicies[0]
	if len(s.AuthorizationPolicies) != 1 || ap.Metadata.Name != "p" || ap.Metadata.Namespace != "shop" || ap.Spec.Action != "ALLOW" ||
		ap.Spec.Selector.MatchLabels["app"] != "web" || ap.Spec.Rules[0].From[0].Source.Principals[0] != "cluster.local/ns/shop/sa/front" ||
		len(s.PolicyProblems) != 0 {
		t.Fatalf("good: %+v, problems %v", s.AuthorizationPolicies, s.PolicyProblems)
	}
	for name, bad := range map[string]map[string]any{
		"misspelt": misspelt,
		"mistyped": {"action": 3},
		"unknown":  {"rulez": []any{}},
		"case":     {"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"ipblocks": []any{"0.0.0.0/0"}}}}}}},
	} {
		s = run(&b, obj("2", bad, nil))
		if len(s.AuthorizationPolicies) != 1 || s.AuthorizationPolicies[0].Spec.Action != "ALLOW" || len(s.AuthorizationPolicies[0].Problems) != 0 {
			t.Errorf("%s: the last good version is not what is enforced: %+v", name, s.AuthorizationPolicies)
		}
		if len(s.PolicyProblems) == 0 || !strings.Contains(s.PolicyProblems[0].Error(), "AuthorizationPolicy shop/p") ||
			!strings.Contains(s.PolicyProblems[0].Effect, "last good version (resourceVersion 1)") {
			t.Errorf("%s: problems = %v", name, s.PolicyProblems)
		}
		run(&b, good) // back to good for the next case
	}
	// Fixed: the new version applies and nothing is reported.
	fixed := obj("3", map[string]any{"action": "DENY", "rules": []any{map[string]any{}}}, nil)
	s = run(&b, fixed)
	if s.AuthorizationPolicies[0].Spec.Action != "DENY" || len(s.PolicyProblems) != 0 {
		t.Errorf("fixed: %+v %v", s.AuthorizationPolicies, s.PolicyProblems)
	}
	// Deleted: forgotten, so a new object of the same name starts afresh.
	run(&b)
	if len(b.entries) != 0 {
		t.Errorf("entries after delete: %d", len(b.entries))
	}
	// A dry-run policy reaches authz, which ignores it with a warning.
	s = run(&b, obj("4", map[string]any{"action": "DENY", "rules": []any{map[string]any{}}}, map[string]string{DryRunAnnotation: "true"}))
	if len(s.AuthorizationPolicies) != 1 || s.AuthorizationPolicies[0].Metadata.Annotations[DryRunAnnotation] != "true" {
		t.Errorf("dry-run: %+v", s.AuthorizationPolicies)
	}
}

func TestParseServiceAccountUser(t *testing.T) {
	for user, want := range map[string]string{
		"system:serviceaccount:istio-system:ferry": "istio-system/ferry",
		"system:serviceaccount:ns:":                "",
		"system:serviceaccount:ns":                 "",
		"system:serviceaccount::sa":                "",
		"system:serviceaccount:ns:sa:extra":        "",
		"system:node:node-1":                       "",
		"admin":                                    "",
	} {
		ns, sa, ok := parseServiceAccountUser(user)
		got := ""
		if ok {
			got = ns + "/" + sa
		}
		if got != want {
			t.Errorf("parseServiceAccountUser(%q) = %q, want %q", user, got, want)
		}
	}
}

// BenchmarkBuildSnapshot measures one snapshot of 100k pods (2,000
// Deployments of 50) and 10k policies: the work after each coalesced change,
// all of it read from the stores (whole, the first snapshot) or one pod
// changed since the last (one-pod).
func BenchmarkBuildSnapshot(b *testing.B) {
	st := newSourceStores()
	var list []any
	for i := range 100_000 {
		p := fullPod(i)
		p.Labels["app"] = fmt.Sprintf("app-%d", i/50)
		list = append(list, p)
	}
	for i := range 10_000 {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": fmt.Sprintf("p%d", i), "namespace": "shop", "uid": fmt.Sprintf("uid-%d", i), "resourceVersion": "1"},
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": map[string]any{"app": fmt.Sprintf("app-%d", i)}},
				"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{
					"principals": []any{"cluster.local/ns/shop/sa/front"},
				}}}}},
			},
		}}
		o, _ := (&transformer{}).policy(authz.KindAuthorizationPolicy)(u)
		if err := st.aps.Add(o); err != nil {
			b.Fatal(err)
		}
	}
	for _, whole := range []bool{true, false} {
		name := "one-pod"
		if whole {
			name = "whole"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			st.book, st.built = policyBook{}, published{}
			if err := st.pods.Replace(list, "1"); err != nil {
				b.Fatal(err)
			}
			st.build(true)
			i := 0
			for b.Loop() {
				if whole {
					st.built = published{}
				}
				p := fullPod(7)
				p.Labels["version"] = fmt.Sprint(i)
				if err := st.pods.Update(p); err != nil {
					b.Fatal(err)
				}
				i++
				s := st.build(whole)
				if len(s.Pods) != 100_000 || len(s.AuthorizationPolicies) != 10_000 || !whole && len(s.Changes.Pods) != 1 {
					b.Fatalf("%d pods, %d policies, changes %v", len(s.Pods), len(s.AuthorizationPolicies), s.Changes)
				}
			}
		})
	}
}
