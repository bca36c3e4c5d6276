package istioca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/ferrymesh/ferry/certs"
)

// Caller is the authenticated sender of a certificate request.
type Caller struct {
	// Identity is the caller's service account, from its token.
	Identity certs.Identity
	// Node is the node the caller's pod runs on, when the token is bound to
	// a pod that the Authenticator has found (same name, UID and service
	// account). It is required for impersonation.
	Node string
}

// Authenticator authenticates and locates the callers of a Server. The node
// package implements it with a Kubernetes TokenReview (audience istio-ca)
// and pod lookups. Implementations must be safe for concurrent use.
type Authenticator interface {
	// Authenticate checks a bearer token and returns its service account,
	// in the Server's trust domain. When the token is bound to a pod, it
	// must also check that this pod exists with the token's UID and service
	// account, and set Caller.Node to the pod's node.
	Authenticate(ctx context.Context, token string) (Caller, error)
	// ServiceAccountOnNode reports whether a pod that has not failed, with
	// service account sa in namespace ns, is scheduled on node.
	ServiceAccountOnNode(ctx context.Context, node, ns, sa string) (bool, error)
}

// ServerConfig configures a Server.
type ServerConfig struct {
	// TrustDomain of the identities the server signs for. Required.
	TrustDomain string
	// NodeAgents are the service accounts (the Ferry or ztunnel DaemonSet's)
	// allowed to ask for the certificates of other service accounts that
	// have a pod on their node. Nobody else may impersonate.
	NodeAgents []certs.Identity
	// MaxTTL caps the lifetime granted (0 means certs.DefaultCertTTL);
	// longer requests are shortened. A request for 0 gets
	// certs.DefaultCertTTL.
	MaxTTL time.Duration
	// ClusterID is this cluster's ID: a request naming another cluster is
	// refused (default DefaultClusterID).
	ClusterID string
	// ServerNames are the DNS names and IP addresses of the server's own
	// certificate, which it issues itself from its CA. Required for Serve.
	ServerNames []string

	// Limits of Serve, which any pod can reach: each request may cost the
	// Authenticator an API call.

	// PeerRate and PeerBurst limit the requests of each source address:
	// PeerRate a second on average, PeerBurst at once (0 means
	// DefaultPeerRate and DefaultPeerBurst). A request over the limit is
	// refused with ResourceExhausted before it is authenticated. The burst
	// is there for a node agent starting with many local service accounts.
	PeerRate  float64
	PeerBurst int
	// MaxConcurrentStreams caps the requests in flight on one connection
	// (0 means DefaultMaxConcurrentStreams).
	MaxConcurrentStreams uint32
	// IdleTimeout closes a connection that has had no request for this
	// long (0 means DefaultIdleTimeout).
	IdleTimeout time.Duration
	// Refused, if set, is called once for every refused request with a
	// bounded reason, one of the Refused* constants, for a metric.
	Refused func(reason string)
}

// Defaults of ServerConfig's limits.
const (
	DefaultPeerRate             = 10
	DefaultPeerBurst            = 100
	DefaultMaxConcurrentStreams = 16
	DefaultIdleTimeout          = 5 * time.Minute

	// maxRatePeers caps the source addresses whose rate a Server
	// tracks; the least recently seen is forgotten (its bucket full again).
	maxRatePeers = 16384
)

// Reasons a Server refuses a request, as ServerConfig.Refused gets them.
const (
	RefusedRateLimited      = "rate_limited"
	RefusedUnauthenticated  = "unauthenticated"
	RefusedPermissionDenied = "permission_denied"
	RefusedInvalidArgument  = "invalid_argument"
	RefusedUnavailable      = "unavailable"
	RefusedInternal         = "internal"
)

// Server serves Istio's CA protocol
// (istio.v1.auth.IstioCertificateService/CreateCertificate), signing with a
// certs.LocalCA: the `ferry ca` service. A caller gets a certificate for its own
// service account, or, if it is a node agent, for a service account with a
// pod on its node. It is safe for concurrent use.
type Server struct {
	cfg  ServerConfig
	ca   *certs.LocalCA
	auth Authenticator
	log  *slog.Logger

	peers *peerLimiter

	mu      sync.Mutex
	serving *tls.Certificate
}

