package authz

import (
	"strconv"
	"strings"
)

// An object with an error is never left out: leaving out an ALLOW policy
// would let every caller in, and leaving out a DENY policy would let its
// callers in. Compile reads it fail-closed instead, by where its errors are:
//
//   - in rules[i] of an ALLOW policy: that rule matches nothing; the policy
//     still selects its workloads and its clean rules still apply;
//   - in rules[i] of a DENY policy: each erroneous field, entry, clause or
//     condition is read as matching, so the rule denies at least what its
//     clean conditions select;
//   - in the selector: the policy selects every workload of its namespace
//     (of the mesh, in the root namespace); an ALLOW policy then matches
//     nothing, since its rules would admit callers to workloads it never
//     selected;
//   - anywhere else (the action, an unknown or duplicate spec field, the
//     rules list itself, metadata): the object's intent is unknown, so an
//     AuthorizationPolicy denies every connection to the workloads it
//     selects, whatever its action;
//   - a PeerAuthentication with any error is STRICT for its scope, port
//     level included.
//
// Only an object whose name cannot be read is left out.

// faults is where an object's errors lie, from their Field paths.
type faults struct {
	object   bool // outside rules[i] and the selector
	selector bool
	rules    map[int][]string // path below rules[i] ("" for the rule itself) of each error in rule i
}

func classify(fields []string) faults {
	var f faults
	for _, field := range fields {
		switch {
		case field == "selector" || strings.HasPrefix(field, "selector.") || strings.HasPrefix(field, "selector["):
			f.selector = true
		case strings.HasPrefix(field, "rules["):
			end := strings.IndexByte(field, ']')
			i, err := strconv.Atoi(field[len("rules["):max(end, len("rules["))])
			if end < 0 || err != nil || i < 0 {
				f.object = true
				continue
			}
			if f.rules == nil {
				f.rules = map[int][]string{}
			}
			f.rules[i] = append(f.rules[i], strings.TrimPrefix(field[end+1:], "."))
		default:
			f.object = true
		}
	}
	return f
}

// ruleFaults is how the errors of one DENY rule are read: whole means the
// rule matches everything; from/to mean the clause holds; fromEntry/toEntry
// name entries to keep (as matching anything their clean fields allow)
// even when no L4 field is left in them.
type ruleFaults struct {
	whole, from, to, when bool
	fromEntry, toEntry    map[int]bool
	dropFrom, dropTo      map[int][]string // erroneous field names per entry
	dropWhen              map[int]bool
	fromWhole, toWhole    map[int]bool // the entry itself is erroneous: it matches anything
}

// parseRuleFaults reads paths below rules[i] such as
// "from[0].source.principals[1]", "to[2]", "when[1].key" or "".
func parseRuleFaults(paths []string) ruleFaults {
	rf := ruleFaults{fromEntry: map[int]bool{}, toEntry: map[int]bool{}, dropFrom: map[int][]string{},
		dropTo: map[int][]string{}, dropWhen: map[int]bool{}, fromWhole: map[int]bool{}, toWhole: map[int]bool{}}
	for _, p := range paths {
		part, rest, idx, ok := cutIndex(p)
		if !ok {
			switch p {
			case "from":
				rf.from = true
			case "to":
				rf.to = true
			case "when":
				rf.when = true
			default: // the rule itself, or a field unknown to rules
				rf.whole = true
			}
			continue
		}
		switch part {
		case "when":
			rf.dropWhen[idx] = true
		case "from", "to":
			entry, drop, whole := rf.fromEntry, rf.dropFrom, rf.fromWhole
			inner := "source"
			if part == "to" {
				entry, drop, whole = rf.toEntry, rf.dropTo, rf.toWhole
				inner = "operation"
			}
			entry[idx] = true
			rest = strings.TrimPrefix(rest, ".")
			field, ok := strings.CutPrefix(rest, inner+".")
			if !ok {
				whole[idx] = true // the entry or its source/operation object itself
				continue
			}
			if j := strings.IndexAny(field, ".["); j >= 0 {
				field = field[:j]
			}
			drop[idx] = append(drop[idx], field)
		default:
			rf.whole = true
		}
	}
	return rf
}

