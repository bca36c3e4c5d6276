package certs

import (
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestDeps(t *testing.T) {
	testutil.CheckDeps(t, "github.com/ferrymesh/ferry/certs", map[string]string{
		"github.com/ferrymesh/ferry/authz":  "certs and authz are peers",
		"github.com/ferrymesh/ferry/tunnel": "certs hands out tls hooks; tunnel imports certs, not the reverse",
		"github.com/ferrymesh/ferry/node":   "dependencies point from node to certs",
		"github.com/ferrymesh/ferry/bpf":    "certs has nothing to do with the kernel",
		"github.com/cilium/ebpf":            "certs has nothing to do with the kernel",
		"github.com/vishvananda/netlink":    "certs has nothing to do with the kernel",
		"google.golang.org/grpc":            "the Istio CA protocol lives in certs/istioca, so that importing certs (as tunnel does) links no gRPC",
		"google.golang.org/grpc/...":        "the Istio CA protocol lives in certs/istioca, so that importing certs (as tunnel does) links no gRPC",
	})
}
