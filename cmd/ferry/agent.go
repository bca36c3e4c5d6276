package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/istioca"
	"github.com/ferrymesh/ferry/node"
	"github.com/ferrymesh/ferry/node/kube"
)

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("agent", stderr)
	var cfg node.Config
	cfg.RegisterFlags(fs)
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error (change at runtime with `ferry log`)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	if err := parse(fs, args); err != nil {
		return err
	}
	if cfg.NodeName == "" {
		cfg.NodeName = os.Getenv("NODE_NAME")
	}
	var level slog.LevelVar
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	opts := &slog.HandlerOptions{Level: &level}
	var h slog.Handler
	switch *logFormat {
	case "text":
		h = slog.NewTextHandler(stderr, opts)
	case "json":
		h = slog.NewJSONHandler(stderr, opts)
	default:
		return fmt.Errorf("--log-format %q: want text or json", *logFormat)
	}
	log := slog.New(h)
	deps := node.Deps{Log: log, Level: &level, Version: version}
	if cfg.Kube {
		if err := kubeDeps(ctx, cfg, &deps, log); err != nil {
			return err
		}
	}
	a, err := node.New(cfg, deps)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

func runCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "serve" {
		return runCAServe(ctx, args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "init" {
		fmt.Fprintln(stderr, "usage: ferry ca init --out DIR\n       ferry ca serve --ca-cert F --ca-key F [flags]")
		return errUsage
	}
	fs := newFlagSet("ca init", stderr)
	out := fs.String("out", "", "directory for root-cert.pem and root-key.pem (key written 0600; existing files are never overwritten)")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("ca init: --out DIR is required")
	}
	if err := certs.InitCA(*out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s/root-cert.pem and %s/root-key.pem\n", *out, *out)
	return nil
}

// runCAServe serves Istio's CA protocol for the cluster, authenticating
// callers with Kubernetes TokenReviews.
func runCAServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ca serve", stderr)
	listen := fs.String("listen", ":15012", "gRPC (TLS) listen address")
	caCert := fs.String("ca-cert", "", "signing certificate PEM (a root, or an intermediate followed by its chain)")
	caKey := fs.String("ca-key", "", "signing key PEM")
	trustDomain := fs.String("trust-domain", certs.DefaultTrustDomain, "the mesh's trust domain")
	agents := fs.String("node-agents", "istio-system/ferry", "comma-separated NAMESPACE/SERVICEACCOUNT of node agents allowed to request other service accounts' certificates")
	names := fs.String("server-names", "ferry-ca.istio-system.svc", "comma-separated DNS names and IPs of the CA's own serving certificate")
	maxTTL := fs.Duration("max-ttl", certs.DefaultCertTTL, "longest certificate lifetime granted")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: in-cluster service account)")
	metricsAddr := fs.String("metrics-addr", "", "Prometheus metrics endpoint (/metrics), e.g. :15014 as istiod's; empty for none")
	peerRate := fs.Float64("peer-rate", istioca.DefaultPeerRate, "requests a second each source address may make on average (more are refused with ResourceExhausted)")
	peerBurst := fs.Int("peer-burst", istioca.DefaultPeerBurst, "requests each source address may make at once")
	reviewTTL := fs.Duration("review-cache-ttl", kube.DefaultReviewSuccessTTL, "how long an accepted token's TokenReview is reused (never past the token's expiry)")
	failTTL := fs.Duration("review-failure-ttl", kube.DefaultReviewFailureTTL, "how long a refused token's TokenReview is reused")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *caCert == "" || *caKey == "" {
		return fmt.Errorf("ca serve: --ca-cert and --ca-key are required")
	}
	ca, err := certs.LoadLocalCA(*caCert, *caKey, certs.WithMaxTTL(*maxTTL))
	if err != nil {
		return err
	}
	var nodeAgents []certs.Identity
	for _, a := range strings.Split(*agents, ",") {
		ns, sa, ok := strings.Cut(strings.TrimSpace(a), "/")
		if !ok {
			return fmt.Errorf("ca serve: --node-agents %q: want NAMESPACE/SERVICEACCOUNT", a)
		}
		nodeAgents = append(nodeAgents, certs.Identity{TrustDomain: *trustDomain, Namespace: ns, ServiceAccount: sa})
	}
	client, _, err := kubeClients(*kubeconfig)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	reg := prometheus.NewRegistry()
	metrics := kube.NewCAMetrics(reg)
	auth, err := kube.NewTokenReviewAuthenticator(client, kube.TokenReviewConfig{
		Audiences: []string{"istio-ca"}, SuccessTTL: *reviewTTL, FailureTTL: *failTTL, Metrics: metrics,
	})
	if err != nil {
		return fmt.Errorf("ca serve: %w", err)
	}
	srv, err := istioca.NewServer(istioca.ServerConfig{
		TrustDomain: *trustDomain, NodeAgents: nodeAgents, MaxTTL: *maxTTL, ServerNames: strings.Split(*names, ","),
		PeerRate: *peerRate, PeerBurst: *peerBurst,
		Refused: func(reason string) { metrics.Refused.WithLabelValues(reason).Inc() },
	}, ca, auth, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("ca serve: %w", err)
	}
	g, gctx := errgroup.WithContext(ctx)
	if *metricsAddr != "" {
		mln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("ca serve: metrics: %w", err)
		}
		g.Go(func() error {
			defer mln.Close()
			return node.ServeMetrics(gctx, mln, reg)
		})
	}
	log.Info("CA serving", "addr", ln.Addr(), "trustDomain", *trustDomain, "metrics", *metricsAddr)
	g.Go(func() error { return srv.Serve(gctx, ln) })
	return g.Wait()
}
