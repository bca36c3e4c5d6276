package istioca_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/certs/istioca"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// tokenAuth is an Authenticator over fixed tables, standing in for the
// TokenReview and pod lookups the node package does.
type tokenAuth struct {
	mu     sync.Mutex
	tokens map[string]istioca.Caller
	pods   map[string][]string // node → "ns/sa" of its pods
}

func (a *tokenAuth) Authenticate(_ context.Context, token string) (istioca.Caller, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.tokens[token]
	if !ok {
		return istioca.Caller{}, errors.New("token not valid")
	}
	return c, nil
}

func (a *tokenAuth) ServiceAccountOnNode(_ context.Context, node, ns, sa string) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.pods[node] {
		if p == ns+"/"+sa {
			return true, nil
		}
	}
	return false, nil
}

type caEnv struct {
	ca        *certstest.CA
	addr      string
	agent     certs.Identity
	tokenFile string
	server    *istioca.Server
}

const (
	agentToken    = "agent-token-node1"
	unboundToken  = "agent-token-unbound"
	workloadToken = "workload-token"
)

// startCA serves a Server on loopback until the test ends.
func startCA(t *testing.T, ca *certstest.CA, cfg istioca.ServerConfig) *caEnv {
	t.Helper()
	agent := ca.Identity("ferry-system", "ferry")
	auth := &tokenAuth{
		tokens: map[string]istioca.Caller{
			agentToken:    {Identity: certs.Identity{Namespace: "ferry-system", ServiceAccount: "ferry"}, Node: "node1"},
			unboundToken:  {Identity: certs.Identity{Namespace: "ferry-system", ServiceAccount: "ferry"}},
			workloadToken: {Identity: certs.Identity{Namespace: "default", ServiceAccount: "app"}, Node: "node1"},
		},
		pods: map[string][]string{
			"node1": {"default/app", "shop/cart"},
			"node2": {"shop/payments"},
		},
	}
	cfg.TrustDomain = ca.TrustDomain()
	cfg.NodeAgents = []certs.Identity{agent}
	if cfg.ServerNames == nil {
		cfg.ServerNames = []string{"ferry-ca.test", "127.0.0.1"}
	}
	srv, err := istioca.NewServer(cfg, ca.Issuer(), auth, certstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := testutil.Serve(t, srv.Serve)
	e := &caEnv{ca: ca, addr: addr, agent: agent, tokenFile: filepath.Join(t.TempDir(), "istio-token"), server: srv}
	e.setToken(t, agentToken)
	return e
}

func (e *caEnv) setToken(t *testing.T, tok string) {
	t.Helper()
	if err := os.WriteFile(e.tokenFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (e *caEnv) client(t *testing.T, mutate func(*istioca.ClientConfig)) *istioca.Client {
	t.Helper()
	cfg := istioca.ClientConfig{Address: e.addr, Roots: e.ca.Roots(), ServerName: "ferry-ca.test", TokenFile: e.tokenFile}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := istioca.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func issue(t *testing.T, iss certs.Issuer, id certs.Identity, ttl time.Duration) ([]*x509.Certificate, error) {
	t.Helper()
	csr := certstest.CSR(t, id)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	return iss.Issue(ctx, id, csr, ttl)
}

func TestIstioCAImpersonation(t *testing.T) {
	ca := certstest.NewCA(t, certstest.WithIntermediate())
	e := startCA(t, ca, istioca.ServerConfig{})
	c := e.client(t, nil)
	id := ca.Identity("shop", "cart")

	chain, err := issue(t, c, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || !chain[2].Equal(ca.Root()) {
		t.Fatalf("chain of %d, want leaf, intermediate, root", len(chain))
	}
	inters := x509.NewCertPool()
	inters.AddCert(chain[1])
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: ca.Roots(), Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify: %v", err)
	}
	if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != id.String() {
		t.Errorf("leaf URIs %v", chain[0].URIs)
	}
	if d := chain[0].NotAfter.Sub(chain[0].NotBefore); d != certs.DefaultCertTTL+certs.ClockSkew {
		t.Errorf("lifetime %s for a request without one", d)
	}

	// A Store fed by the client.
	s := ca.StoreWith(t, ca.StoreConfig(), c, id, ca.Identity("default", "app"))
	if snap := s.Snapshot(); len(snap) != 2 || snap[0].State != certs.CertValid || snap[1].State != certs.CertValid {
		t.Errorf("Snapshot: %+v", snap)
	}
}

func TestIstioCARefuses(t *testing.T) {
	ca := certstest.NewCA(t)
	other := certstest.NewCA(t)
	e := startCA(t, ca, istioca.ServerConfig{})

	tests := []struct {
		name   string
		token  string
		mutate func(*istioca.ClientConfig)
		id     certs.Identity
		code   codes.Code
		want   string
	}{
		{"foreign service account", agentToken, nil, ca.Identity("shop", "payments"), codes.PermissionDenied, `no pod with service account shop/payments on node "node1"`},
		{"workload impersonating", workloadToken, nil, ca.Identity("shop", "cart"), codes.PermissionDenied, "not a node agent"},
		{"agent token not bound to a node", unboundToken, nil, ca.Identity("shop", "cart"), codes.PermissionDenied, "not bound to a pod"},
		{"bad token", "forged", nil, ca.Identity("shop", "cart"), codes.Unauthenticated, "authentication failed"},
		{"no token", agentToken, func(c *istioca.ClientConfig) { c.TokenFile = "" }, ca.Identity("shop", "cart"), codes.Unauthenticated, "authorization"},
		{"other cluster", agentToken, func(c *istioca.ClientConfig) { c.ClusterID = "east" }, ca.Identity("shop", "cart"), codes.Unauthenticated, `cluster "east"`},
		{"other trust domain", agentToken, nil, certs.Identity{TrustDomain: "evil.local", Namespace: "shop", ServiceAccount: "cart"}, codes.PermissionDenied, "trust domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.setToken(t, tt.token)
			_, err := issue(t, e.client(t, tt.mutate), tt.id, 0)
			if status.Code(errors.Unwrap(err)) != tt.code || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Issue: %v; want %s containing %q", err, tt.code, tt.want)
			}
		})
	}

	e.setToken(t, workloadToken)
	t.Run("workload for itself", func(t *testing.T) {
		if _, err := issue(t, e.client(t, nil), ca.Identity("default", "app"), 0); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("token re-read", func(t *testing.T) {
		c := e.client(t, nil)
		if _, err := issue(t, c, ca.Identity("shop", "cart"), 0); status.Code(errors.Unwrap(err)) != codes.PermissionDenied {
			t.Fatalf("workload token: %v", err)
		}
		e.setToken(t, agentToken)
		if _, err := issue(t, c, ca.Identity("shop", "cart"), 0); err != nil {
			t.Fatalf("after the token changed to the agent's: %v", err)
		}
	})
	e.setToken(t, agentToken)
	t.Run("untrusted CA", func(t *testing.T) {
		_, err := issue(t, e.client(t, func(c *istioca.ClientConfig) { c.Roots = other.Roots() }), ca.Identity("shop", "cart"), 0)
		if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Fatalf("Issue against an untrusted CA: %v", err)
		}
	})
	t.Run("wrong CA name", func(t *testing.T) {
		_, err := issue(t, e.client(t, func(c *istioca.ClientConfig) { c.ServerName = "istiod.istio-system.svc" }), ca.Identity("shop", "cart"), 0)
		if err == nil || !strings.Contains(err.Error(), "istiod.istio-system.svc") {
			t.Fatalf("Issue against the wrong name: %v", err)
		}
	})
	t.Run("missing token file", func(t *testing.T) {
		_, err := issue(t, e.client(t, func(c *istioca.ClientConfig) { c.TokenFile = filepath.Join(t.TempDir(), "none") }), ca.Identity("shop", "cart"), 0)
		if err == nil || !strings.Contains(err.Error(), "token") {
			t.Fatalf("Issue without a token file: %v", err)
		}
	})
}

// TestCAServerRequests calls CreateCertificate directly, for what the
// client never sends.
func TestCAServerRequests(t *testing.T) {
	ca := certstest.NewCA(t)
	e := startCA(t, ca, istioca.ServerConfig{MaxTTL: 48 * time.Hour})
	key, _ := certs.GenerateKey()
	cart := ca.Identity("shop", "cart")
	csr, _ := certs.NewCSR(cart, key)
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("authorization", "Bearer "+agentToken))
	req := func(csr []byte, ttl int64, impersonate string) *pb.IstioCertificateRequest {
		r := &pb.IstioCertificateRequest{Csr: string(csr), ValidityDuration: ttl}
		if impersonate != "" {
			r.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{istioca.ImpersonatedIdentityKey: structpb.NewStringValue(impersonate)}}
		}
		return r
	}

	for name, tc := range map[string]struct {
		ttl  int64
		want time.Duration
	}{
		"default": {0, 24 * time.Hour}, "negative": {-5, 24 * time.Hour}, "1h": {3600, time.Hour},
		"capped": {365 * 24 * 3600, 48 * time.Hour}, "huge": {1 << 62, 48 * time.Hour},
	} {
		t.Run("ttl "+name, func(t *testing.T) {
			resp, err := e.server.CreateCertificate(ctx, req(csr, tc.ttl, cart.String()))
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.CertChain) != 2 {
				t.Fatalf("chain of %d", len(resp.CertChain))
			}
			for _, pemText := range resp.CertChain {
				if !strings.HasSuffix(pemText, "-----END CERTIFICATE-----\n") || strings.Count(pemText, "BEGIN") != 1 {
					t.Errorf("element %q: want one PEM certificate ending in a newline", pemText)
				}
			}
			chain, err := x509.ParseCertificate(mustPEM(t, resp.CertChain[0]))
			if err != nil {
				t.Fatal(err)
			}
			if d := chain.NotAfter.Sub(chain.NotBefore) - certs.ClockSkew; d != tc.want {
				t.Errorf("lifetime %s, want %s", d, tc.want)
			}
		})
	}

	other, _ := certs.NewCSR(ca.Identity("shop", "payments"), key)
	for name, tc := range map[string]struct {
		ctx  context.Context
		req  *pb.IstioCertificateRequest
		code codes.Code
	}{
		"CSR for another identity":  {ctx, req(other, 0, cart.String()), codes.InvalidArgument},
		"garbage CSR":               {ctx, req([]byte("nope"), 0, cart.String()), codes.InvalidArgument},
		"malformed impersonation":   {ctx, req(csr, 0, "spiffe://cluster.local/ns/shop/sa/cart/x"), codes.InvalidArgument},
		"agent for itself":          {ctx, req(csr, 0, ""), codes.InvalidArgument}, // CSR is for cart, caller is the agent
		"basic auth":                {metadata.NewIncomingContext(t.Context(), metadata.Pairs("authorization", "Basic "+agentToken)), req(csr, 0, cart.String()), codes.Unauthenticated},
		"two authorization headers": {metadata.NewIncomingContext(t.Context(), metadata.Pairs("authorization", "Bearer "+agentToken, "authorization", "Bearer x")), req(csr, 0, cart.String()), codes.Unauthenticated},
		"no metadata":               {t.Context(), req(csr, 0, cart.String()), codes.Unauthenticated},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := e.server.CreateCertificate(tc.ctx, tc.req)
			if status.Code(err) != tc.code {
				t.Fatalf("CreateCertificate: %v; want %s", err, tc.code)
			}
		})
	}
}

