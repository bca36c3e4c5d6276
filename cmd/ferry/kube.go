package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/node"
	"github.com/ferrymesh/ferry/node/kube"
	"github.com/ferrymesh/ferry/node/xds"
)

// kubeClients builds the API clients from a kubeconfig file, or in-cluster
// configuration when path is empty.
func kubeClients(path string) (*kube.API, dynamic.Interface, error) {
	var cfg *rest.Config
	var err error
	if path == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "ferry/" + version
	client, err := kube.NewAPI(cfg)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	return client, dyn, nil
}

// kubeDeps fills deps with the Kubernetes inventory source and annotator
// and, in a pod (POD_NAME and POD_NAMESPACE set, as deploy/ sets them),
// the watch that tells an uninstall from a restart.
func kubeDeps(ctx context.Context, cfg node.Config, deps *node.Deps, log *slog.Logger) error {
	client, dyn, err := kubeClients(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	kubeLog := log.With("component", "kube")
	source := kube.NewSource(client, dyn, kubeLog)
	deps.Source = source
	if cfg.XDSAddr != "" {
		src, err := xdsSource(cfg, log.With("component", "xds"))
		if err != nil {
			return err
		}
		source.NodeOnly = cfg.NodeName
		src.Local = source
		deps.Source = src
	}
	log = kubeLog
	deps.Annotator = kube.NewAnnotator(client, log)
	if pod, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE"); pod != "" && ns != "" {
		// The watch must outlive SIGTERM: the agent asks after draining.
		deps.Uninstalling = kube.WatchUninstall(context.WithoutCancel(ctx), client, ns, pod, log).Uninstalling
	}
	return nil
}

// xdsSource builds the istiod source from cfg and the pod's environment
// (deploy/ sets POD_NAME, POD_NAMESPACE and POD_IP from the downward API).
func xdsSource(cfg node.Config, log *slog.Logger) (*xds.Source, error) {
	roots, err := certs.LoadRoots(cfg.CARoot)
	if err != nil {
		return nil, fmt.Errorf("--ca-root: %w", err)
	}
	return &xds.Source{
		Config: xds.Config{
			Address:   cfg.XDSAddr,
			Roots:     roots,
			TokenFile: cfg.CATokenFile,
			ClusterID: cfg.ClusterID,
			Node: xds.Node{PodName: os.Getenv("POD_NAME"), PodNamespace: os.Getenv("POD_NAMESPACE"),
				PodIP: os.Getenv("POD_IP"), NodeName: cfg.NodeName, ClusterDomain: cfg.ClusterDomain},
		},
		Log: log,
	}, nil
}
