package kube

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/istioca"
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

// TokenReviewAuthenticator is the istioca.Authenticator of `ferry ca`: it
// authenticates bearer tokens with the TokenReview API and looks pods up. It
// is safe for concurrent use.
//
// The CA's flow for a request to sign for identity ns/sa: caller :=
// Authenticate(token); if caller is not one of the trusted agent service
// accounts, it may only ask for its own identity; otherwise caller.Node must
// be set and ServiceAccountOnNode(caller.Node, ns, sa) true.
//
// The CA is reachable by every pod, and each review costs the API server a
// TokenReview and, for a pod-bound token, a pod GET. So the outcome of a
// review is cached by the token's SHA-256 (the token itself is never kept):
// an accepted token for TokenReviewConfig.SuccessTTL, never past its own
// expiry, a refused one for FailureTTL only, so that a client whose token
// is fixed (or whose pod was just created) is not locked out for long.
// Concurrent requests with one token share one review, and at most
// MaxConcurrentReviews are in flight. The price of the cache is that a
// token that stops being valid (its pod deleted, say) is still accepted
// until its entry expires; the impersonation check, ServiceAccountOnNode,
// is never cached.
type TokenReviewAuthenticator struct {
	client  Client
	cfg     TokenReviewConfig
	cache   *reviewCache
	flight  singleflight.Group
	reviews chan struct{} // a slot per review in flight
	now     func() time.Time
}

// Defaults of TokenReviewConfig.
const (
	DefaultReviewSuccessTTL     = time.Minute
	DefaultReviewFailureTTL     = 5 * time.Second
	DefaultReviewCacheSize      = 4096
	DefaultReviewTimeout        = 10 * time.Second
	DefaultMaxConcurrentReviews = 16
)

// TokenReviewConfig configures a TokenReviewAuthenticator. The zero value of
// each field means its default.
type TokenReviewConfig struct {
	// Audiences: a token must be valid for at least one ("istio-ca" for
	// tokens projected as ztunnel's are); none means the API server's own.
	Audiences []string
	// SuccessTTL is how long an accepted token's review is reused, at most
	// until the token expires (0 means DefaultReviewSuccessTTL).
	SuccessTTL time.Duration
	// FailureTTL is how long a refused token's review is reused (0 means
	// DefaultReviewFailureTTL). Errors that are not ErrUnauthenticated
	// (the API server unreachable) are never cached.
	FailureTTL time.Duration
	// CacheSize caps the cached accepted tokens, and separately the
	// cached refused ones, so a flood of bogus tokens cannot evict the good
	// (0 means DefaultReviewCacheSize); the least recently used go first.
	CacheSize int
	// ReviewTimeout bounds one review (TokenReview and pod GET), which
	// the concurrent requests with its token share, so it does not end
	// with the request that started it (0 means DefaultReviewTimeout).
	ReviewTimeout time.Duration
	// MaxConcurrentReviews caps the reviews in flight; more wait for a
	// slot (0 means DefaultMaxConcurrentReviews).
	MaxConcurrentReviews int
	// Metrics, if set, counts reviews made and avoided.
	Metrics *CAMetrics
}

// NewTokenReviewAuthenticator returns an authenticator that reviews tokens
// with client, as cfg says.
func NewTokenReviewAuthenticator(client Client, cfg TokenReviewConfig) (*TokenReviewAuthenticator, error) {
	if client == nil {
		return nil, errors.New("kube: token review authenticator: no client")
	}
	if cfg.SuccessTTL < 0 || cfg.FailureTTL < 0 || cfg.CacheSize < 0 || cfg.ReviewTimeout < 0 || cfg.MaxConcurrentReviews < 0 {
		return nil, errors.New("kube: token review authenticator: negative TTL, cache size, timeout or concurrency")
	}
	cfg.Audiences = slices.Clone(cfg.Audiences)
	if cfg.SuccessTTL == 0 {
		cfg.SuccessTTL = DefaultReviewSuccessTTL
	}
	if cfg.FailureTTL == 0 {
		cfg.FailureTTL = DefaultReviewFailureTTL
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = DefaultReviewCacheSize
	}
	if cfg.ReviewTimeout == 0 {
		cfg.ReviewTimeout = DefaultReviewTimeout
	}
	if cfg.MaxConcurrentReviews == 0 {
		cfg.MaxConcurrentReviews = DefaultMaxConcurrentReviews
	}
	return &TokenReviewAuthenticator{
		client:  client,
		cfg:     cfg,
		cache:   newReviewCache(cfg.CacheSize),
		reviews: make(chan struct{}, cfg.MaxConcurrentReviews),
		now:     time.Now,
	}, nil
}

var _ istioca.Authenticator = (*TokenReviewAuthenticator)(nil)

