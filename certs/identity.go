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

// ParseIdentity parses a SPIFFE ID of the form spiffe://td/ns/NS/sa/SA. It
// accepts exactly the strings Identity.String returns for valid identities.
func ParseIdentity(s string) (Identity, error) {
	id, err := parseIdentity(s)
	if err != nil {
		return Identity{}, fmt.Errorf("certs: %w", err)
	}
	return id, nil
}

// parseIdentity is ParseIdentity with errors not prefixed by the package name.
func parseIdentity(s string) (Identity, error) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return Identity{}, fmt.Errorf("identity %q: want spiffe://<trust domain>/ns/<namespace>/sa/<service account>", s)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return Identity{}, fmt.Errorf("identity %q: want spiffe://<trust domain>/ns/<namespace>/sa/<service account>", s)
	}
	id := Identity{TrustDomain: parts[0], Namespace: parts[2], ServiceAccount: parts[4]}
	if err := id.validate(); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// Validate reports whether every part of id is a valid, non-empty name.
func (id Identity) Validate() error {
	if err := id.validate(); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return nil
}

func (id Identity) validate() error {
	if !ValidTrustDomain(id.TrustDomain) {
		return fmt.Errorf("identity %q: invalid trust domain %q", id.String(), id.TrustDomain)
	}
	if !validSegment(id.Namespace) {
		return fmt.Errorf("identity %q: invalid namespace %q", id.String(), id.Namespace)
	}
	if !validSegment(id.ServiceAccount) {
		return fmt.Errorf("identity %q: invalid service account %q", id.String(), id.ServiceAccount)
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
			id, err := identityFromURI(u)
			if err != nil {
				return Identity{}, fmt.Errorf("certs: peer: %w", err)
			}
			return id, nil
		}
	}
	return Identity{}, ErrNoPeerIdentity
}

// url returns id as a URL for a certificate's URI SAN.
func (id Identity) url() (*url.URL, error) {
	u, err := url.Parse(id.String())
	if err != nil {
		return nil, fmt.Errorf("certs: identity %s: %w", id, err)
	}
	return u, nil
}

// identityFromURI converts a URI SAN to an Identity. It accepts only the
// canonical form: no user info, port, query, fragment or escaped characters,
// so that exactly one byte string maps to each Identity.
func identityFromURI(u *url.URL) (Identity, error) {
	if u.Scheme != "spiffe" || u.Opaque != "" || u.User != nil || u.RawPath != "" ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawFragment != "" || u.OmitHost {
		return Identity{}, fmt.Errorf("URI SAN %q is not a canonical SPIFFE ID", u.Redacted())
	}
	return parseIdentity("spiffe://" + u.Host + u.Path)
}

// ValidTrustDomain reports whether s is a valid SPIFFE trust domain: 1 to
// 255 lowercase letters, digits, '.', '-' and '_'.
func ValidTrustDomain(s string) bool {
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
