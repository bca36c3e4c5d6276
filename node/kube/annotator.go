package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ferrymesh/ferry/node/inventory"
)

// Annotator records on pods whether the agent captures them: the annotation
// ambient.istio.io/redirection=enabled, which istiod reads to tell peers to
// send the pod HBONE. Like istio-cni, it writes through the pods/status
// subresource (a JSON merge patch), the one write the agent's RBAC allows.
// It is safe for concurrent use.
type Annotator struct {
	client Client
	log    *slog.Logger
}

// NewAnnotator returns an Annotator writing through client.
func NewAnnotator(client Client, log *slog.Logger) *Annotator {
	return &Annotator{client: client, log: log}
}

// SetRedirection sets (enabled) or removes (!enabled) the redirection
// annotation on pod, identified by namespace, name and, when pod.UID is set,
// UID: a patch never lands on a newer pod that reuses the name (the API
// server refuses it, since the UID is immutable). Removing the annotation
// from a pod that no longer exists, or that was replaced by one with the same
// name, succeeds: that pod is not annotated. Setting it on such a pod fails.
// Both directions are idempotent.
//
// Enrol: capture first, then SetRedirection(true). Unenrol: release first,
// then SetRedirection(false), so peers switch to plaintext only once the pod
// accepts it.
func (a *Annotator) SetRedirection(ctx context.Context, pod inventory.Pod, enabled bool) error {
	var value any // JSON null removes the key in a merge patch
	if enabled {
		value = RedirectionEnabled
	}
	meta := map[string]any{"annotations": map[string]any{RedirectionAnnotation: value}}
	if pod.UID != "" {
		meta["uid"] = pod.UID
	}
	patch, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return fmt.Errorf("kube: annotate pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	_, err = a.client.Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "ferry-agent"}, "status")
	if err != nil {
		if !enabled && (apierrors.IsNotFound(err) || uidMismatch(err)) {
			return nil
		}
		return fmt.Errorf("kube: annotate pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	a.log.Debug("pod annotated", "pod", pod.Namespace+"/"+pod.Name, RedirectionAnnotation, value)
	return nil
}

// uidMismatch reports whether err is the API server refusing a patch because
// its metadata.uid differs from the object's.
func uidMismatch(err error) bool {
	if !apierrors.IsInvalid(err) {
		return false
	}
	var status apierrors.APIStatus
	if !errors.As(err, &status) || status.Status().Details == nil {
		return false
	}
	for _, c := range status.Status().Details.Causes {
		if c.Field == "metadata.uid" {
			return true
		}
	}
	return false
}
