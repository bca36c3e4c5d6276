package authz

import (
	"cmp"
	"slices"
	"strconv"
	"time"
)

// mtlsMode is a PeerAuthentication mTLS mode.
type mtlsMode uint8

const (
	modeUnset mtlsMode = iota
	modeDisable
	modePermissive
	modeStrict
)

func (m mtlsMode) String() string {
	return [...]string{"UNSET", "DISABLE", "PERMISSIVE", "STRICT"}[m]
}

func parseMode(s string) (mtlsMode, bool) {
	switch s {
	case "", "UNSET":
		return modeUnset, true
	case "DISABLE":
		return modeDisable, true
	case "PERMISSIVE":
		return modePermissive, true
	case "STRICT":
		return modeStrict, true
	}
	return 0, false
}

// Levels of a PeerAuthentication; a more specific level overrides.
const (
	levelMesh = iota
	levelNamespace
	levelWorkload
)

// peerAuth is a compiled PeerAuthentication.
type peerAuth struct {
	ord      int32 // rank by (creationTimestamp, namespace, name): the oldest wins ties
	key      string
	ns, name string
	created  time.Time
	level    int
	rootOnly bool // root namespace with an empty selector: mesh level for root-namespace workloads only
	selector []labelKV
	mode     mtlsMode
	ports    map[uint16]mtlsMode // non-UNSET portLevelMtls entries (workload level only)
	// allWorkloads: a workload-level policy whose selector is unreadable,
	// read as selecting every workload of its namespace.
	allWorkloads bool

	strictReason string
	portReasons  map[uint16]string // for STRICT ports
}

func compilePeerAuthentication(cfg Config, pa *PeerAuthentication, d *diags) *peerAuth {
	ns, ok := metadata(&pa.Metadata, d)
	if !ok {
		d.effect("the object is ignored: without a name it cannot be identified")
		return nil
	}
	d.problems(pa.Problems)
	spec := &pa.Spec
	checkSelector(spec.Selector, d)
	mode := modeUnset
	if spec.MTLS != nil {
		m, ok := parseMode(spec.MTLS.Mode)
		if !ok {
			d.errorf("mtls.mode", "unknown mode %q (want UNSET, DISABLE, PERMISSIVE or STRICT)", spec.MTLS.Mode)
		}
		mode = m
	}
	emptySelector := spec.Selector == nil || len(spec.Selector.MatchLabels) == 0
	if spec.PortLevelMTLS != nil && len(spec.PortLevelMTLS) == 0 {
		d.errorf("portLevelMtls", "must have at least one entry when set")
	}
	if emptySelector && len(spec.PortLevelMTLS) > 0 {
		d.errorf("portLevelMtls", "mesh and namespace PeerAuthentications cannot have port-level mTLS (it needs a selector)")
	}
	ports := map[uint16]mtlsMode{}
	portKeys := make([]string, 0, len(spec.PortLevelMTLS))
	for k := range spec.PortLevelMTLS {
		portKeys = append(portKeys, k)
	}
	slices.Sort(portKeys)
	disabled := mode == modeDisable
	for _, k := range portKeys {
		f := "portLevelMtls[" + k + "]"
		p, err := strconv.ParseUint(k, 10, 16)
		if err != nil || p == 0 {
			d.errorf(f, "invalid port %q (want 1..65535)", k)
			continue
		}
		m, ok := parseMode(spec.PortLevelMTLS[k].Mode)
		if !ok {
			d.errorf(f+".mode", "unknown mode %q (want UNSET, DISABLE, PERMISSIVE or STRICT)", spec.PortLevelMTLS[k].Mode)
			continue
		}
		disabled = disabled || m == modeDisable
		if m != modeUnset {
			ports[uint16(p)] = m
		}
	}
	if d.errs > 0 {
		return failClosedPeerAuth(cfg, pa, ns, emptySelector, d)
	}
	if ns == cfg.RootNamespace && !emptySelector {
		d.warnf("selector", "a PeerAuthentication with a selector in the root namespace is ignored (as in Istio)")
		return nil
	}
	if disabled {
		d.warnf("mtls", "DISABLE is not supported in ambient mode: treated as PERMISSIVE")
	}
	p := &peerAuth{
		key:     ns + "/" + pa.Metadata.Name,
		ns:      ns,
		name:    pa.Metadata.Name,
		created: pa.Metadata.CreationTimestamp,
		mode:    mode,
	}
	switch {
	case ns == cfg.RootNamespace:
		p.level = levelMesh
		p.rootOnly = spec.Selector != nil
	case emptySelector:
		p.level = levelNamespace
	default:
		p.level = levelWorkload
		p.selector = selectorPairs(spec.Selector.MatchLabels)
		p.ports = ports
	}
	p.strictReason = sprintf("denied by PeerAuthentication %s: mTLS mode STRICT requires a peer identity and this connection has none (plaintext)", p.key)
	for port, m := range p.ports {
		if m == modeStrict {
			if p.portReasons == nil {
				p.portReasons = map[uint16]string{}
			}
			p.portReasons[port] = sprintf("denied by PeerAuthentication %s: portLevelMtls[%d] is STRICT, which requires a peer identity, and this connection has none (plaintext)", p.key, port)
		}
	}
	return p
}

