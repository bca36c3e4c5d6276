package xds

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

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// Type URLs of the resources istiod serves node proxies.
const (
	TypeAddress       = "type.googleapis.com/istio.workload.Address"
	TypeAuthorization = "type.googleapis.com/istio.security.Authorization"
)

// types are the subscribed types, in the order their first requests go out.
var types = []string{TypeAddress, TypeAuthorization}

// Config says how to reach istiod and who this agent is.
type Config struct {
	// Address is istiod's xDS endpoint (istiod.istio-system.svc:15012).
	Address string
	// Roots verify istiod's serving certificate (the mesh root).
	Roots *x509.CertPool
	// ServerName is the name istiod's certificate must carry; default
	// istiod.<its namespace>.svc from Address, as ztunnel does.
	ServerName string
	// TokenFile holds a service-account token with audience istio-ca,
	// re-read at each connection. Empty sends none (tests).
	TokenFile string
	// ClusterID is sent in the clusterid header and the node metadata.
	ClusterID string
	// Node identifies the agent's pod, as ztunnel's node does.
	Node Node
}

// Node is the agent's pod: istiod authorizes the stream by the token's
// namespace, which must equal PodNamespace.
type Node struct {
	PodName, PodNamespace, PodIP, NodeName string
	// ClusterDomain ends the node ID (cluster.local).
	ClusterDomain string
}

// id is the node ID ztunnel sends: ztunnel~IP~POD.NS~NS.svc.DOMAIN. istiod
// serves workload xDS to proxies of type ztunnel.
func (n Node) id() string {
	return "ztunnel~" + n.PodIP + "~" + n.PodName + "." + n.PodNamespace + "~" + n.PodNamespace + ".svc." + n.ClusterDomain
}

func (c *Config) node() *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{
		"NAME":          c.Node.PodName,
		"NAMESPACE":     c.Node.PodNamespace,
		"INSTANCE_IPS":  c.Node.PodIP,
		"NODE_NAME":     c.Node.NodeName,
		"CLUSTER_ID":    c.ClusterID,
		"ISTIO_VERSION": istioVersion,
	})
	return &corev3.Node{Id: c.Node.id(), Metadata: md}
}

// istioVersion is the Istio release whose workload API Ferry speaks; istiod
// warns about proxies that send none.
const istioVersion = "1.31.0"

func (c *Config) check() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		errs = append(errs, fmt.Errorf("xds: address %q: %w", c.Address, err))
	}
	if c.Roots == nil {
		errs = append(errs, errors.New("xds: no roots to verify istiod"))
	}
	if c.Node.PodName == "" || c.Node.PodNamespace == "" || c.Node.PodIP == "" {
		errs = append(errs, errors.New("xds: the agent's pod name, namespace and IP are needed (POD_NAME, POD_NAMESPACE, POD_IP)"))
	}
	return errors.Join(errs...)
}

func (c *Config) serverName() string {
	if c.ServerName != "" {
		return c.ServerName
	}
	host, _, _ := net.SplitHostPort(c.Address)
	// istiod.istio-system.svc.cluster.local:15012 → istiod.istio-system.svc
	if i := strings.Index(host, ".svc"); i > 0 {
		return host[:i+len(".svc")]
	}
	return host
}

// maxMessage bounds one xDS response. istiod sends every address in one
// response when a stream starts: about 90 bytes a pod, so 9 MB at 100k pods,
// past gRPC's default of 4 MiB (seen in bench/inventory). 256 MiB holds the
// largest clusters Kubernetes supports many times over.
const maxMessage = 256 << 20

// dial opens a connection to istiod; streams made on it carry the token and
// cluster ID.
func (c *Config) dial() (*grpc.ClientConn, error) {
	creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: c.Roots, ServerName: c.serverName()})
	return grpc.NewClient("passthrough:///"+c.Address, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage)),
		// A half-open connection to istiod is found in seconds, not TCP
		// keepalive's minutes (istiod accepts pings every 15 s).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}))
}

func (c *Config) streamContext(ctx context.Context) (context.Context, error) {
	md := metadata.Pairs("clusterid", c.ClusterID)
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("xds: token: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return nil, fmt.Errorf("xds: token file %s is empty", c.TokenFile)
		}
		md.Set("authorization", "Bearer "+tok)
	}
	return metadata.NewOutgoingContext(ctx, md), nil
}

// stream is one Delta ADS stream. Its receive side runs in its own
// goroutine, feeding responses to recv; the owner sends.
type stream struct {
	ads  discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	recv chan *response
	err  chan error // the receive error that ended the stream
}

func openStream(ctx context.Context, conn *grpc.ClientConn) (*stream, error) {
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx,
		grpc.ForceCodecV2(responseCodec{}))
	if err != nil {
		return nil, err
	}
	s := &stream{ads: ads, recv: make(chan *response, 16), err: make(chan error, 1)}
	go func() {
		for {
			r := &response{}
			if err := ads.RecvMsg(r); err != nil {
				s.err <- err
				return
			}
			select {
			case s.recv <- r:
			case <-ctx.Done():
				r.release()
				s.err <- ctx.Err()
				return
			}
		}
	}()
	return s, nil
}
