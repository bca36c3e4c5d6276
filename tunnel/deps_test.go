package tunnel

import (
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestDeps(t *testing.T) {
	testutil.CheckDeps(t, "github.com/ferrymesh/ferry/tunnel", map[string]string{
		"github.com/ferrymesh/ferry/node": "node wires the tunnel, not the reverse",
		"github.com/ferrymesh/ferry/bpf":  "tunnel and bpf are peers; node joins them",
		"github.com/cilium/ebpf":          "the tunnel is user space only",
		"github.com/vishvananda/netlink":  "only node touches netlink",
		"k8s.io/...":                      "only node talks to Kubernetes",
		"google.golang.org/grpc":          "the tunnel speaks HTTP/2 CONNECT; only the CA client (certs/istioca, wired by node) speaks gRPC",
		"google.golang.org/grpc/...":      "the tunnel speaks HTTP/2 CONNECT; only the CA client (certs/istioca, wired by node) speaks gRPC",
	})
}