// failClosedPeerAuth reads a PeerAuthentication with errors as STRICT for its
// scope, port level included. An unreadable selector selects every workload
// of the namespace (of the mesh, in the root namespace).
func failClosedPeerAuth(cfg Config, pa *PeerAuthentication, ns string, emptySelector bool, d *diags) *peerAuth {
	f := classify(d.errFields)
	p := &peerAuth{key: ns + "/" + pa.Metadata.Name, ns: ns, name: pa.Metadata.Name, created: pa.Metadata.CreationTimestamp}
	scope := "for its scope"
	switch {
	case ns == cfg.RootNamespace && f.selector:
		p.level = levelMesh
		scope = "for the whole mesh (its selector is unreadable)"
	case ns == cfg.RootNamespace && !emptySelector:
		d.effect("ignored: a PeerAuthentication with a selector in the root namespace never applies (as in Istio)")
		return nil
	case ns == cfg.RootNamespace:
		p.level = levelMesh
		p.rootOnly = pa.Spec.Selector != nil
	case f.selector:
		p.level = levelWorkload
		p.allWorkloads = true
		scope = "for every workload in namespace " + ns + " (its selector is unreadable)"
	case emptySelector:
		p.level = levelNamespace
	default:
		p.level = levelWorkload
		p.selector = selectorPairs(pa.Spec.Selector.MatchLabels)
	}
	d.effect("enforced as STRICT " + scope + ", on every port, until it is fixed")
	p.strict()
	return p
}

// strict makes p STRICT on every port, read fail-closed.
func (p *peerAuth) strict() {
	p.mode, p.ports, p.portReasons = modeStrict, nil, nil
	p.strictReason = sprintf("denied by PeerAuthentication %s: it has errors, so it is enforced as STRICT until it is fixed, and this connection has no peer identity (plaintext)", p.key)
}

// indexPeerAuthentications keeps, per level, the oldest policy: the mesh one,
// one per namespace, and the workload ones by namespace and selector.
func (e *Engine) indexPeerAuthentications(pas []*peerAuth) {
	slices.SortFunc(pas, func(a, b *peerAuth) int {
		return cmp.Or(a.created.Compare(b.created), cmp.Compare(a.ns, b.ns), cmp.Compare(a.name, b.name))
	})
	for i, p := range pas {
		p.ord = int32(i)
		switch p.level {
		case levelMesh:
			if e.meshRootPA == nil {
				e.meshRootPA = p
			}
			if e.meshPA == nil && !p.rootOnly {
				e.meshPA = p
			}
		case levelNamespace:
			if e.nsPA[p.ns] == nil {
				e.nsPA[p.ns] = p
			}
		case levelWorkload:
			if p.allWorkloads {
				if e.wlPAAll[p.ns] == nil {
					e.wlPAAll[p.ns] = p
				}
				continue
			}
			idx := e.wlPA[p.ns]
			if idx == nil {
				idx = &paIndex{}
				e.wlPA[p.ns] = idx
			}
			idx.add(p.selector[0], p)
		}
	}
}

type paIndex = selIndex[*peerAuth]

// paVerdict is the effective mTLS mode for one port of one workload.
type paVerdict struct {
	mode   mtlsMode // modePermissive when nothing is set
	policy *peerAuth
	port   bool // decided by portLevelMtls
}

// peerAuthFor resolves the mode on a port: the workload policy's
// portLevelMtls entry, then its mode, then the namespace policy's, then the
// mesh policy's; UNSET inherits, nothing set means PERMISSIVE.
//
// This is the intent of Istio's ambient conversion; it differs from istiod's
// code (pilot/pkg/serviceregistry/ambient/authorization.go) in corner cases
// where that code loses the port-level setting: a STRICT port under a
// PERMISSIVE workload policy with a STRICT mesh policy, a PERMISSIVE port
// under an UNSET namespace policy with a STRICT mesh policy, and a DISABLE
// port under an inherited STRICT (which istiod leaves STRICT). DISABLE is
// PERMISSIVE everywhere here.
func (e *Engine) peerAuthFor(ns string, labels map[string]string, port uint16) paVerdict {
	var p *peerAuth
	if wl := e.wlPA[ns]; wl != nil {
		p = firstPeerAuth(wl, labels)
	}
	if all := e.wlPAAll[ns]; all != nil && (p == nil || all.ord < p.ord) {
		p = all
	}
	if p != nil {
		if m, ok := p.ports[port]; ok {
			return paVerdict{mode: m, policy: p, port: true}
		}
		if p.mode != modeUnset {
			return paVerdict{mode: p.mode, policy: p}
		}
	}
	if p := e.nsPA[ns]; p != nil && p.mode != modeUnset {
		return paVerdict{mode: p.mode, policy: p}
	}
	mesh := e.meshPA
	if ns == e.root {
		mesh = e.meshRootPA
	}
	if mesh != nil && mesh.mode != modeUnset {
		return paVerdict{mode: mesh.mode, policy: mesh}
	}
	return paVerdict{mode: modePermissive}
}

func (v paVerdict) reason(port uint16) string {
	if v.port {
		return v.policy.portReasons[port]
	}
	return v.policy.strictReason
}
