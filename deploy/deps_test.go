package deploy

import (
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestDeps keeps the manifests package free of Ferry's code: it only embeds
// files.
func TestDeps(t *testing.T) {
	testutil.CheckDeps(t, "github.com/ferrymesh/ferry/deploy", map[string]string{
		"github.com/ferrymesh/ferry/node/...":   "deploy only embeds manifests",
		"github.com/ferrymesh/ferry/cmd/...":    "deploy only embeds manifests",
		"github.com/ferrymesh/ferry/tunnel/...": "deploy only embeds manifests",
		"github.com/ferrymesh/ferry/certs/...":  "deploy only embeds manifests",
		"github.com/ferrymesh/ferry/authz/...":  "deploy only embeds manifests",
		"github.com/ferrymesh/ferry/bpf/...":    "deploy only embeds manifests",
		"k8s.io/...":                            "deploy only embeds manifests",
	})
}
