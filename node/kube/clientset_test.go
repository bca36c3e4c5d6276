package kube

import (
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
)

// clientset is a Client over client-go's clientset: a fake one, for tests
// that need no API server.
type clientset struct{ c kubernetes.Interface }

func (c clientset) Pods(namespace string) Resource[*corev1.Pod, *corev1.PodList] {
	return c.c.CoreV1().Pods(namespace)
}

func (c clientset) Namespaces() Resource[*corev1.Namespace, *corev1.NamespaceList] {
	return c.c.CoreV1().Namespaces()
}

func (c clientset) Services(namespace string) Resource[*corev1.Service, *corev1.ServiceList] {
	return c.c.CoreV1().Services(namespace)
}

func (c clientset) DaemonSets(namespace string) Resource[*appsv1.DaemonSet, *appsv1.DaemonSetList] {
	return c.c.AppsV1().DaemonSets(namespace)
}

func (c clientset) TokenReviews() Creator[*authenticationv1.TokenReview] {
	return c.c.AuthenticationV1().TokenReviews()
}

// IsWatchListSemanticsUnSupported passes on the fake clientset's answer to
// the informers: it cannot stream an initial list.
func (c clientset) IsWatchListSemanticsUnSupported() bool {
	u, ok := c.c.(interface{ IsWatchListSemanticsUnSupported() bool })
	return ok && u.IsWatchListSemanticsUnSupported()
}
