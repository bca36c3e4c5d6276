package cni

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// DefaultSocket is where the agent listens and the plugin dials unless told
// otherwise.
const DefaultSocket = "/var/run/ferry/cni.sock"

// DefaultTimeout bounds how long the plugin waits for the agent's answer to
// one ADD, DEL or CHECK unless the network configuration says otherwise.
const DefaultTimeout = 30 * time.Second

// PluginType is the plugin's name: its "type" in the CNI configuration and
// the name of its binary in the CNI binary directory.
const PluginType = "ferry-cni"

// Protocol paths, all under a version prefix.
const (
	pathAdd    = "/v1/pods/add"
	pathDel    = "/v1/pods/del"
	pathHealth = "/v1/health"
)

// maxBody bounds a request or answer body; one Pod is a few hundred bytes.
const maxBody = 64 << 10

// Pod is one pod sandbox as the container runtime reports it to the plugin.
type Pod struct {
	// ContainerID is the sandbox's ID (CNI_CONTAINERID), which is also
	// K8S_POD_INFRA_CONTAINER_ID. It names one incarnation of the pod: a
	// restarted sandbox has a new one.
	ContainerID string `json:"containerID"`
	// Netns is the path of the sandbox's network namespace (CNI_NETNS), such
	// as /var/run/netns/cni-1234. Open it to enter the namespace. It may be
	// empty or gone on delete.
	Netns string `json:"netns"`
	// Namespace, Name and UID identify the Kubernetes pod (K8S_POD_NAMESPACE,
	// K8S_POD_NAME, K8S_POD_UID). UID may be empty on older runtimes.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
	// IPs are the pod's addresses from the network plugin's result (the
	// prevResult), those on interfaces inside the sandbox. Empty on delete.
	IPs []netip.Addr `json:"ips,omitempty"`
}

// String names the pod for messages: namespace/name.
func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// validate checks the fields every request needs; add also needs Netns.
func (p Pod) validate(add bool) error {
	switch {
	case p.ContainerID == "":
		return errors.New("cni: pod has no containerID")
	case p.Namespace == "" || p.Name == "":
		return errors.New("cni: pod has no namespace or name")
	case add && p.Netns == "":
		return fmt.Errorf("cni: pod %s has no netns", p)
	}
	return nil
}

// Hooks is what the agent does when the runtime adds or deletes a pod. The
// Server calls them concurrently, one goroutine per request.
type Hooks interface {
	// AddPod is called for every Kubernetes pod outside the plugin's excluded
	// namespaces, after the network plugin has set the pod up and before
	// any of its containers start. It must return only once the pod is
	// captured (or known not to need capture): the runtime starts the pod's
	// containers as soon as it returns nil. An error fails the pod's sandbox,
	// and the runtime retries it later; the error's text reaches the pod's
	// events. AddPod may be called again for a pod it has already seen
	// (a retried sandbox) and must then succeed without duplicating anything.
	// ctx is cancelled when the plugin gives up or the server shuts down.
	AddPod(ctx context.Context, p Pod) error
	// DelPod is called when the runtime tears the sandbox down. Its Netns
	// may be empty or already gone, and the pod may be unknown. It is
	// advisory: the plugin ignores its error (a CNI DEL must not fail), and
	// is not called at all while the agent is down, so the agent must also
	// clean up pods that vanish without one.
	DelPod(ctx context.Context, p Pod) error
}

// errorBody is the JSON body of a failure answer.
type errorBody struct {
	Error string `json:"error"`
}
