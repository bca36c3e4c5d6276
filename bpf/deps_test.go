package bpf

import (
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestDeps(t *testing.T) {
	testutil.CheckDeps(t, "github.com/ferrymesh/ferry/bpf", map[string]string{
		"github.com/ferrymesh/ferry/certs":  "bpf knows no identity",
		"github.com/ferrymesh/ferry/authz":  "bpf knows no policy; node translates decisions to map values",
		"github.com/ferrymesh/ferry/tunnel": "tunnel and bpf are peers",
		"github.com/ferrymesh/ferry/node":   "node drives bpf, not the reverse",
		"k8s.io/...":                        "only node talks to Kubernetes",
	})
}
