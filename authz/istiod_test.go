package authz_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/node/xds/xdstest"
)

// istiodDiffers lists the scenarios where istiod's translation, evaluated
// as ztunnel does, decides otherwise than Ferry's compiler reading the
// objects as written, and why. Every other scenario must decide the same;
// an entry that no longer differs fails too.
var istiodDiffers = map[string]string{
	// Both objects are invalid (Istio's validating webhook, which does not
	// run here, rejects the first; the second has no L4 meaning). Ferry
	// reads them fail-closed; istiod drops what it cannot translate, which
	// leaves a DENY policy that matches less.
	"bad CIDR: the DENY field reads as matching": "Ferry reads the invalid ipBlock as matching any source; istiod drops it",
	"DENY without rules denies everything":       "Ferry reads a DENY policy without rules as an error and denies what it selects; istiod sends one that matches nothing",
}

// istiodRefuses lists the scenarios whose objects the API server refuses
// (the CRDs' validation rules), so they never reach istiod.
var istiodRefuses = map[string]string{
	"unknown action denies everything it selects":                     "spec.action enum",
	"bad PeerAuthentication mode reads as STRICT":                     "spec.mtls.mode enum",
	"namespace PeerAuthentication with portLevelMtls reads as STRICT": "portLevelMtls requires selector",
	"duplicate policy: the first applies, the second denies":          "one object per name; the second copy has spec: null",
	"selector wildcard: the ALLOW policy selects the whole namespace": "no wildcard in label values",
	"serviceAccounts with principals: the ALLOW rule matches nothing": "serviceAccounts excludes namespaces and principals",
	"portLevelMtls bad port: the workload reads as STRICT":            "port range",
	"selector with targetRefs denies what the selector selects":       "selector excludes targetRefs",
}

