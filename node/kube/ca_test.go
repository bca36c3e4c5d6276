package kube_test

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/certs/istioca"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/kube"
)

// TestPrivilegedKubeCA runs `ferry ca`'s server with the TokenReview
// authenticator (as ferry-ca, with deploy/'s RBAC) against a real API server,
// and asks it for certificates over gRPC with real projected-style tokens:
// the node-impersonation rules end to end, and that a token whose pod is
// deleted is refused once its cached review expires.
func TestPrivilegedKubeCA(t *testing.T) {
	testutil.Privileged(t)
	c := kubetest.Start(t)
	c.ApplyDeploy(t)
	ctx := t.Context()

	agent1 := c.CreatePod(t, kubetest.Pod{Namespace: "istio-system", Name: "ferry-node1", ServiceAccount: "ferry",
		Node: "node-1", IP: "198.18.0.1", HostNetwork: true, Labels: map[string]string{"app": "ferry"}})
	agent2 := c.CreatePod(t, kubetest.Pod{Namespace: "istio-system", Name: "ferry-node2", ServiceAccount: "ferry",
		Node: "node-2", IP: "198.18.0.2", HostNetwork: true, Labels: map[string]string{"app": "ferry"}})
	web := c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "web-0", ServiceAccount: "web", Node: "node-1", IP: "198.18.1.10"})
	c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "db-0", ServiceAccount: "db", Node: "node-2", IP: "198.18.2.10"})

	ca := certstest.NewCA(t)
	td := ca.TrustDomain()
	reg := prometheus.NewRegistry()
	metrics := kube.NewCAMetrics(reg)
	auth, err := kube.NewTokenReviewAuthenticator(apiAs(t, c, "istio-system", "ferry-ca"),
		kube.TokenReviewConfig{Audiences: []string{"istio-ca"}, Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	var clock atomic.Int64 // seconds added to the wall clock
	kube.SetClock(auth, func() time.Time { return time.Now().Add(time.Duration(clock.Load()) * time.Second) })
	srv, err := istioca.NewServer(istioca.ServerConfig{
		TrustDomain: td,
		NodeAgents:  []certs.Identity{{TrustDomain: td, Namespace: "istio-system", ServiceAccount: "ferry"}},
		ServerNames: []string{"127.0.0.1"},
	}, ca.Issuer(), auth, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := testutil.Serve(t, srv.Serve)

	// client returns a CA client presenting token (from a file, as the
	// agent reads its projected token).
	client := func(token string) *istioca.Client {
		t.Helper()
		f := filepath.Join(t.TempDir(), "istio-token")
		if err := os.WriteFile(f, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		cl, err := istioca.NewClient(istioca.ClientConfig{Address: addr, Roots: ca.Roots(), TokenFile: f})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	issue := func(cl *istioca.Client, ns, sa string) error {
		t.Helper()
		id := certs.Identity{TrustDomain: td, Namespace: ns, ServiceAccount: sa}
		csr := certstest.CSR(t, id)
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		chain, err := cl.Issue(rctx, id, csr, time.Hour)
		if err == nil && len(chain) == 0 {
			t.Fatalf("%s/%s: empty chain", ns, sa)
		}
		return err
	}

	tokens := map[string]string{
		"agent on node-1": c.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: agent1}),
		"agent on node-2": c.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: agent2}),
		"agent, unbound":  c.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Audiences: []string{"istio-ca"}}),
		"agent, API aud":  c.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Pod: agent1}),
		"workload web":    c.Token(t, "shop", "web", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: web}),
		"garbage":         "garbage",
	}
	for _, tc := range []struct {
		token, ns, sa string
		want          codes.Code
	}{
		{"agent on node-1", "shop", "web", codes.OK},              // a local service account
		{"agent on node-1", "istio-system", "ferry", codes.OK},    // its own
		{"agent on node-1", "shop", "db", codes.PermissionDenied}, // db has no pod on node-1
		{"agent on node-2", "shop", "db", codes.OK},
		{"agent on node-2", "shop", "web", codes.PermissionDenied}, // wrong node
		{"agent, unbound", "shop", "web", codes.PermissionDenied},  // no node to check against
		{"agent, API aud", "shop", "web", codes.Unauthenticated},   // not an istio-ca token
		{"workload web", "shop", "web", codes.OK},                  // its own identity
		{"workload web", "shop", "db", codes.PermissionDenied},     // not a node agent
		{"garbage", "shop", "web", codes.Unauthenticated},
	} {
		err := issue(client(tokens[tc.token]), tc.ns, tc.sa)
		if got := status.Code(err); got != tc.want {
			t.Errorf("%s asking for %s/%s: %v (%v), want %v", tc.token, tc.ns, tc.sa, got, err, tc.want)
		}
	}

	// Six tokens, each reviewed once however often it was used.
	if got := counter(t, metrics.Reviews, "authenticated") + counter(t, metrics.Reviews, "unauthenticated"); got != 6 {
		t.Errorf("%v TokenReviews for 6 tokens", got)
	}

	// The agent's pod replaced: its old token is accepted from the cache
	// until the review's TTL, and refused from then on.
	c.DeletePod(t, "istio-system", "ferry-node1")
	if err := issue(client(tokens["agent on node-1"]), "shop", "web"); err != nil {
		t.Errorf("token of a deleted agent pod, within the cache TTL: %v, want it served from the cache", err)
	}
	clock.Add(int64(kube.DefaultReviewSuccessTTL / time.Second))
	if err := issue(client(tokens["agent on node-1"]), "shop", "web"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("token of a deleted agent pod, past the cache TTL: %v, want Unauthenticated", err)
	}
}
