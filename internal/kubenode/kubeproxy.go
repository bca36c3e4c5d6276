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
	// Each address as a whole word: 198.18.64.8 is not named by 198.18.64.80.
	words := make([]*regexp.Regexp, len(addrs))
	for i, a := range addrs {
		if a == "" {
			return fmt.Errorf("kube-proxy: no address to wait for in %q", addrs)
		}
		words[i] = regexp.MustCompile(`\b` + regexp.QuoteMeta(a) + `\b`)
	}
	var out []byte
	for {
		var err error
		out, err = exec.CommandContext(ctx, "nft", "list", "table", "ip", "kube-proxy").CombinedOutput()
		if err == nil && namesAll(out, words) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-proxy never programmed %v: %s", addrs, out)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// namesAll reports whether rules match every one of words.
func namesAll(rules []byte, words []*regexp.Regexp) bool {
	for _, w := range words {
		if !w.Match(rules) {
			return false
		}
	}
	return true
}
