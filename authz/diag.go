package authz

// Severity says whether a Diagnostic rejected its object or only warns.
type Severity int

const (
	// Warning: the object was compiled, possibly with parts ignored.
	Warning Severity = iota
	// Error: the object was rejected and takes no part in any decision.
	Error
)

// String returns "warning" or "error".
func (s Severity) String() string {
	if s == Error {
		return "error"
	}
	return "warning"
}

// MarshalText encodes s as its String form, so JSON output reads "error".
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Kinds of policy object, as used in Diagnostic.Kind and Decision.Kind.
const (
	KindAuthorizationPolicy = "AuthorizationPolicy"
	KindPeerAuthentication  = "PeerAuthentication"
)

// Diagnostic is one problem Compile found in one object. Errors mean the
// object was left out; warnings mean it applies, perhaps not as its author
// expects (an L7 rule dropped, an unsupported action ignored, ...).
//
// A Diagnostic is an error value: Error returns the operator-facing line, e.g.
//
//	authz: AuthorizationPolicy foo/allow-bar: rules[0].from[0].source.ipBlocks[1]: invalid CIDR "10.0.0/33"
type Diagnostic struct {
	Severity  Severity `json:"severity"`
	Kind      string   `json:"kind"`
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	// Field is the offending field's path inside spec (or "metadata.x"),
	// empty when the message is about the object as a whole.
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// Error formats d as "authz: Kind ns/name: field: message" (a warning
// carries "warning: " before the message).
func (d Diagnostic) Error() string {
	msg := d.Message
	if d.Severity == Warning {
		msg = "warning: " + msg
	}
	if d.Field == "" {
		return sprintf("authz: %s %s/%s: %s", d.Kind, d.Namespace, d.Name, msg)
	}
	return sprintf("authz: %s %s/%s: %s: %s", d.Kind, d.Namespace, d.Name, d.Field, msg)
}

// diags collects the diagnostics of one object.
type diags struct {
	kind, ns, name string
	out            *[]Diagnostic
	errs           int
}

func (d *diags) add(sev Severity, field, format string, args ...any) {
	if sev == Error {
		d.errs++
	}
	*d.out = append(*d.out, Diagnostic{
		Severity: sev, Kind: d.kind, Namespace: d.ns, Name: d.name,
		Field: field, Message: sprintf(format, args...),
	})
}

func (d *diags) errorf(field, format string, args ...any) { d.add(Error, field, format, args...) }
func (d *diags) warnf(field, format string, args ...any)  { d.add(Warning, field, format, args...) }
