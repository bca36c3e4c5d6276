package inventory

import "unique"

// Intern returns the canonical copy of s, so the strings that repeat across
// a cluster's pods (namespaces, service accounts, nodes, policy names)
// share one copy however many pods name them.
func Intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}
