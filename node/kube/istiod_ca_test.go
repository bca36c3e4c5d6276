package kube_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/certs/istioca"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestPrivilegedIstiodCA asks a real istiod's CA for workload certificates
// as the agent does with --ca-addr: a token for the agent's service account
// bound to its pod, ztunnel's ImpersonatedIdentity, and as the only trust
// anchor the root istiod publishes in ConfigMap istio-ca-root-cert. It
// covers istiod's two refusals (a service account with no pod on the
// caller's node; a caller that is not a trusted node account) and a client
// whose root is not istiod's (no fallback to an unverified connection).
func TestPrivilegedIstiodCA(t *testing.T) {
	testutil.Privileged(t)
	kc := kubetest.Start(t)
	istiod := kc.StartIstiod(t, kubetest.BuildIstio(t), kubetest.IstiodOptions{TrustedNodeAccounts: []string{"istio-system/ferry"}})
	ctx := t.Context()

	// The trust anchor: the ConfigMap istiod publishes in every namespace,
	// read through the API in a namespace of ours, as a workload would.
	kc.Namespace(t, "foo", nil)
	var rootPEM []byte
	deadline := time.Now().Add(30 * time.Second)
	for {
		cm, err := kc.Client.CoreV1().ConfigMaps("foo").Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err == nil && cm.Data["root-cert.pem"] != "" {
			rootPEM = []byte(cm.Data["root-cert.pem"])
			break
		}
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("istiod published no istio-ca-root-cert in foo in 30s (%v, data %v)", err, cm.Data)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !bytes.Equal(rootPEM, istiod.Root) {
		t.Errorf("istio-ca-root-cert in foo:\n%s\nin istio-system:\n%s", rootPEM, istiod.Root)
	}
	block, rest := pem.Decode(rootPEM)
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("istio-ca-root-cert: want one PEM certificate, got %q", rootPEM)
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	// Loaded from a file, as the agent loads --ca-root.
	rootFile := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := os.WriteFile(rootFile, rootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	roots, err := certs.LoadRoots(rootFile)
	if err != nil {
		t.Fatal(err)
	}

	agent := kc.CreatePod(t, kubetest.Pod{Namespace: "istio-system", Name: "ferry-node1", ServiceAccount: "ferry", Node: "node1",
		IP: "198.18.250.1", HostNetwork: true})
	intruder := kc.CreatePod(t, kubetest.Pod{Namespace: "istio-system", Name: "intruder", ServiceAccount: "intruder", Node: "node1",
		IP: "198.18.1.20"})
	kc.CreatePod(t, kubetest.Pod{Namespace: "foo", Name: "app", ServiceAccount: "app", Node: "node1", IP: "198.18.1.10"})
	kc.CreatePod(t, kubetest.Pod{Namespace: "foo", Name: "far", ServiceAccount: "far", Node: "node2", IP: "198.18.2.10"})

	// newClient returns a CA client for istiod presenting token (from a
	// file, as the agent reads its projected token) and verifying istiod
	// with roots.
	newClient := func(token string, roots *x509.CertPool) *istioca.Client {
		t.Helper()
		f := filepath.Join(t.TempDir(), "istio-token")
		if err := os.WriteFile(f, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		cl, err := istioca.NewClient(istioca.ClientConfig{Address: istiod.XDSAddr, Roots: roots, TokenFile: f})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	issue := func(cl *istioca.Client, id certs.Identity) ([]*x509.Certificate, error) {
		t.Helper()
		csr := certstest.CSR(t, id)
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		return cl.Issue(rctx, id, csr, time.Hour)
	}
	foo := func(sa string) certs.Identity {
		return certs.Identity{TrustDomain: "cluster.local", Namespace: "foo", ServiceAccount: sa}
	}
	agentClient := newClient(kc.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: agent}), roots)

	// A pod of app runs on the agent's node: istiod signs app's certificate
	// for the agent. Its pod informer may not have seen app yet, and then
	// refuses as it does for a pod on another node: retry for a while.
	app := foo("app")
	var chain []*x509.Certificate
	for deadline := time.Now().Add(15 * time.Second); ; {
		chain, err = issue(agentClient, app)
		if err == nil || status.Code(err) != codes.Unauthenticated || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("agent on node1 asking for %s: %v", app, err)
	}
	if len(chain) < 2 {
		t.Fatalf("chain of %d certificate(s), want the leaf and the root at least", len(chain))
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != app.String() {
		t.Errorf("leaf URI SANs %v, want [%s]", leaf.URIs, app)
	}
	if last := chain[len(chain)-1]; !last.Equal(root) {
		t.Errorf("chain of %d ends at %s, want the istio-ca-root-cert root %s", len(chain), last.Subject, root.Subject)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1 : len(chain)-1] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("issued chain does not verify against istio-ca-root-cert: %v", err)
	}

	// refused checks a refusal: istiod answers Unauthenticated with one
	// opaque message for every failed impersonation, its reason only in its
	// log (security/pkg/server/ca/server.go). The message tells it apart
	// from a token istiod could not authenticate ("request authenticate
	// failure"), so the token in each case was accepted and the
	// impersonation refused. The client's error names the CA.
	refused := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: issued, want a refusal", what)
			return
		}
		t.Logf("%s: %v", what, err)
		if s := grpcStatus(err); s.Code() != codes.Unauthenticated || s.Message() != "request impersonation authentication failure" {
			t.Errorf("%s: %v, want Unauthenticated: request impersonation authentication failure", what, err)
		}
		if !strings.Contains(err.Error(), istiod.XDSAddr) {
			t.Errorf("%s: error %q does not name the Istio CA %s", what, err, istiod.XDSAddr)
		}
	}

	// far's only pod runs on node2: the agent of node1 may not have it
	// (istiod's log: no instances of "foo/far" found on node "node1").
	_, err = issue(agentClient, foo("far"))
	refused("agent on node1 asking for foo/far (pod on node2 only)", err)

	// intruder has a pod on node1, next to app, and a token bound to it,
	// but is not in CA_TRUSTED_NODE_ACCOUNTS (istiod's log: caller ... is
	// not allowed to impersonate).
	intruderClient := newClient(kc.Token(t, "istio-system", "intruder", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: intruder}), roots)
	_, err = issue(intruderClient, app)
	refused("istio-system/intruder asking for foo/app", err)

	// A client trusting another root fails the TLS handshake: istiod's
	// certificate is not accepted without verification.
	_, err = issue(newClient(kc.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: agent}),
		certstest.NewCA(t).Roots()), app)
	t.Logf("client with another root: %v", err)
	if s := grpcStatus(err); err == nil || s.Code() != codes.Unavailable || !strings.Contains(s.Message(), "x509: certificate signed by unknown authority") {
		t.Errorf("client with another root: %v, want Unavailable: a TLS handshake failure (certificate signed by unknown authority)", err)
	}
}

// grpcStatus returns the gRPC status err wraps, as the server or the client
// transport made it (status.Convert would give the wrapping error's text as
// its message), or status.Convert(err) when err wraps none.
func grpcStatus(err error) *status.Status {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus()
	}
	return status.Convert(err)
}
