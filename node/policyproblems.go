package node

import (
	"cmp"
	"slices"
	"strings"

	"github.com/ferrymesh/ferry/authz"
)

// policyObject names one policy object.
type policyObject struct{ kind, ns, name string }

// policyReport is what is said about one object: its errors and how it is
// enforced meanwhile, or its warnings.
type policyReport struct {
	errors, warnings []string
	effect           string
}

// key identifies what r says, to log it once.
func (r *policyReport) key() string {
	return strings.Join(r.errors, "; ") + "|" + strings.Join(r.warnings, "; ") + "|" + r.effect
}

// reportPolicyProblems logs each policy object with errors (one line naming
// the object, every field and what is wrong, and how it is enforced
// meanwhile) or warnings, once per change rather than on every snapshot,
// and sets ferry_policy_errors. Only the reconcile loop calls it.
func (a *Agent) reportPolicyProblems(diags []authz.Diagnostic) {
	now := map[policyObject]*policyReport{}
	for _, d := range diags {
		k := policyObject{d.Kind, d.Namespace, d.Name}
		r := now[k]
		if r == nil {
			r = &policyReport{}
			now[k] = r
		}
		msg := d.Message
		if d.Field != "" {
			msg = d.Field + ": " + d.Message
		}
		if d.Severity == authz.Error {
			r.errors = append(r.errors, msg)
			r.effect = cmp.Or(r.effect, d.Effect)
		} else {
			r.warnings = append(r.warnings, msg)
		}
	}
	type nsKind struct{ kind, ns string }
	counts := map[nsKind]int{}
	keys := make([]policyObject, 0, len(now))
	for k, r := range now {
		keys = append(keys, k)
		if len(r.errors) > 0 {
			counts[nsKind{k.kind, k.ns}]++
		}
	}
	slices.SortFunc(keys, func(x, y policyObject) int {
		return cmp.Or(cmp.Compare(x.kind, y.kind), cmp.Compare(x.ns, y.ns), cmp.Compare(x.name, y.name))
	})
	for _, k := range keys {
		r := now[k]
		if a.reported[k] == r.key() {
			continue
		}
		obj := k.kind + " " + k.ns + "/" + k.name
		if len(r.errors) > 0 {
			a.log.Warn("policy has errors", "policy", obj, "errors", strings.Join(r.errors, "; "), "enforced", r.effect)
		} else {
			a.log.Warn("policy applies with warnings", "policy", obj, "warnings", strings.Join(r.warnings, "; "))
		}
	}
	for k := range a.reported {
		if _, ok := now[k]; !ok {
			a.log.Info("policy problems resolved", "policy", k.kind+" "+k.ns+"/"+k.name)
		}
	}
	a.reported = make(map[policyObject]string, len(now))
	for k, r := range now {
		a.reported[k] = r.key()
	}
	a.metrics.PolicyErrors.Reset()
	for k, n := range counts {
		a.metrics.PolicyErrors.WithLabelValues(k.kind, k.ns).Set(float64(n))
	}
}
