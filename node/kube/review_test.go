package kube_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/certs/istioca"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/kube"
)

// counter reads one series of a counter vector.
func counter(t testing.TB, v *prometheus.CounterVec, label string) float64 {
	t.Helper()
	var m dto.Metric
	if err := v.WithLabelValues(label).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// reviewBackend is a fake API server answering TokenReviews from a table of
// valid tokens, counting the reviews it is asked for. A pod-bound token's
// pod is in the fake clientset.
type reviewBackend struct {
	client  *fake.Clientset
	reviews atomic.Int64
	// block, if set, holds every review until it is closed.
	block chan struct{}

	mu     sync.Mutex
	valid  map[string]authenticationv1.UserInfo
	failed error // if set, every review fails with it (the API server down)
}

func newReviewBackend() *reviewBackend {
	b := &reviewBackend{valid: map[string]authenticationv1.UserInfo{}}
	b.client = fake.NewClientset(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-0", UID: "uid-web-0"},
		Spec:       corev1.PodSpec{ServiceAccountName: "web", NodeName: "node-1"},
	})
	b.client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		b.reviews.Add(1)
		if b.block != nil {
			<-b.block
		}
		tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview).DeepCopy()
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.failed != nil {
			return true, nil, b.failed
		}
		if u, ok := b.valid[tr.Spec.Token]; ok {
			tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, User: u, Audiences: tr.Spec.Audiences}
		} else {
			tr.Status = authenticationv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		return true, tr, nil
	})
	return b
}

// accept makes the backend accept token as shop/web's, bound to pod web-0.
func (b *reviewBackend) accept(token string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.valid[token] = authenticationv1.UserInfo{Username: "system:serviceaccount:shop:web", Extra: map[string]authenticationv1.ExtraValue{
		"authentication.kubernetes.io/pod-name": {"web-0"}, "authentication.kubernetes.io/pod-uid": {"uid-web-0"},
	}}
}

func (b *reviewBackend) revoke(token string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.valid, token)
}

// jwt returns a token shaped as a JWT with an exp claim (unsigned: the fake
// backend decides validity).
func jwt(exp time.Time, id string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc(fmt.Appendf(nil, `{"exp":%d,"jti":%q}`, exp.Unix(), id)) + ".sig"
}

func newAuth(t *testing.T, b *reviewBackend, cfg kube.TokenReviewConfig) (*kube.TokenReviewAuthenticator, *kube.CAMetrics) {
	t.Helper()
	cfg.Audiences = []string{"istio-ca"}
	cfg.Metrics = kube.NewCAMetrics(prometheus.NewRegistry())
	a, err := kube.NewTokenReviewAuthenticator(kube.FromClientset(b.client), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a, cfg.Metrics
}

// TestReviewCacheValidToken: a valid token is reviewed once and then served
// from the cache, with its pod lookup, until the success TTL; a token
// revoked meanwhile is refused from then on.
func TestReviewCacheValidToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newReviewBackend()
		a, m := newAuth(t, b, kube.TokenReviewConfig{SuccessTTL: time.Minute})
		tok := jwt(time.Now().Add(time.Hour), "web")
		b.accept(tok)
		want := istioca.Caller{Identity: certs.Identity{Namespace: "shop", ServiceAccount: "web"}, Node: "node-1"}
		for i := range 10 {
			c, err := a.Authenticate(t.Context(), tok)
			if err != nil || c != want {
				t.Fatalf("authentication %d: %+v, %v; want %+v", i, c, err, want)
			}
		}
		if n := b.reviews.Load(); n != 1 {
			t.Errorf("%d TokenReviews for 10 authentications of one token, want 1", n)
		}
		if got := counter(t, m.ReviewsAvoided, "cache"); got != 9 {
			t.Errorf("%v authentications from the cache, want 9", got)
		}
		if n := len(b.client.Actions()); n != 2 {
			t.Errorf("%d API calls, want 2 (one review, one pod GET)", n)
		}

		b.revoke(tok)
		time.Sleep(time.Minute - time.Second)
		if _, err := a.Authenticate(t.Context(), tok); err != nil {
			t.Errorf("revoked token within the success TTL: %v, want it served from the cache", err)
		}
		time.Sleep(time.Second)
		if _, err := a.Authenticate(t.Context(), tok); !errors.Is(err, kube.ErrUnauthenticated) {
			t.Errorf("revoked token past the success TTL: %v, want ErrUnauthenticated", err)
		}
		if n := b.reviews.Load(); n != 2 {
			t.Errorf("%d TokenReviews, want 2", n)
		}
		if got := counter(t, m.Reviews, "authenticated") + counter(t, m.Reviews, "unauthenticated"); got != 2 {
			t.Errorf("reviews metric %v, want 2", got)
		}
	})
}

