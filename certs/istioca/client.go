package istioca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/ferrymesh/ferry/certs"
)

// Names of Istio's CA protocol.
const (
	// ImpersonatedIdentityKey is the request metadata field naming the
	// identity a node agent asks a certificate for.
	ImpersonatedIdentityKey = "ImpersonatedIdentity"
	// ClusterIDHeader is the gRPC metadata key carrying the caller's cluster.
	ClusterIDHeader = "clusterid"
	// DefaultClusterID is the cluster ID Istio and ztunnel use by default.
	DefaultClusterID = "Kubernetes"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// Address is the CA's host:port, for example
	// istiod.istio-system.svc:15012. Required.
	Address string
	// Roots verify the CA's serving certificate. Required.
	Roots *x509.CertPool
	// ServerName is the name the CA's certificate must carry (default: the
	// host part of Address).
	ServerName string
	// TokenFile holds the bearer token (a projected service-account token
	// with audience istio-ca). It is read again for every request, so the
	// kubelet can rotate it. Empty means no token is sent.
	TokenFile string
	// ClusterID is sent in the clusterid header (default DefaultClusterID).
	ClusterID string
}

// Client is a certs.Issuer that speaks Istio's CA protocol
// (istio.v1.auth.IstioCertificateService/CreateCertificate) to istiod or
// `ferry ca`, as a node agent: it asks for other workloads' certificates
// with the ImpersonatedIdentity metadata field. It is safe for concurrent
// use.
type Client struct {
	cfg  ClientConfig
	conn *grpc.ClientConn
	rpc  pb.IstioCertificateServiceClient
}

var _ certs.Issuer = (*Client)(nil)

// NewClient checks cfg and returns a client. No connection is made until
// the first Issue. Call Close to release it.
func NewClient(cfg ClientConfig) (*Client, error) {
	host, _, err := net.SplitHostPort(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("istioca: CA address %q: %w", cfg.Address, err)
	}
	if cfg.Roots == nil {
		return nil, errors.New("istioca: client: no roots to verify the CA")
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if cfg.ClusterID == "" {
		cfg.ClusterID = DefaultClusterID
	}
	creds := credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    cfg.Roots,
		ServerName: cfg.ServerName,
	})
	conn, err := grpc.NewClient("passthrough:///"+cfg.Address, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("istioca: client: %w", err)
	}
	return &Client{cfg: cfg, conn: conn, rpc: pb.NewIstioCertificateServiceClient(conn)}, nil
}

// Close closes the connection to the CA.
func (c *Client) Close() error { return c.conn.Close() }

// Issue implements certs.Issuer. It checks that the returned leaf carries
// exactly id, as ztunnel does, and returns the chain leaf first, root last.
func (c *Client) Issue(ctx context.Context, id certs.Identity, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	md := metadata.Pairs(ClusterIDHeader, c.cfg.ClusterID)
	if c.cfg.TokenFile != "" {
		b, err := os.ReadFile(c.cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("istioca: token: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return nil, fmt.Errorf("istioca: token file %s is empty", c.cfg.TokenFile)
		}
		md.Set("authorization", "Bearer "+tok)
	}
	req := &pb.IstioCertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64(ttl / time.Second),
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			ImpersonatedIdentityKey: structpb.NewStringValue(id.String()),
		}},
	}
	resp, err := c.rpc.CreateCertificate(metadata.NewOutgoingContext(ctx, md), req)
	if err != nil {
		return nil, fmt.Errorf("istioca: CA %s: %w", c.cfg.Address, err)
	}
	chain, err := parseChain(resp.GetCertChain())
	if err != nil {
		return nil, fmt.Errorf("istioca: CA %s: response: %w", c.cfg.Address, err)
	}
	got, err := certs.LeafIdentity(chain[0])
	if err != nil {
		return nil, fmt.Errorf("istioca: CA %s: issued certificate: %w", c.cfg.Address, err)
	}
	if got != id {
		return nil, fmt.Errorf("istioca: CA %s: issued certificate is for %s, want %s", c.cfg.Address, got, id)
	}
	return chain, nil
}

// parseChain parses the PEM certificates of a CreateCertificate response, in
// order; an element may hold several, and must hold one.
func parseChain(elems []string) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for i, e := range elems {
		parsed, err := certs.ParseCertificatesPEM([]byte(e))
		if err != nil {
			return nil, fmt.Errorf("element %d: %w", i, err)
		}
		if len(parsed) == 0 {
			return nil, fmt.Errorf("element %d: no PEM certificate", i)
		}
		chain = append(chain, parsed...)
	}
	if len(chain) == 0 {
		return nil, errors.New("empty certificate chain")
	}
	return chain, nil
}
