//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"os"
)

// acceptLocal is the pod namespace's sysctl ApplyPod sets and CleanupPod
// resets. With a capture rule in place the kernel validates an inbound
// packet's source by looking it up as TCP, finds it routed locally, and
// drops the packet as a martian unless the namespace accepts local sources.
// It is the pod's own namespace: the node's setting is untouched.
const acceptLocal = "/proc/sys/net/ipv4/conf/all/accept_local"

// ApplyPod converges the calling thread's network namespace, an enrolled
// pod's, to p (from NewPodPlan): Apply, and accept_local on.
func ApplyPod(p Plan) error {
	if err := os.WriteFile(acceptLocal, []byte("1"), 0); err != nil {
		return fmt.Errorf("redirect: apply pod: %w", err)
	}
	return Apply(p)
}

// CleanupPod removes Ferry's rules and routes from the calling thread's
// network namespace, a pod's, and turns accept_local off again.
func CleanupPod() error {
	err := Cleanup()
	if werr := os.WriteFile(acceptLocal, []byte("0"), 0); werr != nil {
		err = errors.Join(err, fmt.Errorf("redirect: cleanup pod: %w", werr))
	}
	return err
}
