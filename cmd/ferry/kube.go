package main

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ferrymesh/ferry/node"
	"github.com/ferrymesh/ferry/node/kube"
)

// kubeClients builds the API clients from a kubeconfig file, or in-cluster
// configuration when path is empty.
func kubeClients(path string) (kubernetes.Interface, dynamic.Interface, error) {
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
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	return client, dyn, nil
}

// kubeDeps fills deps with the Kubernetes inventory source and annotator.
func kubeDeps(cfg node.Config, deps *node.Deps, log *slog.Logger) error {
	client, dyn, err := kubeClients(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	deps.Source = kube.NewSource(client, dyn, log.With("component", "kube"))
	deps.Annotator = kube.NewAnnotator(client, log.With("component", "kube"))
	return nil
}
