package kube

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/ferrymesh/ferry/certs"
)

// ErrUnauthenticated is wrapped by every error of Authenticate that means
// "this token does not prove an identity": a CA answers Unauthenticated.
// Other errors (the API server unreachable) mean "try again": Unavailable.
var ErrUnauthenticated = errors.New("kube: unauthenticated")

// Keys of the user info extra fields the API server adds for tokens bound to
// a pod (TokenRequest with a Pod boundObjectRef, as projected tokens are).
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
)

// TokenReviewAuthenticator is the certs.Authenticator of `ferry ca`: it
// authenticates bearer tokens with the TokenReview API and looks pods up. It
// is safe for concurrent use.
//
// The CA's flow for a request to sign for identity ns/sa: caller :=
// Authenticate(token); if caller is not one of the trusted agent service
// accounts, it may only ask for its own identity; otherwise caller.Node must
// be set and ServiceAccountOnNode(caller.Node, ns, sa) true.
type TokenReviewAuthenticator struct {
	client    kubernetes.Interface
	audiences []string
}

// NewTokenReviewAuthenticator returns an authenticator that accepts tokens
// valid for at least one of audiences ("istio-ca" for tokens projected as
// ztunnel's are); no audiences means the API server's own.
func NewTokenReviewAuthenticator(client kubernetes.Interface, audiences []string) *TokenReviewAuthenticator {
	return &TokenReviewAuthenticator{client: client, audiences: slices.Clone(audiences)}
}

var _ certs.Authenticator = (*TokenReviewAuthenticator)(nil)

// Authenticate reviews token and returns its service account (without a
// trust domain: the CA has its own). When the token is bound to a pod
// (projected service-account tokens are), Caller.Node is the node that pod
// is scheduled on, as the API server has it now; it is empty for tokens bound
// to no pod, which therefore cannot impersonate.
//
// A token that is not a live service-account token for the expected
// audiences, or whose bound pod is gone, recreated or runs as another service
// account, yields an error wrapping ErrUnauthenticated; an error that does
// not means the API server could not answer.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context, token string) (certs.Caller, error) {
	if token == "" {
		return certs.Caller{}, fmt.Errorf("%w: no token", ErrUnauthenticated)
	}
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: a.audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return certs.Caller{}, fmt.Errorf("kube: token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "token rejected"
		}
		return certs.Caller{}, fmt.Errorf("%w: %s", ErrUnauthenticated, reason)
	}
	if len(a.audiences) > 0 && !slices.ContainsFunc(st.Audiences, func(aud string) bool { return slices.Contains(a.audiences, aud) }) {
		return certs.Caller{}, fmt.Errorf("%w: token audiences %q, want one of %q", ErrUnauthenticated, st.Audiences, a.audiences)
	}
	ns, sa, ok := parseServiceAccountUser(st.User.Username)
	if !ok {
		return certs.Caller{}, fmt.Errorf("%w: %q is not a service account", ErrUnauthenticated, st.User.Username)
	}
	c := certs.Caller{Identity: certs.Identity{Namespace: ns, ServiceAccount: sa}}
	podName, podUID := extra(st.User, extraPodName), extra(st.User, extraPodUID)
	if podName == "" {
		return c, nil
	}
	pod, err := a.client.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return certs.Caller{}, fmt.Errorf("%w: token's pod %s/%s no longer exists", ErrUnauthenticated, ns, podName)
	}
	if err != nil {
		return certs.Caller{}, fmt.Errorf("kube: token's pod: %w", err)
	}
	if string(pod.UID) != podUID {
		return certs.Caller{}, fmt.Errorf("%w: token's pod %s/%s was recreated (uid %s, token has %s)", ErrUnauthenticated, ns, podName, pod.UID, podUID)
	}
	if pod.Spec.ServiceAccountName != sa {
		return certs.Caller{}, fmt.Errorf("%w: token's pod %s/%s runs as %q, token is for %q", ErrUnauthenticated, ns, podName, pod.Spec.ServiceAccountName, sa)
	}
	if node := extra(st.User, extraNodeName); node != "" && node != pod.Spec.NodeName {
		return certs.Caller{}, fmt.Errorf("%w: token's pod %s/%s is on node %q, token says %q", ErrUnauthenticated, ns, podName, pod.Spec.NodeName, node)
	}
	c.Node = pod.Spec.NodeName
	return c, nil
}

// ServiceAccountOnNode reports whether a pod running as namespace/
// serviceAccount is scheduled on node and has not terminated (phase
// Succeeded or Failed): the condition for an agent on node to get that
// service account's certificate. It lists the namespace's pods on node, with
// a field selector the API server evaluates.
func (a *TokenReviewAuthenticator) ServiceAccountOnNode(ctx context.Context, node, namespace, serviceAccount string) (bool, error) {
	if node == "" {
		return false, nil
	}
	opts := metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
		Limit:         500,
	}
	for {
		list, err := a.client.CoreV1().Pods(namespace).List(ctx, opts)
		if err != nil {
			return false, fmt.Errorf("kube: pods on node %s: %w", node, err)
		}
		for i := range list.Items {
			p := &list.Items[i]
			if p.Spec.ServiceAccountName == serviceAccount && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
				return true, nil
			}
		}
		if list.Continue == "" {
			return false, nil
		}
		opts.Continue = list.Continue
	}
}

// parseServiceAccountUser splits "system:serviceaccount:NS:NAME".
func parseServiceAccountUser(user string) (namespace, name string, ok bool) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	namespace, name, ok = strings.Cut(rest, ":")
	if !ok || namespace == "" || name == "" || strings.Contains(name, ":") {
		return "", "", false
	}
	return namespace, name, true
}

func extra(u authenticationv1.UserInfo, key string) string {
	if v := u.Extra[key]; len(v) == 1 {
		return v[0]
	}
	return ""
}