// Authenticate reviews token and returns its service account (without a
// trust domain: the CA has its own). When the token is bound to a pod
// (projected service-account tokens are), Caller.Node is the node that pod
// is scheduled on, as the API server had it at the review; it is empty for
// tokens bound to no pod, which therefore cannot impersonate. The answer
// may come from the cache (see TokenReviewAuthenticator).
//
// A token that is not a live service-account token for the expected
// audiences, or whose bound pod is gone, recreated or runs as another service
// account, yields an error wrapping ErrUnauthenticated; an error that does
// not means the API server could not answer.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context, token string) (istioca.Caller, error) {
	if token == "" {
		return istioca.Caller{}, fmt.Errorf("%w: no token", ErrUnauthenticated)
	}
	key := sha256.Sum256([]byte(token))
	if c, err, ok := a.cache.get(key, a.now()); ok {
		a.avoided("cache")
		return c, err
	}
	ran := false
	ch := a.flight.DoChan(string(key[:]), func() (any, error) {
		ran = true
		// A review that finished since our look-up is as good.
		if c, err, ok := a.cache.get(key, a.now()); ok {
			a.avoided("cache")
			return reviewResult{c, err}, nil
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ReviewTimeout)
		defer cancel()
		select {
		case a.reviews <- struct{}{}:
		case <-rctx.Done():
			return reviewResult{err: fmt.Errorf("kube: token review: waiting for a slot: %w", rctx.Err())}, nil
		}
		c, exp, err := a.review(rctx, token)
		<-a.reviews
		a.reviewed(err)
		now := a.now()
		switch {
		case err == nil:
			ttl := a.cfg.SuccessTTL
			if !exp.IsZero() {
				ttl = min(ttl, exp.Sub(now))
			}
			a.cache.put(key, c, nil, now, ttl)
		case errors.Is(err, ErrUnauthenticated):
			a.cache.put(key, istioca.Caller{}, err, now, a.cfg.FailureTTL)
		}
		return reviewResult{c, err}, nil
	})
	select {
	case r := <-ch:
		if !ran {
			a.avoided("in_flight")
		}
		res := r.Val.(reviewResult)
		return res.caller, res.err
	case <-ctx.Done():
		return istioca.Caller{}, fmt.Errorf("kube: token review: %w", ctx.Err())
	}
}

type reviewResult struct {
	caller istioca.Caller
	err    error
}

func (a *TokenReviewAuthenticator) avoided(by string) {
	if a.cfg.Metrics != nil {
		a.cfg.Metrics.ReviewsAvoided.WithLabelValues(by).Inc()
	}
}

func (a *TokenReviewAuthenticator) reviewed(err error) {
	if a.cfg.Metrics == nil {
		return
	}
	result := "authenticated"
	switch {
	case errors.Is(err, ErrUnauthenticated):
		result = "unauthenticated"
	case err != nil:
		result = "error"
	}
	a.cfg.Metrics.Reviews.WithLabelValues(result).Inc()
}

// review asks the API server about token, as Authenticate documents, and
// returns the token's expiry too (zero if it does not say).
func (a *TokenReviewAuthenticator) review(ctx context.Context, token string) (istioca.Caller, time.Time, error) {
	tr, err := a.client.TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: a.cfg.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return istioca.Caller{}, time.Time{}, fmt.Errorf("kube: token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "token rejected"
		}
		return istioca.Caller{}, time.Time{}, fmt.Errorf("%w: %s", ErrUnauthenticated, reason)
	}
	audiences := a.cfg.Audiences
	if len(audiences) > 0 && !slices.ContainsFunc(st.Audiences, func(aud string) bool { return slices.Contains(audiences, aud) }) {
		return istioca.Caller{}, time.Time{}, fmt.Errorf("%w: token audiences %q, want one of %q", ErrUnauthenticated, st.Audiences, audiences)
	}
	ns, sa, ok := parseServiceAccountUser(st.User.Username)
	if !ok {
		return istioca.Caller{}, time.Time{}, fmt.Errorf("%w: %q is not a service account", ErrUnauthenticated, st.User.Username)
	}
	exp := tokenExpiry(token)
	c := istioca.Caller{Identity: certs.Identity{Namespace: ns, ServiceAccount: sa}}
	podName, podUID := extra(st.User, extraPodName), extra(st.User, extraPodUID)
	if podName == "" {
		return c, exp, nil
	}
	pod, err := a.client.Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return istioca.Caller{}, time.Time{}, fmt.Errorf("%w: token's pod %s/%s no longer exists", ErrUnauthenticated, ns, podName)
	}
	if err != nil {
		return istioca.Caller{}, time.Time{}, fmt.Errorf("kube: token's pod: %w", err)
	}
	if string(pod.UID) != podUID {
		return istioca.Caller{}, time.Time{}, fmt.Errorf("%w: token's pod %s/%s was recreated (uid %s, token has %s)", ErrUnauthenticated, ns, podName, pod.UID, podUID)
	}
	if pod.Spec.ServiceAccountName != sa {
		return istioca.Caller{}, time.Time{}, fmt.Errorf("%w: token's pod %s/%s runs as %q, token is for %q", ErrUnauthenticated, ns, podName, pod.Spec.ServiceAccountName, sa)
	}
	if node := extra(st.User, extraNodeName); node != "" && node != pod.Spec.NodeName {
		return istioca.Caller{}, time.Time{}, fmt.Errorf("%w: token's pod %s/%s is on node %q, token says %q", ErrUnauthenticated, ns, podName, pod.Spec.NodeName, node)
	}
	c.Node = pod.Spec.NodeName
	return c, exp, nil
}

// tokenExpiry reads the exp claim of a JWT, or returns zero. It verifies
// nothing, so only call it on a token the API server has accepted (and so
// whose signature it has checked).
func tokenExpiry(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp *int64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == nil {
		return time.Time{}
	}
	return time.Unix(*claims.Exp, 0)
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
		list, err := a.client.Pods(namespace).List(ctx, opts)
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