// cutIndex splits "from[3].source" into "from", ".source", 3.
func cutIndex(p string) (part, rest string, idx int, ok bool) {
	open := strings.IndexByte(p, '[')
	if open <= 0 {
		return "", "", 0, false
	}
	end := strings.IndexByte(p, ']')
	if end < open {
		return "", "", 0, false
	}
	n, err := strconv.Atoi(p[open+1 : end])
	if err != nil || n < 0 || strings.ContainsAny(p[:open], ".") {
		return "", "", 0, false
	}
	return p[:open], p[end+1:], n, true
}

// readDenyRule returns r as a DENY policy enforces it while it has the
// faults rf: erroneous fields removed, erroneous entries reduced to their
// clean fields (nothing left: they match anything), erroneous clauses and
// conditions removed. Removing a condition from a rule, or a field from an
// entry, only makes it match more.
func readDenyRule(r *Rule, rf ruleFaults) Rule {
	if rf.whole {
		return Rule{}
	}
	var out Rule
	if !rf.from {
		for i, f := range r.From {
			s := f.Source
			if rf.fromWhole[i] {
				s = Source{}
			}
			for _, name := range rf.dropFrom[i] {
				dropSourceField(&s, name)
			}
			out.From = append(out.From, From{Source: s})
		}
	}
	if !rf.to {
		for i, t := range r.To {
			op := t.Operation
			if rf.toWhole[i] {
				op = Operation{}
			}
			for _, name := range rf.dropTo[i] {
				dropOperationField(&op, name)
			}
			out.To = append(out.To, To{Operation: op})
		}
	}
	for i, w := range r.When {
		if !rf.when && !rf.dropWhen[i] {
			out.When = append(out.When, w)
		}
	}
	return out
}

// forced reports whether an entry stays in a clause without L4 fields.
func (rf *ruleFaults) forced(part string, i int) bool {
	if rf == nil {
		return false
	}
	if part == "from" {
		return rf.fromEntry[i]
	}
	return rf.toEntry[i]
}

func dropSourceField(s *Source, name string) {
	switch name {
	case "principals":
		s.Principals = nil
	case "notPrincipals":
		s.NotPrincipals = nil
	case "requestPrincipals":
		s.RequestPrincipals = nil
	case "notRequestPrincipals":
		s.NotRequestPrincipals = nil
	case "namespaces":
		s.Namespaces = nil
	case "notNamespaces":
		s.NotNamespaces = nil
	case "serviceAccounts":
		s.ServiceAccounts = nil
	case "notServiceAccounts":
		s.NotServiceAccounts = nil
	case "ipBlocks":
		s.IPBlocks = nil
	case "notIpBlocks":
		s.NotIPBlocks = nil
	case "remoteIpBlocks":
		s.RemoteIPBlocks = nil
	case "notRemoteIpBlocks":
		s.NotRemoteIPBlocks = nil
	case "trustDomains":
		s.TrustDomains = nil
	case "notTrustDomains":
		s.NotTrustDomains = nil
	}
}

func dropOperationField(op *Operation, name string) {
	switch name {
	case "hosts":
		op.Hosts = nil
	case "notHosts":
		op.NotHosts = nil
	case "ports":
		op.Ports = nil
	case "notPorts":
		op.NotPorts = nil
	case "methods":
		op.Methods = nil
	case "notMethods":
		op.NotMethods = nil
	case "paths":
		op.Paths = nil
	case "notPaths":
		op.NotPaths = nil
	}
}

// ruleList formats rule indexes for an Effect: "rules[0], rules[2]".
func ruleList(idx []int) string {
	var b strings.Builder
	for i, n := range idx {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("rules[" + strconv.Itoa(n) + "]")
	}
	return b.String()
}
