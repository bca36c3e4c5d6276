package authz

// Severity says whether a Diagnostic rejected its object or only warns.
type Severity int

const (
	// Warning: the object was compiled, possibly with parts ignored.
	Warning Severity = iota
	// Error: the object is wrong as written. It is never left out: Compile
	// reads it fail-closed, as Diagnostic.Effect says.
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
// object is wrong as written and is enforced fail-closed meanwhile (Effect
// says how: a policy with an error never widens access); warnings mean it
// applies, perhaps not as its author expects (an L7 rule dropped, an
// unsupported action ignored, ...).
//
// A Diagnostic is an error value: Error returns the operator-facing line, e.g.
//
//	authz: AuthorizationPolicy foo/allow-bar: rules[0].from[0].source.ipBlocks[1]: invalid CIDR "10.0.0/33"; enforced meanwhile: rules[0] matches nothing, the policy's other rules still apply
type Diagnostic struct {
	Severity  Severity `json:"severity"`
	Kind      string   `json:"kind"`
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	// Field is the offending field's path inside spec (or "metadata.x"),
	// empty when the message is about the object as a whole.
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
	// Effect says, for an error, how the object is enforced until it is
	// fixed.
	Effect string `json:"effect,omitempty"`
}

// Error formats d as "authz: Kind ns/name: field: message; enforced
// meanwhile: effect" (a warning carries "warning: " before the message).
func (d Diagnostic) Error() string {
	msg := d.Message
	if d.Severity == Warning {
		msg = "warning: " + msg
	}
	if d.Effect != "" {
		msg += "; enforced meanwhile: " + d.Effect
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
	first          int      // index in *out of this object's first diagnostic
	errFields      []string // Field of every error, for the fail-closed reading
}

func newDiags(kind, ns, name string, out *[]Diagnostic) diags {
	return diags{kind: kind, ns: ns, name: name, out: out, first: len(*out)}
}

func (d *diags) add(sev Severity, field, format string, args ...any) {
	if sev == Error {
		d.errs++
		d.errFields = append(d.errFields, field)
	}
	*d.out = append(*d.out, Diagnostic{
		Severity: sev, Kind: d.kind, Namespace: d.ns, Name: d.name,
		Field: field, Message: sprintf(format, args...),
	})
}

func (d *diags) errorf(field, format string, args ...any) { d.add(Error, field, format, args...) }
func (d *diags) warnf(field, format string, args ...any)  { d.add(Warning, field, format, args...) }

// problems reports the decoder's findings as errors.
func (d *diags) problems(ps []FieldError) {
	for _, p := range ps {
		d.errorf(p.Field, "%s", p.Message)
	}
}

// effect sets Effect on every error of this object.
func (d *diags) effect(e string) {
	for i := d.first; i < len(*d.out); i++ {
		if (*d.out)[i].Severity == Error {
			(*d.out)[i].Effect = e
		}
	}
}
