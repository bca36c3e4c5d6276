package istioca

import (
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestDeps(t *testing.T) {
	testutil.CheckDeps(t, "github.com/ferrymesh/ferry/certs/istioca", map[string]string{
		"github.com/ferrymesh/ferry/authz":  "the CA protocol has nothing to do with policy",
		"github.com/ferrymesh/ferry/tunnel": "the CA protocol issues certificates; it does not carry traffic",
		"github.com/ferrymesh/ferry/node":   "dependencies point from node to istioca",
		"github.com/ferrymesh/ferry/bpf":    "the CA protocol has nothing to do with the kernel",
		"github.com/cilium/ebpf":            "the CA protocol has nothing to do with the kernel",
		"github.com/vishvananda/netlink":    "the CA protocol has nothing to do with the kernel",
		"k8s.io/...":                        "callers authenticate through the Authenticator interface; node implements it with client-go",
	})
}