// NewServer checks cfg and returns a server. It starts nothing.
func NewServer(cfg ServerConfig, ca *certs.LocalCA, auth Authenticator, log *slog.Logger) (*Server, error) {
	if !certs.ValidTrustDomain(cfg.TrustDomain) {
		return nil, fmt.Errorf("istioca: server: invalid trust domain %q", cfg.TrustDomain)
	}
	if ca == nil || auth == nil || log == nil {
		return nil, errors.New("istioca: server: CA, authenticator and logger are required")
	}
	for _, id := range cfg.NodeAgents {
		if err := id.Validate(); err != nil {
			return nil, fmt.Errorf("istioca: server: node agent: %w", err)
		}
	}
	if cfg.MaxTTL < 0 {
		return nil, errors.New("istioca: server: negative MaxTTL")
	}
	if cfg.PeerRate < 0 || cfg.PeerBurst < 0 || cfg.IdleTimeout < 0 {
		return nil, errors.New("istioca: server: negative PeerRate, PeerBurst or IdleTimeout")
	}
	if cfg.PeerRate == 0 {
		cfg.PeerRate = DefaultPeerRate
	}
	if cfg.PeerBurst == 0 {
		cfg.PeerBurst = DefaultPeerBurst
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = certs.DefaultCertTTL
	}
	if cfg.ClusterID == "" {
		cfg.ClusterID = DefaultClusterID
	}
	return &Server{cfg: cfg, ca: ca, auth: auth, log: log,
		peers: newPeerLimiter(rate.Limit(cfg.PeerRate), cfg.PeerBurst, maxRatePeers)}, nil
}

// Register adds the certificate service to a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	pb.RegisterIstioCertificateServiceServer(r, grpcCAService{s: s})
}

// Serve serves gRPC over TLS on ln, with a certificate for cfg.ServerNames
// that it issues from its own CA and renews at half life, until ctx is done;
// then it stops gracefully (5 s at most) and returns nil. It closes ln. It
// applies the config's limits: per-address request rate, streams per
// connection, idle connections closed, and small messages and headers.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if len(s.cfg.ServerNames) == 0 {
		ln.Close()
		return errors.New("istioca: server: no ServerNames for its certificate")
	}
	if _, err := s.servingCertificate(); err != nil {
		ln.Close()
		return err
	}
	creds := credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.servingCertificate()
		},
	})
	srv := grpc.NewServer(grpc.Creds(creds),
		grpc.MaxRecvMsgSize(64<<10),
		// A projected token is a few kilobytes; the default allows 16 MiB.
		grpc.MaxHeaderListSize(64<<10),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.MaxConcurrentStreams(s.cfg.MaxConcurrentStreams),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: s.cfg.IdleTimeout,
			// Find dead peers: ping after a minute of silence.
			Time:    time.Minute,
			Timeout: 20 * time.Second,
		}),
		// gRPC's default, explicit: a client pinging more often than every
		// 5 minutes, or with no request open, is disconnected.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Minute}),
		grpc.ChainUnaryInterceptor(s.limitRate),
	)
	s.Register(srv)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("istioca: server: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		srv.Stop()
		<-stopped
	}
	<-done
	return nil
}

// servingCertificate returns the server's own certificate, issuing a new one
// when none is held or the one held is past half its lifetime.
func (s *Server) servingCertificate() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if c := s.serving; c != nil {
		half := c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore) / 2)
		if now.Before(half) {
			return c, nil
		}
	}
	c, err := s.ca.ServingCertificate(s.cfg.ServerNames, certs.DefaultCertTTL)
	if err != nil {
		if old := s.serving; old != nil && !now.Before(old.Leaf.NotBefore) && !now.After(old.Leaf.NotAfter) {
			s.log.Warn("CA serving certificate renewal failed", "error", err)
			return s.serving, nil
		}
		return nil, err
	}
	s.serving = c
	return c, nil
}

// grpcCAService adapts Server to the generated service interface.
type grpcCAService struct {
	pb.UnimplementedIstioCertificateServiceServer
	s *Server
}

func (g grpcCAService) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	return g.s.CreateCertificate(ctx, req)
}

// limitRate refuses a request whose source address is over its rate, before
// anything else is done for it.
func (s *Server) limitRate(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	var addr netip.Addr
	if p, ok := peer.FromContext(ctx); ok {
		if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil {
			addr = ap.Addr().Unmap()
		}
	}
	if !s.peers.allow(addr, time.Now()) {
		// Debug only: a flood must not become a flood of log lines.
		s.log.Debug("CA request refused", "src", addr, "reason", RefusedRateLimited)
		s.count(RefusedRateLimited)
		return nil, status.Error(codes.ResourceExhausted, "too many requests from this address; retry later")
	}
	return next(ctx, req)
}

func (s *Server) count(reason string) {
	if s.cfg.Refused != nil {
		s.cfg.Refused(reason)
	}
}

