package kube

import (
	"cmp"
	"context"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/gentype"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// Client is what the agent calls of the Kubernetes API (the Istio policies
// aside: those come through a dynamic client). NewAPI makes the agent's;
// client-go's clientset has the same methods, for tests.
type Client interface {
	Pods(namespace string) Resource[*corev1.Pod, *corev1.PodList]
	Namespaces() Resource[*corev1.Namespace, *corev1.NamespaceList]
	Services(namespace string) Resource[*corev1.Service, *corev1.ServiceList]
	DaemonSets(namespace string) Resource[*appsv1.DaemonSet, *appsv1.DaemonSetList]
	TokenReviews() Creator[*authenticationv1.TokenReview]
}

// Resource is one resource type's client, in a namespace or cluster-wide
// (client-go's typed clients have these methods).
type Resource[T, L runtime.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)
}

// Creator creates objects of a type that is only ever created (a review).
type Creator[T runtime.Object] interface {
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
}

// API is the agent's Client: client-go's generic typed clients over REST
// clients whose scheme knows only the three API groups the agent uses.
// (client-go's clientset registers every group when the binary starts:
// pages of the binary resident, and heap, for types the agent never reads.)
// It is safe for concurrent use.
type API struct {
	core, apps, authn rest.Interface
	params            runtime.ParameterCodec
}

// NewAPI returns the Client of the API server cfg names. Objects travel as
// protobuf, as client-go's clientset sends the built-in types.
func NewAPI(cfg *rest.Config) (*API, error) {
	scheme := runtime.NewScheme()
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, authenticationv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	codecs := serializer.NewCodecFactory(scheme).WithoutConversion()
	// The groups share one connection pool and one rate limit, as a
	// clientset's do.
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	if cfg.RateLimiter == nil {
		cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(cmp.Or(cfg.QPS, rest.DefaultQPS), cmp.Or(cfg.Burst, rest.DefaultBurst))
	}
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	client := func(gv schema.GroupVersion, path string) (rest.Interface, error) {
		c := rest.CopyConfig(cfg)
		c.GroupVersion, c.APIPath, c.NegotiatedSerializer = &gv, path, codecs
		return rest.RESTClientForConfigAndClient(c, httpClient)
	}
	a := &API{params: runtime.NewParameterCodec(scheme)}
	if a.core, err = client(corev1.SchemeGroupVersion, "/api"); err != nil {
		return nil, err
	}
	if a.apps, err = client(appsv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	if a.authn, err = client(authenticationv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	return a, nil
}

// typed returns the client of resource (objects of type T, lists of type
// L) on the REST client c.
func typed[T, L any, PT interface {
	*T
	runtime.Object
	metav1.Object
}, PL interface {
	*L
	runtime.Object
}](a *API, c rest.Interface, resource, namespace string) *gentype.ClientWithList[PT, PL] {
	return gentype.NewClientWithList[PT, PL](resource, c, a.params, namespace,
		func() PT { return new(T) }, func() PL { return new(L) }, gentype.PrefersProtobuf[PT]())
}

func (a *API) Pods(namespace string) Resource[*corev1.Pod, *corev1.PodList] {
	return typed[corev1.Pod, corev1.PodList](a, a.core, "pods", namespace)
}

func (a *API) Namespaces() Resource[*corev1.Namespace, *corev1.NamespaceList] {
	return typed[corev1.Namespace, corev1.NamespaceList](a, a.core, "namespaces", "")
}

func (a *API) Services(namespace string) Resource[*corev1.Service, *corev1.ServiceList] {
	return typed[corev1.Service, corev1.ServiceList](a, a.core, "services", namespace)
}

func (a *API) DaemonSets(namespace string) Resource[*appsv1.DaemonSet, *appsv1.DaemonSetList] {
	return typed[appsv1.DaemonSet, appsv1.DaemonSetList](a, a.apps, "daemonsets", namespace)
}

func (a *API) TokenReviews() Creator[*authenticationv1.TokenReview] {
	return gentype.NewClient[*authenticationv1.TokenReview]("tokenreviews", a.authn, a.params, "",
		func() *authenticationv1.TokenReview { return &authenticationv1.TokenReview{} }, gentype.PrefersProtobuf[*authenticationv1.TokenReview]())
}