// TestReviewCacheTokenExpiry: an accepted token is cached no longer than
// until its own expiry, however long the success TTL.
func TestReviewCacheTokenExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newReviewBackend()
		a, _ := newAuth(t, b, kube.TokenReviewConfig{SuccessTTL: time.Hour})
		tok := jwt(time.Now().Add(10*time.Second), "short")
		b.accept(tok)
		if _, err := a.Authenticate(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
		time.Sleep(9 * time.Second)
		a.Authenticate(t.Context(), tok)
		if n := b.reviews.Load(); n != 1 {
			t.Errorf("before the token's expiry: %d reviews, want 1", n)
		}
		time.Sleep(time.Second)
		a.Authenticate(t.Context(), tok)
		if n := b.reviews.Load(); n != 2 {
			t.Errorf("at the token's expiry: %d reviews, want 2 (reviewed again)", n)
		}
	})
}

// TestReviewCacheBogusToken: a refused token repeated costs one review per
// failure TTL, and once it is fixed it is accepted after that TTL.
func TestReviewCacheBogusToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newReviewBackend()
		a, m := newAuth(t, b, kube.TokenReviewConfig{FailureTTL: 5 * time.Second})
		tok := jwt(time.Now().Add(time.Hour), "bogus")
		for range 50 {
			if _, err := a.Authenticate(t.Context(), tok); !errors.Is(err, kube.ErrUnauthenticated) {
				t.Fatalf("bogus token: %v, want ErrUnauthenticated", err)
			}
		}
		if n := b.reviews.Load(); n != 1 {
			t.Errorf("%d reviews for 50 requests with one bogus token, want 1", n)
		}
		b.accept(tok) // the token is fixed (say, the pod was slow to start)
		time.Sleep(5 * time.Second)
		if _, err := a.Authenticate(t.Context(), tok); err != nil {
			t.Errorf("fixed token past the failure TTL: %v", err)
		}
		if n := b.reviews.Load(); n != 2 {
			t.Errorf("%d reviews, want 2", n)
		}
		if got := counter(t, m.Reviews, "unauthenticated"); got != 1 {
			t.Errorf("unauthenticated reviews metric %v, want 1", got)
		}
	})
}

// TestReviewCacheUnavailable: an API server that does not answer is never
// cached: the next request asks again.
func TestReviewCacheUnavailable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newReviewBackend()
		a, m := newAuth(t, b, kube.TokenReviewConfig{})
		tok := jwt(time.Now().Add(time.Hour), "web")
		b.accept(tok)
		b.failed = errors.New("connection refused")
		for range 2 {
			if _, err := a.Authenticate(t.Context(), tok); err == nil || errors.Is(err, kube.ErrUnauthenticated) {
				t.Errorf("API server down: %v, want an error that is not ErrUnauthenticated", err)
			}
		}
		b.mu.Lock()
		b.failed = nil
		b.mu.Unlock()
		if _, err := a.Authenticate(t.Context(), tok); err != nil {
			t.Errorf("API server back: %v", err)
		}
		if n := b.reviews.Load(); n != 3 {
			t.Errorf("%d reviews, want 3", n)
		}
		if got := counter(t, m.Reviews, "error"); got != 2 {
			t.Errorf("error reviews metric %v, want 2", got)
		}
	})
}

