package node

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/node/inventory"
)

// CheckRequest is one connection to explain offline, as `ferry policy check` takes it.
type CheckRequest struct {
	From   string     // SPIFFE ID of the client, or "none" for a plaintext client
	FromIP netip.Addr // the client's address
	ToPod  string     // "namespace/name" of the destination pod, or ""
	To     netip.Addr // the destination address, when ToPod is empty
	Port   uint16
}

// CheckResult is the answer: the decision plus what it was computed from.
type CheckResult struct {
	Decision    authz.Decision     `json:"decision"`
	Explanation authz.Explanation  `json:"explanation"`
	Source      string             `json:"source"`
	SourceIP    string             `json:"sourceIP"`
	Destination string             `json:"destination"` // namespace/name
	Address     string             `json:"address"`
	Enrolled    bool               `json:"enrolled"`
	Diagnostics []authz.Diagnostic `json:"diagnostics,omitempty"`
}

// Check explains the decision the destination's agent makes for q, from the
// policies in snap, exactly as the agent computes it.
func Check(snap *inventory.Snapshot, q CheckRequest, trustDomain, rootNamespace string) (CheckResult, error) {
	var peer certs.Identity
	if q.From != "none" && q.From != "" {
		id, err := certs.ParseIdentity(q.From)
		if err != nil {
			return CheckResult{}, fmt.Errorf("--from: %w (or pass --from none for a plaintext client)", err)
		}
		peer = id
	}
	if !q.FromIP.IsValid() {
		return CheckResult{}, fmt.Errorf("--from-ip is required")
	}
	v := newView(snap, "", trustDomain, rootNamespace)
	var w *Workload
	switch {
	case q.ToPod != "":
		ns, name, ok := strings.Cut(q.ToPod, "/")
		if !ok {
			return CheckResult{}, fmt.Errorf("--to-pod %q: want NAMESPACE/NAME", q.ToPod)
		}
		for _, cand := range v.byIP.All() {
			if cand.Namespace == ns && cand.Name == name {
				w = cand
			}
		}
		if w == nil {
			return CheckResult{}, fmt.Errorf("--to-pod %s: no such pod with an IP in the manifests", q.ToPod)
		}
	case q.To.IsValid():
		var ok bool
		if w, ok = v.workload(q.To); !ok {
			return CheckResult{}, fmt.Errorf("--to %s: no pod has this IP in the manifests", q.To)
		}
	default:
		return CheckResult{}, fmt.Errorf("one of --to-pod or --to is required")
	}
	engine, diags := compilePolicies(authz.Config{RootNamespace: rootNamespace, TrustDomain: trustDomain}, snap)
	ex := engine.Explain(authzRequest(peer, netip.AddrPortFrom(q.FromIP, 0), w, q.Port, nil))
	d := ex.Decision
	src := peer.String()
	if src == "" {
		src = "none (plaintext)"
	}
	return CheckResult{
		Decision: d, Explanation: ex, Source: src, SourceIP: q.FromIP.String(), Destination: w.Namespace + "/" + w.Name,
		Address: netip.AddrPortFrom(w.IP, q.Port).String(), Enrolled: w.Enrolled, Diagnostics: diags,
	}, nil
}

// authzRequest builds the policy engine's view of a connection from src (with
// peer identity, zero for plaintext) to port on workload w: its policies
// bound by istiod as binding resolved them, or (binding nil) by name.
func authzRequest(peer certs.Identity, src netip.AddrPort, w *Workload, port uint16, binding *authz.Binding) authz.Request {
	var bound []string
	if w.Mesh != nil && binding == nil {
		bound = w.Mesh.AuthorizationPolicies.Slice()
	}
	return authz.Request{
		BoundPolicies:   bound,
		Binding:         binding,
		SourcePrincipal: peer.Principal(),
		SourceIP:        src.Addr().Unmap(),
		Namespace:       w.Namespace,
		Labels:          w.Labels,
		DestinationIP:   w.IP,
		DestinationPort: port,
	}
}

// compilePolicies compiles the snapshot's policies in the form its source
// gave them: istiod's translation (xDS mode) or the objects as written.
func compilePolicies(cfg authz.Config, snap *inventory.Snapshot) (*authz.Engine, []authz.Diagnostic) {
	if snap.TranslatedPolicies != nil {
		return authz.CompileTranslated(cfg, snap.TranslatedPolicies)
	}
	return authz.Compile(cfg, snap.AuthorizationPolicies, snap.PeerAuthentications)
}