// evilCA answers every request with a certificate for another identity.
type evilCA struct {
	pb.UnimplementedIstioCertificateServiceServer
	ca *certstest.CA
}

func (s evilCA) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	block := mustPEMBlock(req.Csr)
	csr, err := x509.ParseCertificateRequest(block)
	if err != nil {
		return nil, err
	}
	chain, err := s.ca.Issuer().Sign(s.ca.Identity("kube-system", "admin"), csr.PublicKey, time.Hour)
	if err != nil {
		return nil, err
	}
	return &pb.IstioCertificateResponse{CertChain: []string{string(certs.EncodeCertificatesPEM(chain))}}, nil
}

func TestIstioCAClientChecksIdentity(t *testing.T) {
	ca := certstest.NewCA(t)
	cert, err := ca.Issuer().ServingCertificate([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}})))
	pb.RegisterIstioCertificateServiceServer(srv, evilCA{ca: ca})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Stop()
	c, err := istioca.NewClient(istioca.ClientConfig{Address: ln.Addr().String(), Roots: ca.Roots()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = issue(t, c, ca.Identity("shop", "cart"), 0)
	if err == nil || !strings.Contains(err.Error(), "issued certificate is for spiffe://cluster.local/ns/kube-system/sa/admin") {
		t.Fatalf("Issue: %v", err)
	}
}

func TestCAConstructorsValidate(t *testing.T) {
	ca := certstest.NewCA(t)
	auth := &tokenAuth{}
	log := certstest.Logger(t)
	for name, tc := range map[string]struct {
		cfg  istioca.ServerConfig
		ca   *certs.LocalCA
		auth istioca.Authenticator
	}{
		"no trust domain":  {istioca.ServerConfig{}, ca.Issuer(), auth},
		"no CA":            {istioca.ServerConfig{TrustDomain: "td"}, nil, auth},
		"no authenticator": {istioca.ServerConfig{TrustDomain: "td"}, ca.Issuer(), nil},
		"bad node agent":   {istioca.ServerConfig{TrustDomain: "td", NodeAgents: []certs.Identity{{Namespace: "x"}}}, ca.Issuer(), auth},
		"negative max TTL": {istioca.ServerConfig{TrustDomain: "td", MaxTTL: -1}, ca.Issuer(), auth},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := istioca.NewServer(tc.cfg, tc.ca, tc.auth, log); err == nil {
				t.Fatal("NewServer accepted it")
			}
		})
	}
	for name, cfg := range map[string]istioca.ClientConfig{
		"no port":  {Address: "istiod", Roots: ca.Roots()},
		"no roots": {Address: "istiod:15012"},
	} {
		t.Run("client "+name, func(t *testing.T) {
			if _, err := istioca.NewClient(cfg); err == nil {
				t.Fatal("NewClient accepted it")
			}
		})
	}
}

func mustPEMBlock(s string) []byte {
	b, _ := pemDecode([]byte(s))
	return b
}

func mustPEM(t *testing.T, s string) []byte {
	t.Helper()
	b, rest := pemDecode([]byte(s))
	if b == nil || len(rest) != 0 {
		t.Fatalf("not one PEM block: %q", s)
	}
	return b
}

// pemDecode returns the bytes of the first PEM block of b and what follows it.
func pemDecode(b []byte) ([]byte, []byte) {
	blk, rest := pem.Decode(b)
	if blk == nil {
		return nil, rest
	}
	return blk.Bytes, rest
}
