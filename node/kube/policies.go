package kube

import (
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/node/inventory"
)

// policyBook decodes the policy objects of each snapshot and remembers, per
// object (by UID), its last decoded version and its last good one: a live
// edit that introduces an error leaves the last good version enforced until
// it is fixed, and reported; an object that never was good is enforced as
// decoded, which authz.Compile reads fail-closed. The informer's transform
// decodes each version once. A policyBook is used by one goroutine.
type policyBook struct {
	entries map[types.UID]*policyEntry // by UID (namespace/name for objects without one)
	// revision is the policies' Snapshot.PolicyRevision; changed says an
	// object was added, changed or removed since it was taken.
	revision uint64
	changed  bool
}

// policyEntry points at the informer's decoded versions (never modified),
// not copies of them (700 bytes a policy, 7 MB at 10k policies).
type policyEntry struct {
	resourceVersion string
	current         *decodedPolicy // this resourceVersion
	good            *decodedPolicy
	goodVersion     string
}

// decodedPolicy is one object as decoded: err when it could not be
// identified, else ap or pa (by kind) and its error diagnostics.
type decodedPolicy struct {
	ap   *authz.AuthorizationPolicy
	pa   *authz.PeerAuthentication
	errs []authz.Diagnostic
	err  error
}

// add adds the policies in objs (all of one kind) to snap.
func (b *policyBook) add(snap *inventory.Snapshot, kind string, objs []*policyObject, seen map[types.UID]bool) {
	if b.entries == nil {
		b.entries = map[types.UID]*policyEntry{}
	}
	for _, o := range objs {
		uid := o.uid
		if uid == "" {
			uid = types.UID(o.namespace + "/" + o.name)
		}
		seen[uid] = true
		e := b.entries[uid]
		if e == nil {
			e = &policyEntry{}
			b.entries[uid] = e
		}
		if rv := o.resourceVersion; e.resourceVersion != rv || rv == "" {
			b.changed = true
			e.resourceVersion = rv
			e.current = &o.decoded
			if e.current.err == nil && len(e.current.errs) == 0 {
				e.good, e.goodVersion = e.current, rv
			}
		}
		use := e.current
		if (e.current.err != nil || len(e.current.errs) > 0) && e.good != nil {
			use = e.good
			note := fmt.Sprintf("the last good version (resourceVersion %s) is enforced until it is fixed", e.goodVersion)
			for _, d := range e.current.errs {
				d.Effect = note
				snap.PolicyProblems = append(snap.PolicyProblems, d)
			}
			if e.current.err != nil {
				snap.Errors = append(snap.Errors, fmt.Errorf("%w; %s", e.current.err, note))
			}
		} else if e.current.err != nil {
			snap.Errors = append(snap.Errors, fmt.Errorf("%w; the object is ignored", e.current.err))
			continue
		}
		if kind == authz.KindAuthorizationPolicy {
			snap.AuthorizationPolicies = append(snap.AuthorizationPolicies, *use.ap)
		} else {
			snap.PeerAuthentications = append(snap.PeerAuthentications, *use.pa)
		}
	}
}

// forget drops the entries of objects that are gone, and returns the
// revision of the policies added since the last call.
func (b *policyBook) forget(seen map[types.UID]bool) uint64 {
	for uid := range b.entries {
		if !seen[uid] {
			delete(b.entries, uid)
			b.changed = true
		}
	}
	if b.changed || b.revision == 0 {
		b.revision, b.changed = inventory.NewPolicyRevision(), false
	}
	return b.revision
}

// decodePolicy decodes one informer object strictly (exact field names,
// no unknown or duplicate fields), as the file source does.
func decodePolicy(kind string, u *unstructured.Unstructured) decodedPolicy {
	var dp decodedPolicy
	fail := func(err error) decodedPolicy {
		dp.err = fmt.Errorf("kube: %s %s/%s: %w", kind, u.GetNamespace(), u.GetName(), err)
		return dp
	}
	b, err := json.Marshal(u.Object)
	if err != nil {
		return fail(err)
	}
	if kind == authz.KindAuthorizationPolicy {
		ap, err := inventory.DecodeAuthorizationPolicy(b)
		if err != nil {
			return fail(err)
		}
		dp.ap, dp.errs = &ap, authz.AuthorizationPolicyErrors(&ap)
	} else {
		pa, err := inventory.DecodePeerAuthentication(b)
		if err != nil {
			return fail(err)
		}
		dp.pa, dp.errs = &pa, authz.PeerAuthenticationErrors(&pa)
	}
	return dp
}
