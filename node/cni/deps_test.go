package cni

import (
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestDeps(t *testing.T) {
	testutil.CheckDeps(t, "github.com/ferrymesh/ferry/node/cni", map[string]string{
		"github.com/ferrymesh/ferry/node":         "node serves the protocol with its hooks; the reverse is a cycle",
		"github.com/ferrymesh/ferry/bpf":          "capture is the agent's hooks' work; the protocol only carries pods",
		"github.com/cilium/ebpf/...":              "capture is the agent's hooks' work; the protocol only carries pods",
		"github.com/vishvananda/netlink/...":      "capture is the agent's hooks' work; the protocol only carries pods",
		"k8s.io/client-go/...":                    "the plugin learns the pod from CNI_ARGS, not from the API server",
		"github.com/prometheus/client_golang/...": "the agent counts outcomes through Server.Observe",
		"testing": "test helpers must not reach the ferry binary",
	})
}
