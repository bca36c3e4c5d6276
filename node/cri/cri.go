package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/ferrymesh/ferry/node/cni"
)

// DefaultSocket is containerd's CRI endpoint.
const DefaultSocket = "unix:///run/containerd/containerd.sock"

// Client is a CRI runtime client.
type Client struct {
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient
}

// Dial connects to the runtime at endpoint ("unix:///path" or a path). The
// connection is made on first use.
func Dial(endpoint string) (*Client, error) {
	path := strings.TrimPrefix(endpoint, "unix://")
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("cri: %s: %w", endpoint, err)
	}
	return &Client{conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Find returns the ready sandbox of the pod namespace/name (with uid when
// not empty) as the CNI plugin would have reported it: its ID, network
// namespace and addresses. ok is false when the runtime has no such
// sandbox, or one whose network namespace it does not say (a hostNetwork
// pod).
func (c *Client) Find(ctx context.Context, namespace, name, uid string) (pod cni.Pod, ok bool, err error) {
	labels := map[string]string{"io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.name": name}
	if uid != "" {
		labels["io.kubernetes.pod.uid"] = uid
	}
	list, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: labels,
	}})
	if err != nil {
		return cni.Pod{}, false, fmt.Errorf("cri: list sandboxes of %s/%s: %w", namespace, name, err)
	}
	for _, sb := range list.Items {
		st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.Id, Verbose: true})
		if err != nil {
			return cni.Pod{}, false, fmt.Errorf("cri: sandbox %s of %s/%s: %w", sb.Id, namespace, name, err)
		}
		p, ok, err := sandboxPod(st)
		if err != nil {
			return cni.Pod{}, false, fmt.Errorf("cri: sandbox %s of %s/%s: %w", sb.Id, namespace, name, err)
		}
		if ok {
			return p, true, nil
		}
	}
	return cni.Pod{}, false, nil
}

// sandboxPod reads one sandbox's status: its network namespace from the
// verbose info's runtime spec (containerd and CRI-O both report the OCI
// spec there), its addresses from the status.
func sandboxPod(st *runtimeapi.PodSandboxStatusResponse) (cni.Pod, bool, error) {
	s := st.GetStatus()
	if s == nil || s.GetMetadata() == nil {
		return cni.Pod{}, false, errors.New("no status")
	}
	netns, err := netnsPath(st.GetInfo()["info"])
	if err != nil || netns == "" {
		return cni.Pod{}, false, err
	}
	p := cni.Pod{ContainerID: s.Id, Netns: netns, Namespace: s.Metadata.Namespace, Name: s.Metadata.Name, UID: s.Metadata.Uid}
	if n := s.GetNetwork(); n != nil {
		ips := []string{n.Ip}
		for _, a := range n.AdditionalIps {
			ips = append(ips, a.Ip)
		}
		for _, ip := range ips {
			if a, err := netip.ParseAddr(ip); err == nil {
				p.IPs = append(p.IPs, a)
			}
		}
	}
	return p, true, nil
}

// netnsPath finds the network namespace path in a sandbox's verbose info;
// "" when the spec has none (host network).
func netnsPath(info string) (string, error) {
	if info == "" {
		return "", errors.New("the runtime gave no verbose sandbox info")
	}
	var v struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string } `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(info), &v); err != nil {
		return "", fmt.Errorf("verbose sandbox info: %w", err)
	}
	for _, ns := range v.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			return ns.Path, nil
		}
	}
	return "", nil
}
