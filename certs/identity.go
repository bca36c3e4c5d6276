package certs

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// DefaultTrustDomain is the trust domain Istio and Ferry use when none is configured.
const DefaultTrustDomain = "cluster.local"

// Identity is a workload's SPIFFE identity,
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
// The zero value means "no identity" (a plaintext peer).
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// ErrNoPeerIdentity reports a TLS peer whose certificate carries no SPIFFE URI SAN.
var ErrNoPeerIdentity = errors.New("certs: peer certificate has no SPIFFE identity")

// ParseIdentity parses a SPIFFE ID of the form spiffe://td/ns/NS/sa/SA.
func ParseIdentity(s string) (Identity, error) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return Identity{}, fmt.Errorf("certs: identity %q: want spiffe://<trust domain>/ns/<namespace>/sa/<service account>", s)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return Identity{}, fmt.Errorf("certs: identity %q: want spiffe://<trust domain>/ns/<namespace>/sa/<service account>", s)
	}
	id := Identity{TrustDomain: parts[0], Namespace: parts[2], ServiceAccount: parts[4]}
	if err := id.Validate(); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// Validate reports whether every part of id is a valid, non-empty name.
func (id Identity) Validate() error {
	if !validTrustDomain(id.TrustDomain) {
		return fmt.Errorf("certs: identity %s: invalid trust domain %q", id, id.TrustDomain)
	}
	if !validSegment(id.Namespace) {
		return fmt.Errorf("certs: identity %s: invalid namespace %q", id, id.Namespace)
	}
	if !validSegment(id.ServiceAccount) {
		return fmt.Errorf("certs: identity %s: invalid service account %q", id, id.ServiceAccount)
	}
	return nil
}

// IsZero reports whether id is the zero Identity (no identity).
func (id Identity) IsZero() bool { return id == Identity{} }

// String returns the SPIFFE URI form, or "" for the zero Identity.
func (id Identity) String() string {
	if id.IsZero() {
		return ""
	}
	return "spiffe://" + id.Principal()
}

// Principal returns the identity without the spiffe:// scheme, the form Istio's
// AuthorizationPolicy principals use: td/ns/NS/sa/SA.
func (id Identity) Principal() string {
	if id.IsZero() {
		return ""
	}
	return id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// PeerIdentity returns the identity of the first SPIFFE URI SAN of the verified
// peer leaf certificate in cs. It does not verify anything itself: call it on
// a ConnectionState that VerifyPeer (or the Store's TLS configurations) has
// already checked.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return Identity{}, ErrNoPeerIdentity
	}
	for _, u := range cs.PeerCertificates[0].URIs {
		if u.Scheme == "spiffe" {
			return identityFromURI(u)
		}
	}
	return Identity{}, ErrNoPeerIdentity
}

// identityFromURI converts a URI SAN to an Identity. It accepts only the
// canonical form: no user info, port, query, fragment or escaped characters,
// so that exactly one byte string maps to each Identity.
func identityFromURI(u *url.URL) (Identity, error) {
	if u.Scheme != "spiffe" || u.Opaque != "" || u.User != nil || u.RawPath != "" ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawFragment != "" || u.OmitHost {
		return Identity{}, fmt.Errorf("certs: URI SAN %q is not a canonical SPIFFE ID", u.Redacted())
	}
	return ParseIdentity("spiffe://" + u.Host + u.Path)
}

// validTrustDomain allows lowercase letters, digits, '.', '-' and '_' (SPIFFE).
func validTrustDomain(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// validSegment allows Kubernetes-style names: letters, digits, '.', '-' and '_'.
func validSegment(s string) bool {
	if s == "" || len(s) > 253 || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}
