// Package kube connects the agent and the CA to the Kubernetes API.
//
//   - Source is an inventory.Source backed by informers on Pods, Namespaces
//     and Istio's security.istio.io/v1 AuthorizationPolicy and
//     PeerAuthentication: the same Snapshot the local manifests file yields.
//     Pods are kept stripped to the fields Ferry uses, so a 100k-pod cluster
//     costs tens of megabytes, not gigabytes (every pod cluster-wide is needed:
//     outbound connections are routed by the destination pod's node and
//     checked against its service account).
//   - Annotator writes ambient.istio.io/redirection on a pod's status once the
//     agent captures it, and removes it on unenrolment, as istio-cni does;
//     istiod and other ztunnels only send HBONE to annotated pods.
//   - TokenReviewAuthenticator answers the two questions `ferry ca` asks the
//     API server (it implements istioca.Authenticator): who presented this
//     token (service account, and node for pod-bound tokens), and
//     does a service account have a pod on a given node. It caches reviews
//     briefly by token hash and coalesces concurrent ones, so that pods
//     calling the CA cannot turn it into load on the API server.
//
// The RBAC each needs is in deploy/base: list/watch on pods, namespaces and
// the two policies, patch on pods/status for the agent; create tokenreviews
// and get/list pods for the CA.
package kube
