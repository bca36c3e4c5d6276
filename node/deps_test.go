package node

import (
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestDeps(t *testing.T) {
	testutil.CheckDeps(t, "github.com/ferrymesh/ferry/node", map[string]string{
		"github.com/ferrymesh/ferry/cmd/...": "cmd wires node, not the reverse",
		"testing":                            "test helpers must not reach the agent binary",
	})
}
