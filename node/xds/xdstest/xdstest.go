package xdstest

import (
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/node/xds"
)

// Watch runs an xds.Source against istiod as the agent of node: its own pod
// (istio-system/ferry-<node>, service account ferry, at agentIP) and a token
// bound to it, no local pods. It returns every snapshot published, until
// the test ends; log, when not nil, receives the Source's log.
func Watch(t testing.TB, kc *kubetest.Cluster, istiod *kubetest.Istiod, node, agentIP string, log *slog.Logger) <-chan *inventory.Snapshot {
	t.Helper()
	agent := kc.CreatePod(t, kubetest.Pod{Namespace: "istio-system", Name: "ferry-" + node, ServiceAccount: "ferry", Node: node,
		IP: agentIP, HostNetwork: true})
	tokenFile := filepath.Join(t.TempDir(), "token")
	tok := kc.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: agent})
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(istiod.Root)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	src := &xds.Source{
		Config: xds.Config{Address: istiod.XDSAddr, Roots: roots, TokenFile: tokenFile, ClusterID: "Kubernetes",
			Node: xds.Node{PodName: agent.Name, PodNamespace: "istio-system", PodIP: agentIP, NodeName: node, ClusterDomain: "cluster.local"}},
		Local: noLocalPods{},
		Log:   log,
	}
	snaps := make(chan *inventory.Snapshot, 1024)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(s *inventory.Snapshot) { snaps <- s }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("xds.Source.Run: %v", err)
		}
	})
	return snaps
}

// noLocalPods is a local source that publishes one empty snapshot.
type noLocalPods struct{}

func (noLocalPods) Run(ctx context.Context, publish func(*inventory.Snapshot)) error {
	publish(&inventory.Snapshot{Namespaces: map[string]inventory.Namespace{}})
	<-ctx.Done()
	return nil
}
