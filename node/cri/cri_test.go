package cri

import (
	"net/netip"
	"os"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestSandboxPod reads a sandbox status as containerd 1.6 answers it
// (testdata: the verbose info of a bridge-CNI pod, trimmed).
func TestSandboxPod(t *testing.T) {
	info, err := os.ReadFile("testdata/containerd-sandbox-info.json")
	if err != nil {
		t.Fatal(err)
	}
	st := &runtimeapi.PodSandboxStatusResponse{
		Status: &runtimeapi.PodSandboxStatus{
			Id:       "a1b2",
			Metadata: &runtimeapi.PodSandboxMetadata{Name: "app", Namespace: "mesh", Uid: "u-1"},
			Network:  &runtimeapi.PodSandboxNetworkStatus{Ip: "198.18.1.5", AdditionalIps: []*runtimeapi.PodIP{{Ip: "2001:db8::5"}}},
		},
		Info: map[string]string{"info": string(info)},
	}
	p, ok, err := sandboxPod(st)
	if err != nil || !ok {
		t.Fatalf("sandboxPod: %v %v", ok, err)
	}
	if p.Netns != "/var/run/netns/cni-6f0f3f49-3d1c-7a0c-3c0f-4b5c2f0a9e11" || p.ContainerID != "a1b2" || p.Namespace != "mesh" || p.Name != "app" || p.UID != "u-1" {
		t.Errorf("got %+v", p)
	}
	want := []netip.Addr{netip.MustParseAddr("198.18.1.5"), netip.MustParseAddr("2001:db8::5")}
	if len(p.IPs) != 2 || p.IPs[0] != want[0] || p.IPs[1] != want[1] {
		t.Errorf("IPs %v, want %v", p.IPs, want)
	}

	// A hostNetwork sandbox has no network namespace in its spec.
	st.Info["info"] = `{"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"}]}}}`
	if _, ok, err := sandboxPod(st); ok || err != nil {
		t.Errorf("host-network sandbox: ok %v err %v, want not found", ok, err)
	}
	st.Info = nil
	if _, _, err := sandboxPod(st); err == nil {
		t.Error("no verbose info: want an error")
	}
}
