package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/ferrymesh/ferry/deploy"
)

// FieldManager is the server-side apply field manager Apply uses.
const FieldManager = "kubetest"

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// DryRun asks the API server to validate, default and admit every object
	// (schema, RBAC, admission plugins) without persisting it.
	DryRun bool
}

// Apply server-side applies every object in the YAML (or JSON) documents of
// manifests, in order, and returns them as the server answered. It stops at
// the first error, which names the object.
func (c *Cluster) Apply(ctx context.Context, manifests []byte, opts ApplyOptions) ([]*unstructured.Unstructured, error) {
	objs, err := DecodeYAML(manifests)
	if err != nil {
		return nil, err
	}
	return c.ApplyObjects(ctx, objs, opts)
}

// ApplyObjects server-side applies objs, in order, as Apply does (it may
// set the namespace of a namespaced object that has none to "default").
func (c *Cluster) ApplyObjects(ctx context.Context, objs []*unstructured.Unstructured, opts ApplyOptions) ([]*unstructured.Unstructured, error) {
	disco, err := discovery.NewDiscoveryClientForConfig(c.Config)
	if err != nil {
		return nil, err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disco))
	var out []*unstructured.Unstructured
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			mapper.Reset() // a CRD applied just before
			mapping, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
		if err != nil {
			return out, fmt.Errorf("kubetest: %s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		ri := c.Dynamic.Resource(mapping.Resource)
		var res *unstructured.Unstructured
		ao := metav1.ApplyOptions{FieldManager: FieldManager, Force: true}
		if opts.DryRun {
			ao.DryRun = []string{metav1.DryRunAll}
		}
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			if obj.GetNamespace() == "" {
				obj.SetNamespace("default")
			}
			res, err = ri.Namespace(obj.GetNamespace()).Apply(ctx, obj.GetName(), obj, ao)
		} else {
			res, err = ri.Apply(ctx, obj.GetName(), obj, ao)
		}
		if err != nil {
			return out, fmt.Errorf("kubetest: apply %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
		out = append(out, res)
	}
	return out, nil
}

// DecodeYAML splits a multi-document YAML or JSON stream into objects,
// skipping empty documents. Every object must have apiVersion and kind.
func DecodeYAML(manifests []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("kubetest: decode manifests: %w", err)
		}
		if len(m) == 0 {
			continue
		}
		obj := &unstructured.Unstructured{Object: m}
		if obj.GetAPIVersion() == "" || obj.GetKind() == "" {
			return nil, fmt.Errorf("kubetest: object %q has no apiVersion or kind", obj.GetName())
		}
		objs = append(objs, obj)
	}
}

// InstallCRDs applies deploy/crds (Istio's AuthorizationPolicy and
// PeerAuthentication) and waits until both are established and served.
// Start calls it.
func (c *Cluster) InstallCRDs(ctx context.Context) error {
	var all []byte
	for _, name := range deploy.CRDFiles() {
		b, err := fs.ReadFile(deploy.FS(), name)
		if err != nil {
			return err
		}
		all = append(append(all, b...), "\n---\n"...)
	}
	crds, err := c.Apply(ctx, all, ApplyOptions{})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, crd := range crds {
		group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
		plural, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "plural")
		gvr := schema.GroupVersionResource{Group: group, Version: "v1", Resource: plural}
		for {
			err := c.crdServed(ctx, crd.GetName(), gvr)
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("kubetest: CRD %s not served: %w", crd.GetName(), err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// crdServed returns nil once the CRD is Established and a list of its
// resource succeeds.
func (c *Cluster) crdServed(ctx context.Context, name string, gvr schema.GroupVersionResource) error {
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	crd, err := c.Dynamic.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	established := false
	for _, cond := range conds {
		m, _ := cond.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			established = true
		}
	}
	if !established {
		return errors.New("not established")
	}
	_, err = c.Dynamic.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
	if apierrors.IsNotFound(err) {
		return errors.New("not served yet")
	}
	return err
}

// ApplyDeploy applies every manifest of deploy/ for real, in kustomization
// order: the CRDs, the istio-system namespace, the agent's and the CA's
// service accounts, RBAC and workloads (whose pods never run: there is no
// kubelet). Tests then act as ferry (the agent) or ferry-ca with ClientAs to
// exercise exactly the RBAC an operator installs. It fails t on error.
func (c *Cluster) ApplyDeploy(t testing.TB) {
	t.Helper()
	for _, f := range deploy.Files() {
		b, err := fs.ReadFile(deploy.FS(), f)
		if err != nil {
			t.Fatalf("kubetest: %v", err)
		}
		if _, err := c.Apply(t.Context(), b, ApplyOptions{}); err != nil {
			t.Fatalf("kubetest: %s: %v", f, err)
		}
	}
}

// Delete deletes every object in manifests, as `kubectl delete -f` does
// (background propagation; objects already gone are not an error). It
// returns without waiting for them to go.
func (c *Cluster) Delete(ctx context.Context, manifests []byte) error {
	objs, err := DecodeYAML(manifests)
	if err != nil {
		return err
	}
	return c.DeleteObjects(ctx, objs)
}

// DeleteObjects deletes objs, in order, as Delete does.
func (c *Cluster) DeleteObjects(ctx context.Context, objs []*unstructured.Unstructured) error {
	resource := c.resources()
	bg := metav1.DeletePropagationBackground
	for _, obj := range objs {
		ri, err := resource(obj)
		if err != nil {
			return err
		}
		err = ri.Delete(ctx, obj.GetName(), metav1.DeleteOptions{PropagationPolicy: &bg})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("kubetest: delete %s %s/%s: %w", obj.GetKind(), obj.GetNamespace(), obj.GetName(), err)
		}
	}
	return nil
}

// Remaining returns the objects of objs that still exist, as "Kind
// namespace/name": after DeleteObjects, those whose finalizers (a
// namespace's, a CRD's) have not finished yet.
func (c *Cluster) Remaining(ctx context.Context, objs []*unstructured.Unstructured) ([]string, error) {
	resource := c.resources()
	var left []string
	for _, obj := range objs {
		ri, err := resource(obj)
		if err != nil {
			return nil, err
		}
		_, err = ri.Get(ctx, obj.GetName(), metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return nil, fmt.Errorf("kubetest: get %s %s/%s: %w", obj.GetKind(), obj.GetNamespace(), obj.GetName(), err)
		default:
			left = append(left, obj.GetKind()+" "+obj.GetNamespace()+"/"+obj.GetName())
		}
	}
	return left, nil
}

// resources returns a function that finds an object's resource client
// through discovery (namespaced objects without a namespace are in
// "default").
func (c *Cluster) resources() func(*unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	var mapper meta.RESTMapper
	return func(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
		if mapper == nil {
			disco, err := discovery.NewDiscoveryClientForConfig(c.Config)
			if err != nil {
				return nil, err
			}
			mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disco))
		}
		gvk := obj.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return nil, fmt.Errorf("kubetest: %s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		ri := c.Dynamic.Resource(mapping.Resource)
		if mapping.Scope.Name() != meta.RESTScopeNameNamespace {
			return ri, nil
		}
		ns := obj.GetNamespace()
		if ns == "" {
			ns = "default"
		}
		return ri.Namespace(ns), nil
	}
}

// The Istio security resources, for the dynamic client.
var (
	AuthorizationPolicies = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	PeerAuthentications   = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}
)