// TestPrivilegedIstiodTranslation runs the scenario table through a real
// istiod: each scenario's policies are applied to the API server, read back
// over workload xDS as istiod translates them (with the destination pod's
// bound policies), compiled with CompileTranslated and decided; the
// decision must be Compile's on the objects as written.
func TestPrivilegedIstiodTranslation(t *testing.T) {
	testutil.Privileged(t)
	kc := kubetest.Start(t)
	istiod := kc.StartIstiod(t, kubetest.BuildIstio(t), kubetest.IstiodOptions{})
	ctx := t.Context()
	scenarios := authz.Scenarios()

	// The destination workloads: one pod per namespace and label set.
	namespaces := map[string]bool{"marker": true}
	type dest struct{ ns, labels string }
	pods := map[dest]string{}
	labelKey := func(r authz.Request) string {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(r.Labels)) {
			kv = append(kv, k+"="+r.Labels[k])
		}
		return strings.Join(kv, ",")
	}
	for _, sc := range scenarios {
		namespaces[sc.Req.Namespace] = true
		for _, ap := range mustLoad(t, sc.Policies) {
			namespaces[ap] = true
		}
	}
	for ns := range namespaces {
		if ns != "" {
			kc.Namespace(t, ns, nil)
		}
	}
	for _, sc := range scenarios {
		d := dest{sc.Req.Namespace, labelKey(sc.Req)}
		if _, ok := pods[d]; ok {
			continue
		}
		name := fmt.Sprintf("w%d", len(pods))
		kc.CreatePod(t, kubetest.Pod{Namespace: d.ns, Name: name, Node: "node1", IP: fmt.Sprintf("198.18.200.%d", len(pods)+1),
			Labels: sc.Req.Labels})
		pods[d] = name
	}
	snaps := xdstest.Watch(t, kc, istiod, "none", "198.18.250.1", nil)

	var same, differ, refused, skipped int
	for i, sc := range scenarios {
		if sc.Cfg.RootNamespace != "" && sc.Cfg.RootNamespace != authz.DefaultRootNamespace {
			skipped++
			t.Logf("%s: skipped: istiod's root namespace here is %s", sc.Name, authz.DefaultRootNamespace)
			continue
		}
		deleteAllPolicies(t, kc)
		applied, applyErr := applyAll(ctx, kc, sc.Policies)
		marker := fmt.Sprintf("marker-%d", i)
		if _, err := kc.Apply(ctx, []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: `+marker+`, namespace: marker}
spec: {selector: {matchLabels: {app: no-such-workload}}}
`), kubetest.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		if applyErr != nil {
			refused++
			want, listed := istiodRefuses[sc.Name]
			if !listed {
				t.Errorf("%s: the API server refuses the objects (%v): list it in istiodRefuses with the reason", sc.Name, applyErr)
			} else {
				t.Logf("%s: refused by the API server as expected (%s): %v", sc.Name, want, applyErr)
			}
			continue
		}
		if _, listed := istiodRefuses[sc.Name]; listed {
			t.Errorf("%s: listed in istiodRefuses, but the API server accepted it", sc.Name)
		}
		snap := settle(t, snaps, "marker/"+marker)

		// Compile reads the objects as the API server holds them: it sets
		// creationTimestamp (which decides between PeerAuthentications)
		// itself, whatever the manifest says.
		aps, pas := authz.Load(t, sc.Policies)
		created := map[string]time.Time{}
		for _, o := range applied {
			created[o.GetKind()+"/"+o.GetNamespace()+"/"+o.GetName()] = o.GetCreationTimestamp().Time
		}
		for i := range aps {
			aps[i].Metadata.CreationTimestamp = created["AuthorizationPolicy/"+aps[i].Metadata.Namespace+"/"+aps[i].Metadata.Name]
		}
		for i := range pas {
			pas[i].Metadata.CreationTimestamp = created["PeerAuthentication/"+pas[i].Metadata.Namespace+"/"+pas[i].Metadata.Name]
		}
		crd, _ := authz.Compile(sc.Cfg, aps, pas)
		translated, _ := authz.CompileTranslated(sc.Cfg, snap.TranslatedPolicies)
		podName := pods[dest{sc.Req.Namespace, labelKey(sc.Req)}]
		i := slices.IndexFunc(snap.Pods, func(p *inventory.Pod) bool { return p.Namespace == sc.Req.Namespace && p.Name == podName })
		if i < 0 {
			t.Fatalf("%s: istiod did not send pod %s/%s", sc.Name, sc.Req.Namespace, podName)
		}
		// The scenario's request, and the same without a peer identity
		// and to another port.
		plain, port := sc.Req, sc.Req
		plain.SourcePrincipal = ""
		port.DestinationPort++
		var diffs []string
		for _, req := range []authz.Request{sc.Req, plain, port} {
			want := crd.Decide(req)
			req.BoundPolicies = snap.Pods[i].Mesh.AuthorizationPolicies.Slice()
			if got := translated.Decide(req); got.Allow != want.Allow {
				diffs = append(diffs, fmt.Sprintf("from %q to port %d: Compile decides %+v, istiod's translation %+v",
					req.SourcePrincipal, req.DestinationPort, want, got))
			}
		}
		why, explained := istiodDiffers[sc.Name]
		switch {
		case len(diffs) == 0 && explained:
			t.Errorf("%s: listed in istiodDiffers (%s) but decides the same", sc.Name, why)
		case len(diffs) == 0:
			same++
		case explained:
			differ++
			t.Logf("%s: differs as explained (%s):\n  %s", sc.Name, why, strings.Join(diffs, "\n  "))
		default:
			t.Errorf("%s:\n  %s\n  translated: %+v\n  bound: %v", sc.Name, strings.Join(diffs, "\n  "),
				snap.TranslatedPolicies, snap.Pods[i].Mesh.AuthorizationPolicies)
		}
	}
	t.Logf("%d scenarios: %d decide the same, %d differ as explained, %d refused by the API server, %d skipped",
		len(scenarios), same, differ, refused, skipped)
}

// mustLoad returns the namespaces named in a manifest's objects.
func mustLoad(t *testing.T, manifest string) []string {
	aps, pas := authz.Load(t, manifest)
	var out []string
	for _, ap := range aps {
		out = append(out, ap.Metadata.Namespace)
	}
	for _, pa := range pas {
		out = append(out, pa.Metadata.Namespace)
	}
	return out
}

// applyAll applies a scenario's documents (apiVersion added) and returns
// them as the API server holds them. Creation times have whole seconds and
// istiod breaks a tie between PeerAuthentications by the order its informer
// lists them (Ferry by name), so each PeerAuthentication after the first is
// created in a later second: the oldest is then the same for both.
func applyAll(ctx context.Context, kc *kubetest.Cluster, manifest string) ([]*unstructured.Unstructured, error) {
	var docs []string
	for doc := range strings.SplitSeq(manifest, "\n---\n") {
		if strings.TrimSpace(doc) != "" {
			docs = append(docs, "apiVersion: security.istio.io/v1\n"+strings.TrimLeft(doc, "\n"))
		}
	}
	var out []*unstructured.Unstructured
	var lastPA time.Time
	for _, doc := range docs {
		if strings.Contains(doc, "\nkind: PeerAuthentication\n") && !lastPA.IsZero() {
			time.Sleep(time.Until(lastPA.Add(time.Second)) + 10*time.Millisecond)
		}
		objs, err := kc.Apply(ctx, []byte(doc), kubetest.ApplyOptions{})
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			if o.GetKind() == "PeerAuthentication" {
				lastPA = o.GetCreationTimestamp().Time
			}
		}
		out = append(out, objs...)
	}
	return out, nil
}

func deleteAllPolicies(t *testing.T, kc *kubetest.Cluster) {
	t.Helper()
	for _, gvr := range []schema.GroupVersionResource{kubetest.AuthorizationPolicies, kubetest.PeerAuthentications} {
		ri := kc.Dynamic.Resource(gvr)
		list, err := ri.Namespace(metav1.NamespaceAll).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range list.Items {
			if err := ri.Namespace(o.GetNamespace()).Delete(t.Context(), o.GetName(), metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// settle returns the state once the marker policy has arrived and istiod
// has been quiet for a moment: every change applied before it is in.
func settle(t *testing.T, snaps <-chan *inventory.Snapshot, marker string) *inventory.Snapshot {
	t.Helper()
	deadline := time.After(30 * time.Second)
	var last *inventory.Snapshot
	seen := false
	for {
		quiet := time.After(300 * time.Millisecond)
		select {
		case s := <-snaps:
			last = s
			seen = slices.ContainsFunc(s.TranslatedPolicies, func(p authz.TranslatedPolicy) bool {
				return p.Namespace+"/"+p.Name == marker
			})
		case <-quiet:
			if seen {
				return last
			}
		case <-deadline:
			t.Fatalf("istiod never sent %s", marker)
		}
	}
}
