package authz

import (
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestDeps(t *testing.T) {
	testutil.CheckDeps(t, "github.com/ferrymesh/ferry/authz", map[string]string{
		"os":                                "authz is pure: no I/O",
		"net":                               "authz is pure: use net/netip, never sockets",
		"log/slog":                          "authz does not log; it returns Decision.Reason",
		"github.com/ferrymesh/ferry/certs":  "authz and certs are peers",
		"github.com/ferrymesh/ferry/tunnel": "dependencies point toward authz, not from it",
		"github.com/ferrymesh/ferry/node":   "dependencies point toward authz, not from it",
		"github.com/ferrymesh/ferry/bpf":    "dependencies point toward authz, not from it",
		"k8s.io/...":                        "convert Kubernetes objects in node, not in authz",
	})
}