// CreateCertificate handles one request. The caller is authenticated by the
// "authorization: Bearer" token in the gRPC metadata; the certificate is for
// the caller's own service account unless the request's metadata names an
// ImpersonatedIdentity, which only a node agent may do, and only for a
// service account with a pod on the agent's node. The CSR must carry exactly
// the identity's SPIFFE URI as its only SAN and an ECDSA P-256 or RSA key.
// Errors are gRPC status errors: Unauthenticated, PermissionDenied,
// InvalidArgument or Internal.
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if ids := md.Get(ClusterIDHeader); len(ids) > 0 && ids[0] != "" && ids[0] != s.cfg.ClusterID {
		return nil, s.refuse(codes.Unauthenticated, certs.Identity{}, certs.Identity{}, fmt.Sprintf("client claims to be in cluster %q", ids[0]))
	}
	token, err := bearerToken(md)
	if err != nil {
		return nil, s.refuse(codes.Unauthenticated, certs.Identity{}, certs.Identity{}, err.Error())
	}
	caller, err := s.auth.Authenticate(ctx, token)
	if err != nil {
		s.log.Info("CA request refused", "reason", "authentication", "error", err)
		s.count(RefusedUnauthenticated)
		return nil, status.Error(codes.Unauthenticated, "request authentication failed")
	}
	caller.Identity.TrustDomain = s.cfg.TrustDomain
	if err := caller.Identity.Validate(); err != nil {
		return nil, s.refuse(codes.Unauthenticated, certs.Identity{}, certs.Identity{}, "authenticator returned "+err.Error())
	}

	target := caller.Identity
	if v, ok := req.GetMetadata().GetFields()[ImpersonatedIdentityKey]; ok {
		id, err := certs.ParseIdentity(v.GetStringValue())
		if err != nil {
			return nil, s.refuse(codes.InvalidArgument, caller.Identity, certs.Identity{}, "impersonated identity: "+err.Error())
		}
		target = id
	}
	if target.TrustDomain != s.cfg.TrustDomain {
		return nil, s.refuse(codes.PermissionDenied, caller.Identity, target, fmt.Sprintf("trust domain %q is not %q", target.TrustDomain, s.cfg.TrustDomain))
	}
	if target != caller.Identity {
		if code, reason := s.mayImpersonate(ctx, caller, target); reason != "" {
			return nil, s.refuse(code, caller.Identity, target, reason)
		}
	}

	var ttl time.Duration
	switch v := req.GetValidityDuration(); {
	case v <= 0:
		ttl = certs.DefaultCertTTL
	case v > int64(s.cfg.MaxTTL/time.Second):
		ttl = s.cfg.MaxTTL // also keeps v*time.Second from overflowing
	default:
		ttl = time.Duration(v) * time.Second
	}
	ttl = min(ttl, s.cfg.MaxTTL)
	csr, err := certs.CheckCSR(target, []byte(req.GetCsr()))
	if err != nil {
		return nil, s.refuse(codes.InvalidArgument, caller.Identity, target, err.Error())
	}
	chain, err := s.ca.Sign(target, csr.PublicKey, ttl)
	if err != nil {
		s.log.Error("CA signing failed", "caller", caller.Identity.String(), "identity", target.String(), "error", err)
		s.count(RefusedInternal)
		return nil, status.Error(codes.Internal, "signing failed")
	}
	resp := &pb.IstioCertificateResponse{}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, string(certs.EncodeCertificatesPEM([]*x509.Certificate{c})))
	}
	s.log.Info("certificate issued", "caller", caller.Identity.String(), "node", caller.Node,
		"identity", target.String(), "serial", fmt.Sprintf("%x", chain[0].SerialNumber), "notAfter", chain[0].NotAfter)
	return resp, nil
}

// mayImpersonate applies the node rule: only a node agent, on a known node,
// for a service account with a pod on that node.
func (s *Server) mayImpersonate(ctx context.Context, caller Caller, target certs.Identity) (codes.Code, string) {
	trusted := false
	for _, a := range s.cfg.NodeAgents {
		if a.Namespace == caller.Identity.Namespace && a.ServiceAccount == caller.Identity.ServiceAccount {
			trusted = true
		}
	}
	if !trusted {
		return codes.PermissionDenied, "caller is not a node agent and may not impersonate"
	}
	if caller.Node == "" {
		return codes.PermissionDenied, "caller's token is not bound to a pod on a known node"
	}
	ok, err := s.auth.ServiceAccountOnNode(ctx, caller.Node, target.Namespace, target.ServiceAccount)
	if err != nil {
		return codes.Unavailable, "looking up pods: " + err.Error()
	}
	if !ok {
		return codes.PermissionDenied, fmt.Sprintf("no pod with service account %s/%s on node %q", target.Namespace, target.ServiceAccount, caller.Node)
	}
	return codes.OK, ""
}

// refuse logs and counts a refused request and returns its status error.
func (s *Server) refuse(code codes.Code, caller, target certs.Identity, reason string) error {
	s.log.Info("CA request refused", "caller", caller.String(), "identity", target.String(), "code", code.String(), "reason", reason)
	switch code {
	case codes.Unauthenticated:
		s.count(RefusedUnauthenticated)
	case codes.PermissionDenied:
		s.count(RefusedPermissionDenied)
	case codes.InvalidArgument:
		s.count(RefusedInvalidArgument)
	case codes.Unavailable:
		s.count(RefusedUnavailable)
	default:
		s.count(RefusedInternal)
	}
	return status.Error(code, reason)
}

// bearerToken extracts the token of an "authorization: Bearer" header.
func bearerToken(md metadata.MD) (string, error) {
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return "", errors.New("want exactly one authorization header")
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return "", errors.New("authorization header is not a bearer token")
	}
	return strings.TrimSpace(tok), nil
}
