package kubenode

import (
	"fmt"
	"strings"
)

// DeployOverlay applies to one of deploy/'s manifests (name as in
// deploy.Files) the overlay a node of this package needs, as text edits of
// what a kustomize overlay would change: the image tag (`kustomize edit
// set image`), and the agent's bpffs hostPath moved to bpffs, the node's
// own (the host's /sys/fs/bpf is private here and the node must not
// remount it; on a real node systemd mounts it shared). Nothing else.
func DeployOverlay(name string, b []byte, tag, bpffs string) ([]byte, error) {
	s := string(b)
	const image = "image: ghcr.io/ferrymesh/ferry:dev"
	if name == "base/agent.yaml" || name == "base/ca.yaml" {
		if strings.Count(s, image) != 1 {
			return nil, fmt.Errorf("kubenode: overlay: %s has %d × %q, want 1", name, strings.Count(s, image), image)
		}
		s = strings.Replace(s, image, "image: ghcr.io/ferrymesh/ferry:"+tag, 1)
	}
	if name == "base/agent.yaml" {
		const hostPath = "hostPath:\n          path: /sys/fs/bpf\n"
		if strings.Count(s, hostPath) != 1 {
			return nil, fmt.Errorf("kubenode: overlay: %s: bpffs hostPath not found", name)
		}
		s = strings.Replace(s, hostPath, "hostPath:\n          path: "+bpffs+"\n", 1)
	}
	return []byte(s), nil
}
