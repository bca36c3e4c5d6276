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

	strictReason string
	portReasons  map[uint16]string // for STRICT ports
}

func compilePeerAuthentication(cfg Config, pa *PeerAuthentication, d *diags) *peerAuth {
	ns, _ := metadata(&pa.Metadata, d)
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
		return nil
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
	if wl := e.wlPA[ns]; wl != nil {
		if p := firstPeerAuth(wl, labels); p != nil {
			if m, ok := p.ports[port]; ok {
				return paVerdict{mode: m, policy: p, port: true}
			}
			if p.mode != modeUnset {
				return paVerdict{mode: p.mode, policy: p}
			}
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