// TestReviewSingleFlight: many concurrent requests with one token share one
// review, even when the request that started it gives up.
func TestReviewSingleFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newReviewBackend()
		b.block = make(chan struct{})
		a, m := newAuth(t, b, kube.TokenReviewConfig{})
		tok := jwt(time.Now().Add(time.Hour), "web")
		b.accept(tok)
		first, cancelFirst := context.WithCancel(t.Context())
		firstErr := make(chan error, 1)
		go func() { _, err := a.Authenticate(first, tok); firstErr <- err }()
		synctest.Wait() // the first request's review is in flight
		const n = 50
		errs := make(chan error, n)
		for range n {
			go func() { _, err := a.Authenticate(t.Context(), tok); errs <- err }()
		}
		synctest.Wait()
		cancelFirst()
		if err := <-firstErr; !errors.Is(err, context.Canceled) {
			t.Errorf("the cancelled first request: %v, want context.Canceled", err)
		}
		close(b.block)
		for range n {
			if err := <-errs; err != nil {
				t.Errorf("a request sharing the review: %v", err)
			}
		}
		if got := b.reviews.Load(); got != 1 {
			t.Errorf("%d reviews for %d concurrent requests with one token, want 1", got, n+1)
		}
		if got := counter(t, m.ReviewsAvoided, "in_flight"); got != n {
			t.Errorf("%v requests shared a review in flight, want %d", got, n)
		}
	})
}

// TestReviewCacheBounded: the refused tokens cached are capped, and a flood
// of them does not evict an accepted one.
func TestReviewCacheBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newReviewBackend()
		a, _ := newAuth(t, b, kube.TokenReviewConfig{CacheSize: 8})
		good := jwt(time.Now().Add(time.Hour), "web")
		b.accept(good)
		a.Authenticate(t.Context(), good)
		for i := range 100 {
			a.Authenticate(t.Context(), fmt.Sprintf("bogus-%d", i))
		}
		if n := kube.CachedReviews(a); n != 9 {
			t.Errorf("%d reviews cached, want 9 (8 refused, 1 accepted)", n)
		}
		before := b.reviews.Load()
		if _, err := a.Authenticate(t.Context(), good); err != nil {
			t.Fatal(err)
		}
		if b.reviews.Load() != before {
			t.Error("a flood of bogus tokens evicted the accepted one")
		}
	})
}

// TestCAFloodBoundsReviews serves the CA with the TokenReview authenticator
// over gRPC and floods it, from one address, with distinct bogus tokens:
// past the peer's burst every request is refused with ResourceExhausted
// before any review, so the API server sees at most the burst.
func TestCAFloodBoundsReviews(t *testing.T) {
	const burst, flood = 20, 300
	b := newReviewBackend()
	reg := prometheus.NewRegistry()
	metrics := kube.NewCAMetrics(reg)
	auth, err := kube.NewTokenReviewAuthenticator(kube.FromClientset(b.client), kube.TokenReviewConfig{Audiences: []string{"istio-ca"}, Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	ca := certstest.NewCA(t)
	srv, err := istioca.NewServer(istioca.ServerConfig{
		TrustDomain: ca.TrustDomain(),
		ServerNames: []string{"127.0.0.1"},
		// A refill too slow to matter while the test runs, so the bound
		// does not depend on how long the flood takes.
		PeerRate: 1e-6, PeerBurst: burst,
		Refused: func(reason string) { metrics.Refused.WithLabelValues(reason).Inc() },
	}, ca.Issuer(), auth, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := testutil.Serve(t, srv.Serve)
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(
		credentials.NewClientTLSFromCert(ca.Roots(), "127.0.0.1")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := pb.NewIstioCertificateServiceClient(conn)

	codesSeen := map[codes.Code]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range flood {
		wg.Go(func() {
			rctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", fmt.Sprintf("Bearer bogus-%d", i))
			_, err := client.CreateCertificate(rctx, &pb.IstioCertificateRequest{Csr: "x"})
			mu.Lock()
			codesSeen[status.Code(err)]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if n := b.reviews.Load(); n > burst {
		t.Errorf("%d distinct bogus tokens from one address caused %d TokenReviews, want at most %d", flood, n, burst)
	}
	if codesSeen[codes.Unauthenticated] != burst || codesSeen[codes.ResourceExhausted] != flood-burst {
		t.Errorf("answers %v, want %d Unauthenticated and %d ResourceExhausted", codesSeen, burst, flood-burst)
	}
	if got := counter(t, metrics.Refused, istioca.RefusedRateLimited); got != flood-burst {
		t.Errorf("rate-limited metric %v, want %d", got, flood-burst)
	}
	if got := counter(t, metrics.Refused, istioca.RefusedUnauthenticated); got != burst {
		t.Errorf("unauthenticated metric %v, want %d", got, burst)
	}
	if got := counter(t, metrics.Reviews, "unauthenticated"); got != burst {
		t.Errorf("reviews metric %v, want %d", got, burst)
	}
}
