package kubenode

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"time"
)

// WaitKubeProxy waits, for at most a minute, until kube-proxy's nftables
// rules name every address of addrs (Service ClusterIPs, endpoint pod
// addresses): until then kube-proxy rejects connections to a Service whose
// endpoints it has not programmed.
func WaitKubeProxy(ctx context.Context, addrs ...string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var out []byte
	for {
		var err error
		out, err = exec.CommandContext(ctx, "nft", "list", "table", "ip", "kube-proxy").CombinedOutput()
		if err == nil && namesAll(out, addrs) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-proxy never programmed %v: %s", addrs, out)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// namesAll reports whether rules names each of addrs as a whole address
// (198.18.64.8 is not named by 198.18.64.80).
func namesAll(rules []byte, addrs []string) bool {
	for _, a := range addrs {
		if a == "" || !regexp.MustCompile(`\b`+regexp.QuoteMeta(a)+`\b`).Match(rules) {
			return false
		}
	}
	return true
}
